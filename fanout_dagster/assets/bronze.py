"""The `bronze` asset: one partition per object, one run per object or per pack.

A run gets one partition (one object) or a contiguous range of partitions (a
pack, from a backfill with `BackfillPolicy.multi_run(k)`). The step loads its
objects with a bounded thread pool over one SparkSession and reports each
object on its own:

- a loaded object gets its own AssetMaterialization (rows, schema, table...);
- a failed object gets an AssetObservation carrying its error, and the step
  fails at the end, after every other object has been loaded.

Dagster marks the partitions of a failed run that have no materialization as
failed, so each partition ends up showing its own truth, and a backfill
re-executed "from failure" targets only the failed objects. (Stock Dagster has
no per-partition failure for multi-partition runs: dagster-io/dagster#17836.)

The asset never asks where it runs: the SparkSession, the bronze schema and the
step launcher (Databricks or none) are resources chosen in definitions.py.
"""

import re

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from fanout_dagster.ingest import LoadResult, ingest_object
from fanout_dagster.objects import ObjectConfig
from fanout_dagster.packing import Outcome, run_pack
from fanout_dagster.partitions import OBJECTS_PARTITIONS_NAME, objects_partitions
from fanout_dagster.resources.bronze_tables import BronzeTables
from fanout_dagster.resources.object_configs import ObjectConfigs
from fanout_dagster.resources.spark import SparkResource
from fanout_dagster.tags import OBJECTS_TAG


def build_bronze_asset(*, objects_per_run: int = 1, threads_per_run: int = 4) -> AssetsDefinition:
    """The bronze asset with its packing policy.

    objects_per_run: how many objects a backfill puts in one run (1 = a run per object).
    threads_per_run: how many objects of a pack load at once on the run's SparkSession.
    """

    @asset(
        name="bronze",
        partitions_def=objects_partitions,
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=objects_per_run),
        # pyspark_step_launcher: None locally; the Databricks step launcher on
        # the databricks target, which runs this whole body remotely.
        required_resource_keys={
            "spark",
            "bronze_tables",
            "object_configs",
            "pyspark_step_launcher",
        },
        # Materializations are logged per object, not as one output for the pack.
        output_required=False,
        group_name="bronze",
        kinds={"spark"},
        description="Raw copy of each configured object, with audit columns.",
    )
    def bronze(context: AssetExecutionContext):
        spark: SparkResource = context.resources.spark
        bronze_tables: BronzeTables = context.resources.bronze_tables
        object_configs: ObjectConfigs = context.resources.object_configs
        keys = _pack_keys(context)
        objects, missing = object_configs.lookup(keys)
        failures: dict[str, str] = {
            key: "no valid config for this object: its config was removed, or is invalid "
            "(the object sensor's tick names the file and field)"
            for key in missing
        }
        for key, message in failures.items():
            yield _failure_event(context, key, message)

        session = spark.get_session()
        writer = bronze_tables.writer(session)
        run_id = context.run.run_id

        # Spark operations of this run, and of each object, carry tags: the
        # server's UI shows which object a job belongs to, and cancelling the
        # run interrupts exactly this run's operations (tags are per thread).
        run_tag = f"fanout-run-{run_id}"

        server_gone: list[str] = []  # set once an object found the Spark server gone

        def load(obj: ObjectConfig) -> LoadResult:
            if server_gone:
                raise SparkUnavailable(f"not started: {server_gone[0]}")
            object_tag = f"fanout-object-{obj.key}"
            session.addTag(run_tag)
            session.addTag(object_tag)
            try:
                return ingest_object(
                    session,
                    obj,
                    data_root=object_configs.data_root_path,
                    writer=writer,
                    run_id=run_id,
                )
            finally:
                session.removeTag(object_tag)

        def interrupt() -> None:
            context.log.warning(
                "Run cancelled: objects not started are skipped, running ones interrupted"
            )
            session.interruptTag(run_tag)

        context.log.info(
            f"Loading {len(objects)} object(s) with up to {threads_per_run} thread(s): "
            + ", ".join(obj.key for obj in objects)
        )
        for outcome in run_pack(objects, load, threads_per_run, on_abandon=interrupt):
            # Events are yielded as each object finishes, so the UI shows
            # progress object by object while the rest of the pack runs.
            if outcome.ok:
                result = outcome.result
                summary = (
                    f"{outcome.item.key}: {result.rows_written} rows from {result.files_read} "
                    f"file(s) -> {result.table} version {result.version} "
                    f"({result.rows} rows in the table)"
                )
                context.log.info(summary)
                # Also on stdout: on Databricks it lands in the driver log.
                print(summary)
                yield _materialization(context, outcome)
            else:
                message = short_error(outcome.error)
                if message.startswith(SparkUnavailable.__name__):
                    server_gone.append(message.split(": ", 1)[1])
                failures[outcome.item.key] = message
                context.log.error(f"{outcome.item.key} failed: {message}\n{outcome.traceback}")
                yield _failure_event(context, outcome.item.key, message, outcome)

        if failures:
            loaded = len(keys) - len(failures)
            raise Failure(
                description=(
                    f"{len(failures)} of {len(keys)} object(s) failed ({loaded} loaded): "
                    + "; ".join(f"{key}: {msg}" for key, msg in sorted(failures.items()))
                ),
                metadata={"failed_objects": MetadataValue.json(failures)},
            )

    return bronze


SPARK_ERROR_CLASS = re.compile(r"\[[A-Z][A-Z0-9_]+(\.[A-Z0-9_]+)*\]")
# Error classes that only wrap the telling one (a write task failing because
# its input could not be read, say).
WRAPPER_ERROR_CLASSES = ("[TASK_WRITE_FAILED]",)


class SparkUnavailable(RuntimeError):
    """The Spark Connect server stopped or cannot be reached."""


# How pyspark's Connect client says the server went away (gRPC status UNAVAILABLE,
# a dropped stream, retries given up).
_SERVER_GONE = (
    "UNAVAILABLE",
    "failed to connect to all addresses",
    "Socket closed",
    "Connection refused",
    "RetriesExceeded",
)


def short_error(error: BaseException, limit: int = 500) -> str:
    """One line for summaries. Spark errors from the JVM carry a whole Java
    stack trace (kilobytes) in their message; the traceback metadata keeps it.
    Their telling line is the first with Spark's error class that is not a
    mere wrapper, e.g. "[FAILED_READ_FILE.NO_HINT] Encountered error while
    reading file ..."; otherwise the first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [""]
    if isinstance(error, SparkUnavailable):
        return f"{SparkUnavailable.__name__}: {error}"
    if type(error).__module__.startswith(("pyspark.errors", "grpc")) and any(
        marker in str(error) or marker in type(error).__name__ for marker in _SERVER_GONE
    ):
        return (
            f"{SparkUnavailable.__name__}: the Spark Connect server stopped or cannot be "
            f"reached ({lines[0][:200]}); nothing of this object was committed"
        )
    classed = [line for line in lines if SPARK_ERROR_CLASS.search(line)]
    telling = [
        line for line in classed if not any(wrapper in line for wrapper in WRAPPER_ERROR_CLASSES)
    ]
    line = (telling or classed or lines)[0].removeprefix("Caused by: ")
    if len(line) > limit:
        line = line[:limit] + "..."
    return f"{type(error).__name__}: {line}"


def _pack_keys(context: AssetExecutionContext) -> list[str]:
    """The objects of this run.

    Runs submitted through the project's run coordinator carry their keys in a
    tag. On a remote Databricks step the instance is an empty stand-in without
    the `objects` partitions, so the keys are registered there before Dagster
    is asked about them (Dagster itself only does this for single-partition
    steps); on the real instance this is a no-op.
    """
    tagged = context.run.tags.get(OBJECTS_TAG)
    if tagged:
        keys = tagged.split(",")
        context.instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
        return keys
    if context.has_partition_key_range:
        return list(context.partition_keys)
    return [context.partition_key]


def _materialization(
    context: AssetExecutionContext, outcome: Outcome[ObjectConfig, LoadResult]
) -> AssetMaterialization:
    obj, result = outcome.item, outcome.result
    assert result is not None
    return AssetMaterialization(
        asset_key=context.asset_key,
        partition=obj.key,
        metadata={
            "dagster/row_count": MetadataValue.int(result.rows),
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(name, type_) for name, type_ in result.columns]
            ),
            "dagster/table_name": MetadataValue.text(result.table),
            "delta_version": MetadataValue.int(result.version),
            "delta_operation": MetadataValue.text(result.operation),
            "write_mode": MetadataValue.text(obj.target.mode),
            "schema_evolution_mode": MetadataValue.text(obj.target.schema_evolution_mode),
            "rows_written": MetadataValue.int(result.rows_written),
            "data_files_written": MetadataValue.int(result.data_files_written),
            "source_files_read": MetadataValue.int(result.files_read),
            "source_files": MetadataValue.int(result.source_files),
            "reloaded": MetadataValue.bool(result.reloaded),
            "cluster": MetadataValue.text(obj.cluster),
            "config_file": MetadataValue.text(obj.config_file),
            "config_hash": MetadataValue.text(obj.config_hash),
            "duration_s": MetadataValue.float(round(outcome.finished - outcome.started, 3)),
            # When this object's load ran inside its run (packs overlap them).
            "started_at": MetadataValue.timestamp(outcome.started),
            "finished_at": MetadataValue.timestamp(outcome.finished),
        },
    )


def _failure_event(
    context: AssetExecutionContext, key: str, message: str, outcome: Outcome | None = None
) -> AssetObservation:
    """Recorded on the failed object's partition, so its error shows next to it in the UI."""
    metadata = {"status": MetadataValue.text("failed"), "error": MetadataValue.text(message)}
    if outcome is not None:
        metadata["duration_s"] = MetadataValue.float(round(outcome.finished - outcome.started, 3))
        metadata["started_at"] = MetadataValue.timestamp(outcome.started)
        metadata["finished_at"] = MetadataValue.timestamp(outcome.finished)
        metadata["traceback"] = MetadataValue.md(f"```\n{outcome.traceback}\n```")
    return AssetObservation(asset_key=context.asset_key, partition=key, metadata=metadata)
