"""The `bronze` asset: one partition per object, one run per object or per pack.

A run gets one partition (one object) or a contiguous range of partitions (a
pack, from a backfill with `BackfillPolicy.multi_run(k)`). The step has its
objects loaded by the `object_loader` resource (a bounded thread pool over one
SparkSession, here or on a Databricks cluster) and reports each object on its
own, as it finishes:

- a loaded object gets its own AssetMaterialization (rows, schema, table...);
- a failed object gets an AssetObservation carrying its error, and the step
  fails at the end, after every other object has been loaded.

Dagster marks the partitions of a failed run that have no materialization as
failed, so each partition ends up showing its own truth, and a backfill
re-executed "from failure" targets only the failed objects. (Stock Dagster has
no per-partition failure for multi-partition runs: dagster-io/dagster#17836.)

The asset never asks where it runs: the object loader and the step launcher
(Databricks or none) are resources chosen in definitions.py.
"""

from collections.abc import Iterator

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
from dagster._core.definitions.metadata import RawMetadataValue

# short_error lives with the loading loop (Dagster-free); kept importable from here.
from fanout_dagster.core.loading import ObjectReport, short_error
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME, objects_partitions
from fanout_dagster.orchestration.resources.object_loader import ObjectLoader
from fanout_dagster.orchestration.tags import OBJECTS_TAG

__all__ = ["build_bronze_asset", "short_error"]

NOT_REPORTED = "no outcome was reported for this object"


def build_bronze_asset(*, objects_per_run: int = 1, threads_per_run: int = 4) -> AssetsDefinition:
    """The bronze asset with its packing policy.

    objects_per_run: how many objects a backfill puts in one run (1 = a run per object).
    threads_per_run: how many objects of a pack load at once on the run's SparkSession.
    """

    @asset(
        name="bronze",
        partitions_def=objects_partitions,
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=objects_per_run),
        # object_loader: loads the objects and reports each one (in this
        # process, on the step launcher's cluster, or as a Databricks job run
        # through Pipes). pyspark_step_launcher: None, except with the
        # Databricks step launcher, which runs this whole body remotely.
        required_resource_keys={"object_loader", "pyspark_step_launcher"},
        # Materializations are logged per object, not as one output for the pack.
        output_required=False,
        group_name="bronze",
        kinds={"spark"},
        description="Raw copy of each configured object, with audit columns.",
    )
    def bronze(
        context: AssetExecutionContext,
    ) -> Iterator[AssetMaterialization | AssetObservation]:
        loader: ObjectLoader = context.resources.object_loader
        keys = _pack_keys(context)
        context.log.info(
            f"Loading {len(keys)} object(s) with up to {threads_per_run} thread(s): "
            + ", ".join(keys)
        )
        failures: dict[str, str] = {}
        reported: set[str] = set()
        for report in loader.load(context, keys, threads_per_run):
            # Events are yielded as each object finishes, so the UI shows
            # progress object by object while the rest of the pack runs.
            reported.add(report.key)
            if report.ok:
                context.log.info(report.summary)
                yield _materialization(context, report)
            else:
                message = report.error or "failed"
                failures[report.key] = message
                detail = f"\n{report.traceback}" if report.traceback else ""
                context.log.error(f"{report.key} failed: {message}{detail}")
                yield _failure_event(context, report.key, message, report)
        for key in keys:
            if key not in reported:  # every object ends with its own truth, never silently
                failures[key] = NOT_REPORTED
                yield _failure_event(context, key, NOT_REPORTED)
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


def _materialization(context: AssetExecutionContext, report: ObjectReport) -> AssetMaterialization:
    result = report.result
    assert result is not None
    metadata: dict[str, RawMetadataValue] = {
        "dagster/row_count": MetadataValue.int(result.rows),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name, type_) for name, type_ in result.columns]
        ),
        "dagster/table_name": MetadataValue.text(result.table),
        "delta_version": MetadataValue.int(result.version),
        "delta_operation": MetadataValue.text(result.operation),
        "write_mode": MetadataValue.text(report.write_mode or ""),
        "schema_evolution_mode": MetadataValue.text(report.schema_evolution_mode or ""),
        "rows_written": MetadataValue.int(result.rows_written),
        "data_files_written": MetadataValue.int(result.data_files_written),
        "source_files_read": MetadataValue.int(result.files_read),
        "source_files": MetadataValue.int(result.source_files),
        "reloaded": MetadataValue.bool(result.reloaded),
        "cluster": MetadataValue.text(report.cluster or ""),
        "config_file": MetadataValue.text(report.config_file or ""),
        "config_hash": MetadataValue.text(report.config_hash or ""),
        **_timing(report),
        **_links(report),
    }
    return AssetMaterialization(
        asset_key=context.asset_key, partition=report.key, metadata=metadata
    )


def _failure_event(
    context: AssetExecutionContext, key: str, message: str, report: ObjectReport | None = None
) -> AssetObservation:
    """Recorded on the failed object's partition, so its error shows next to it in the UI."""
    metadata: dict[str, RawMetadataValue] = {
        "status": MetadataValue.text("failed"),
        "error": MetadataValue.text(message),
    }
    if report is not None:
        metadata.update(_timing(report))
        if report.traceback:
            metadata["traceback"] = MetadataValue.md(f"```\n{report.traceback}\n```")
        metadata.update(_links(report))
    return AssetObservation(asset_key=context.asset_key, partition=key, metadata=metadata)


def _timing(report: ObjectReport) -> dict[str, RawMetadataValue]:
    if report.started is None or report.finished is None:
        return {}
    return {
        "duration_s": MetadataValue.float(round(report.finished - report.started, 3)),
        # When this object's load ran inside its run (packs overlap them).
        "started_at": MetadataValue.timestamp(report.started),
        "finished_at": MetadataValue.timestamp(report.finished),
    }


def _links(report: ObjectReport) -> dict[str, RawMetadataValue]:
    """Where the object ran, when that is elsewhere: the Databricks run id and page."""
    return {
        name: MetadataValue.url(value) if name.endswith("_url") else MetadataValue.text(value)
        for name, value in report.links.items()
    }
