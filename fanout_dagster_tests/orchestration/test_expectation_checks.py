"""Expectations as Dagster asset checks on `bronze` (real Spark, real Dagster
instance): an evaluation per object and rule on the object's partition, with
its counts, in single and packed runs; the materialization carries them too."""

from __future__ import annotations

import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    materialize,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fanout_dagster.core.objects import load_objects
from fanout_dagster.definitions import build_definitions
from fanout_dagster.orchestration.bronze import build_bronze_asset, expectation_names
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS, replace_once

BRONZE = AssetKey("bronze")


def run(project, spark_resource, instance, *, keys, check_names=None):
    names = expectation_names(load_objects(project.configs).objects)
    tags = (
        {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        if len(keys) > 1
        else None
    )
    return materialize(
        [
            build_bronze_asset(
                objects_per_run=len(keys),
                threads_per_run=2,
                check_names=names if check_names is None else check_names,
            )
        ],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key=keys[0] if len(keys) == 1 else None,
        tags=tags,
        raise_on_error=False,
    )


def evaluations(result) -> dict[tuple[str | None, str], AssetCheckEvaluation]:
    """(partition, check name) -> the evaluation the run reported."""
    found = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            assert isinstance(evaluation, AssetCheckEvaluation)
            key = (evaluation.partition, evaluation.check_name)
            assert key not in found, f"{key} evaluated twice"
            found[key] = evaluation
    return found


def stored(instance, name: str, partition: str):
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(BRONZE, name), limit=10, partition_filter=_partition(partition)
    )
    return record


def _partition(key: str):
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    return PartitionKeyFilter(key=key)


def test_each_rule_is_a_partitioned_asset_check_of_the_code_location():
    defs = build_definitions(Settings(configs_dir=str(SAMPLE_CONFIGS)))
    repo = defs.get_repository_def()
    names = expectation_names(load_objects(SAMPLE_CONFIGS).objects)
    assert len(names) >= 8
    checks = repo.asset_graph.asset_check_keys
    assert checks == {AssetCheckKey(BRONZE, name) for name in names}
    bronze = repo.asset_graph.get(BRONZE).assets_def
    for spec in bronze.check_specs:
        assert spec.partitions_def == bronze.partitions_def


def test_a_pack_reports_each_objects_rules_on_its_partition(
    spark, spark_resource, project, instance
):
    keys = ["erp-products", "erp-orders", "erp-stores"]
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
    result = run(project, spark_resource, instance, keys=keys)
    assert result.success

    found = evaluations(result)
    # erp-products: 18 of its 120 sample products have no weight (warn: loaded).
    weight = found[("erp-products", "weight_known")]
    assert not weight.passed and weight.severity == AssetCheckSeverity.WARN
    assert weight.metadata["failed_rows"].value == 18
    assert weight.metadata["passed_rows"].value == 102
    assert weight.metadata["rows_checked"].value == 120
    assert weight.metadata["action"].value == "warn"
    assert weight.metadata["expression"].value == "weight_kg IS NOT NULL"
    # erp-orders: three rules, all kept by every sample row.
    for name, severity in [
        ("order_id_present", AssetCheckSeverity.ERROR),
        ("total_not_negative", AssetCheckSeverity.WARN),
        ("known_status", AssetCheckSeverity.WARN),
    ]:
        evaluation = found[("erp-orders", name)]
        assert evaluation.passed and evaluation.severity == severity, name
        assert evaluation.metadata["failed_rows"].value == 0
    assert found[("erp-orders", "total_not_negative")].metadata["quarantine_table"].value == (
        project.table("erp_orders_quarantine")
    )
    # Only the rules each object declares; erp-stores declares none.
    assert set(found) == {
        ("erp-products", "weight_known"),
        ("erp-orders", "order_id_present"),
        ("erp-orders", "total_not_negative"),
        ("erp-orders", "known_status"),
    }

    # Stored per partition, pointing at the object's own materialization.
    record = stored(instance, "weight_known", "erp-products")
    assert record.status == AssetCheckExecutionRecordStatus.FAILED
    materializations = {
        r.partition_key: r for r in instance.fetch_materializations(BRONZE, limit=10).records
    }
    target = weight.target_materialization_data
    assert target is not None and target.storage_id == materializations["erp-products"].storage_id
    assert stored(instance, "order_id_present", "erp-orders").status == (
        AssetCheckExecutionRecordStatus.SUCCEEDED
    )

    # The materialization carries the counts too.
    metadata = materializations["erp-products"].asset_materialization.metadata
    assert metadata["expectations"].value == {
        "weight_known": {"action": "warn", "failed_rows": 18, "passed": False}
    }
    assert metadata["rows_checked"].value == 120
    assert metadata["rows_dropped"].value == metadata["rows_quarantined"].value == 0
    assert "expectations" not in materializations["erp-stores"].asset_materialization.metadata


def test_a_broken_fail_rule_fails_its_check_and_object_only(
    spark, spark_resource, project, instance
):
    # A rule every fx rate breaks, as `fail`.
    replace_once(
        project.configs / "finance_fx_rates.yaml",
        "expression: try_cast(rate AS DOUBLE) > 0",
        "expression: try_cast(rate AS DOUBLE) > 1000",
    )
    keys = ["finance-fx_rates", "erp-products"]
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
    result = run(project, spark_resource, instance, keys=keys)
    assert not result.success
    found = evaluations(result)
    rate = found[("finance-fx_rates", "rate_positive")]
    assert not rate.passed and rate.severity == AssetCheckSeverity.ERROR
    assert "fanout expectation failed: 'rate_positive'" in str(rate.metadata["error"].value)
    assert not spark.catalog.tableExists(project.table("finance_fx_rates"))
    # The other object of the pack loaded, with its own check.
    assert instance.get_materialized_partitions(BRONZE) == {"erp-products"}
    assert ("erp-products", "weight_known") in found
    assert stored(instance, "rate_positive", "finance-fx_rates").status == (
        AssetCheckExecutionRecordStatus.FAILED
    )


def test_a_rule_added_after_the_code_location_loaded_is_in_the_metadata(
    spark, spark_resource, project, instance
):
    path = project.configs / "finance_fx_rates.yaml"
    config = yaml.safe_load(path.read_text())
    config["expectations"].append({"name": "new_rule", "expression": "rate IS NOT NULL"})
    path.write_text(yaml.safe_dump(config))
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["finance-fx_rates"])
    # The checks of the code location as it loaded before the edit.
    result = run(
        project, spark_resource, instance, keys=["finance-fx_rates"], check_names=["rate_positive"]
    )
    assert result.success
    assert set(evaluations(result)) == {("finance-fx_rates", "rate_positive")}
    [record] = instance.fetch_materializations(BRONZE, limit=1).records
    assert record.asset_materialization.metadata["expectations"].value["new_rule"] == {
        "action": "warn",
        "failed_rows": 0,
        "passed": True,
    }
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("'new_rule' has no asset check yet" in message for message in logs), logs
