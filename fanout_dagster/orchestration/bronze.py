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

Each expectation name of the configs is an asset check on `bronze`,
partitioned like it (Dagster's partitioned asset checks, a preview feature in
1.13): every object's load reports an evaluation of each of its expectations
on its own partition, with the counts, as it finishes. An object that does not
declare an expectation reports nothing for that check (the UI shows it as not
evaluated there). Check specs are made when the code location loads: an
expectation name added to the configs later becomes a check once the code
location reloads; until then its counts are in the materialization's metadata.

The asset never asks where it runs: the object loader and the step launcher
(Databricks or none) are resources chosen in definitions.py.
"""

import warnings
from collections.abc import Collection, Iterable, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetMaterialization,
    AssetObservation,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MetadataValue,
    Output,
    PreviewWarning,
    TableColumn,
    TableSchema,
    asset,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.metadata import RawMetadataValue
from dagster._core.storage.event_log.base import AssetRecordsFilter

from fanout_dagster.core.expectations import ExpectationResult, ExpectationsReport

# short_error lives with the loading loop (Dagster-free); kept importable from here.
from fanout_dagster.core.loading import ObjectReport, short_error
from fanout_dagster.core.objects import ObjectConfig
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME, objects_partitions
from fanout_dagster.orchestration.resources.object_loader import ObjectLoader
from fanout_dagster.orchestration.tags import OBJECTS_TAG

__all__ = ["build_bronze_asset", "expectation_names", "short_error"]

NOT_REPORTED = "no outcome was reported for this object"
BRONZE_ASSET = "bronze"


def expectation_names(objects: Iterable[ObjectConfig]) -> list[str]:
    """Every expectation name the objects declare: the bronze asset's checks."""
    return sorted({e.name for obj in objects for e in obj.expectations})


def build_bronze_asset(
    *,
    objects_per_run: int = 1,
    threads_per_run: int = 4,
    check_names: Collection[str] = (),
) -> AssetsDefinition:
    """The bronze asset with its packing policy and its asset checks.

    objects_per_run: how many objects a backfill puts in one run (1 = a run per object).
    threads_per_run: how many objects of a pack load at once on the run's SparkSession.
    check_names: the expectation names of the configs (`expectation_names`), one
    partitioned asset check each.
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
        check_specs=_check_specs(check_names),
    )
    def bronze(
        context: AssetExecutionContext,
    ) -> Iterator[AssetMaterialization | AssetObservation | AssetCheckEvaluation | Output]:
        loader: ObjectLoader = context.resources.object_loader
        keys = _pack_keys(context)
        checks = _Checks(context)
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
            yield from checks.evaluations(report)
        for key in keys:
            if key not in reported:  # every object ends with its own truth, never silently
                failures[key] = NOT_REPORTED
                yield _failure_event(context, key, NOT_REPORTED)
        yield from checks.outputs()
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


def _check_specs(names: Collection[str]) -> list[AssetCheckSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)  # partitioned asset checks
        return [
            AssetCheckSpec(
                name,
                asset=BRONZE_ASSET,
                partitions_def=objects_partitions,
                description=f"Expectation '{name}' of each object that declares it "
                "(its rule and action are in the object's config): passes when no row of "
                "the load broke it. Objects without it report nothing here.",
            )
            for name in sorted(set(names))
        ]


class _Checks:
    """The asset checks of one step: an evaluation per object and expectation, on
    the object's partition; the check outputs Dagster expects of the step."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self.context = context
        self.selected = {key.name for key in context.selected_asset_check_keys}
        self.declared = {spec.name for spec in context.assets_def.check_specs}
        self._warned: set[str] = set()

    def evaluations(self, report: ObjectReport) -> Iterator[AssetCheckEvaluation]:
        expectations = report.result.expectations if report.result is not None else None
        if expectations is not None:
            target = self._materialization(report.key)
            for result in expectations.results:
                if self._known(result.name):
                    yield self._evaluation(report.key, result, expectations, target)
        if report.failed_expectation is not None and self._known(report.failed_expectation):
            yield AssetCheckEvaluation(
                asset_key=self.context.asset_key,
                check_name=report.failed_expectation,
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description="A row broke this `fail` expectation: the object's load failed "
                "and committed nothing.",
                metadata={
                    "action": MetadataValue.text("fail"),
                    "error": MetadataValue.text(report.error or ""),
                    "config_file": MetadataValue.text(report.config_file or ""),
                },
                partition=report.key,
            )

    def _evaluation(
        self,
        key: str,
        result: ExpectationResult,
        expectations: ExpectationsReport,
        target: AssetCheckEvaluationTargetMaterializationData | None,
    ) -> AssetCheckEvaluation:
        checked = expectations.rows_checked
        what = {
            "warn": "loaded",
            "drop": "left out",
            "fail": "failing the load",
            "quarantine": f"moved to {expectations.quarantine_table}",
        }[result.action]
        metadata: dict[str, RawMetadataValue] = {
            "failed_rows": MetadataValue.int(result.failed_rows),
            "passed_rows": MetadataValue.int(checked - result.failed_rows),
            "rows_checked": MetadataValue.int(checked),
            "action": MetadataValue.text(result.action),
            "expression": MetadataValue.text(result.expression),
        }
        if result.action == "quarantine" and expectations.quarantine_table:
            metadata["quarantine_table"] = MetadataValue.text(expectations.quarantine_table)
        return AssetCheckEvaluation(
            asset_key=self.context.asset_key,
            check_name=result.name,
            passed=result.passed,
            metadata=metadata,
            target_materialization_data=target,
            # Only a `fail` rule fails the object; the others count and route rows.
            severity=AssetCheckSeverity.ERROR
            if result.action == "fail"
            else AssetCheckSeverity.WARN,
            description=f"{result.failed_rows} of {checked} row(s) broke `{result.expression}` "
            f"({what}).",
            partition=key,
        )

    def _known(self, name: str) -> bool:
        """Whether this step evaluates the check `name`; a name with no check yet is
        logged once."""
        if name in self.selected:
            return True
        if name not in self.declared and name not in self._warned:
            self._warned.add(name)
            self.context.log.warning(
                f"expectation '{name}' has no asset check yet (it was added to the configs "
                "after the code location loaded; reload it): its counts are in the "
                "materialization's metadata"
            )
        return False

    def _materialization(self, key: str) -> AssetCheckEvaluationTargetMaterializationData | None:
        """The materialization the evaluations are of (just logged), as Dagster's own
        partitioned check results point to it."""
        records = self.context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=self.context.asset_key, asset_partitions=[key]), limit=1
        ).records
        if not records or records[0].event_log_entry.run_id != self.context.run.run_id:
            return None  # e.g. the stand-in instance of a remote step
        return AssetCheckEvaluationTargetMaterializationData(
            run_id=records[0].event_log_entry.run_id,
            storage_id=records[0].storage_id,
            timestamp=records[0].timestamp,
        )

    def outputs(self) -> Iterator[Output]:
        """The check outputs of the step (evaluations carry the results; Dagster wants
        an output of each selected check of an asset's step)."""
        names = {
            spec.key: output_name
            for output_name, spec in self.context.assets_def.check_specs_by_output_name.items()
        }
        for key in sorted(self.context.selected_asset_check_keys, key=lambda k: k.name):
            yield Output(None, output_name=names[key])


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
        **_expectations(result.expectations),
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


def _expectations(report: ExpectationsReport | None) -> dict[str, RawMetadataValue]:
    """What the expectations did to the load: counts per rule, rows routed away."""
    if report is None:
        return {}
    metadata: dict[str, RawMetadataValue] = {
        "expectations": MetadataValue.json(
            {
                r.name: {"action": r.action, "failed_rows": r.failed_rows, "passed": r.passed}
                for r in report.results
            }
        ),
        "rows_checked": MetadataValue.int(report.rows_checked),
        "rows_dropped": MetadataValue.int(report.rows_dropped),
        "rows_quarantined": MetadataValue.int(report.rows_quarantined),
    }
    if report.quarantine_table:
        metadata["quarantine_table"] = MetadataValue.text(report.quarantine_table)
    return metadata


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
