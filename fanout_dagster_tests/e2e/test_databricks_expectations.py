"""Expectations on the databricks target, through both launch modes, end to end:
the real daemon and sensor, the real step launcher / Pipes client and
databricks-sdk over HTTP to the workspace emulator, whose runs load with local
PySpark (a classic session on a cluster under the step launcher; Spark Connect
on serverless under Pipes).

Two sample objects: erp-orders with one order of negative total (its
`quarantine` rule moves that row to main.bronze.erp_orders_quarantine) and
finance-fx_rates with one rate of zero (its `fail` rule fails the object and
commits nothing). Each rule is a partitioned asset check evaluated on its
object's partition.
"""

from __future__ import annotations

import csv
import io

import pytest
import yaml
from dagster import AssetCheckKey, AssetKey
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.base import PartitionKeyFilter

from fanout_dagster.core.expectations import FAILED_COLUMN
from fanout_dagster.local_spark.catalog import has_commits
from fanout_dagster_tests.e2e import test_databricks
from fanout_dagster_tests.e2e.dagster_processes import (
    all_runs_finished,
    describe_runs,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.e2e.test_databricks import databricks_deployment, uc_table
from fanout_dagster_tests.e2e.test_databricks_pipes import pipes_env, place_objects
from fanout_dagster_tests.helpers import keep_objects

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
KEYS = ["erp-orders", "finance-fx_rates"]
NEGATIVE_ORDER = "1"


def break_the_sources(project) -> None:
    """Order 1 gets a negative total; the first fx rate becomes zero."""
    orders = project.data / "erp/orders/orders_2026-01.csv"
    rows = list(csv.reader(io.StringIO(orders.read_text())))
    header = rows[0]
    for row in rows[1:]:
        if row[header.index("order_id")] == NEGATIVE_ORDER:
            row[header.index("total_amount")] = "-" + row[header.index("total_amount")]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    orders.write_text(out.getvalue())

    [rates] = (project.data / "finance/fx_rates").glob("*.csv")
    lines = rates.read_text().splitlines()
    first = lines[1].split(",")
    first[3] = "0"  # rate_date,base_currency,quote_currency,rate,...
    rates.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")


def check_record(instance, name: str, partition: str):
    records = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(BRONZE, name), limit=5, partition_filter=PartitionKeyFilter(key=partition)
    )
    assert records, f"no evaluation of {name} on {partition}"
    return records[0]


def assert_the_expectations_held(instance, spark, emu, project) -> None:
    detail = describe_runs(instance)
    # The fail rule failed its object only; nothing of it was committed.
    assert instance.get_materialized_partitions(BRONZE) == {"erp-orders"}, detail
    assert not has_commits(emu.root / "unity-catalog/main/bronze/finance_fx_rates")
    rate = check_record(instance, "rate_positive", "finance-fx_rates")
    assert rate.status == AssetCheckExecutionRecordStatus.FAILED, detail
    evaluation = rate.event.dagster_event.event_specific_data
    assert "fanout expectation failed: 'rate_positive'" in evaluation.metadata["error"].value

    # The quarantine rule moved exactly the negative order; no row lost, none twice.
    source = spark.read.option("header", "true").csv(str(project.data / "erp/orders"))
    bronze = uc_table(spark, emu, "erp_orders")
    quarantine = uc_table(spark, emu, "erp_orders_quarantine")
    assert bronze.count() + quarantine.count() == source.count()
    [row] = quarantine.collect()
    assert row.order_id == NEGATIVE_ORDER
    assert list(row[FAILED_COLUMN]) == ["total_not_negative"]
    assert bronze.where(f"order_id = '{NEGATIVE_ORDER}'").count() == 0

    total = check_record(instance, "total_not_negative", "erp-orders")
    assert total.status == AssetCheckExecutionRecordStatus.FAILED  # a WARN: the load succeeded
    metadata = total.event.dagster_event.event_specific_data.metadata
    assert metadata["failed_rows"].value == 1
    assert metadata["rows_checked"].value == source.count()
    assert metadata["quarantine_table"].value == "main.bronze.erp_orders_quarantine"
    for name in ("order_id_present", "known_status"):
        assert check_record(instance, name, "erp-orders").status == (
            AssetCheckExecutionRecordStatus.SUCCEEDED
        )
    [materialization] = instance.fetch_materializations(BRONZE, limit=5).records
    counts = materialization.asset_materialization.metadata
    assert counts["rows_quarantined"].value == 1
    assert counts["expectations"].value["total_not_negative"]["failed_rows"] == 1


@pytest.fixture
def without_run_monitoring(monkeypatch):
    """Run monitoring off for this deployment. Its worker-health check of the warm
    run launcher (single_host/run_launcher.py) marks a fresh daemon's first run
    failed when the forkserver took more than 2 s to start (it compares the
    worker's start time with the time the launch began); on a loaded machine
    that interrupts the step-launcher run mid-way. Not what this test is about."""

    def home_without_monitoring(home, **kwargs):
        written = write_dagster_home(home, **kwargs)
        config = yaml.safe_load((written / "dagster.yaml").read_text())
        config["run_monitoring"]["enabled"] = False
        (written / "dagster.yaml").write_text(yaml.safe_dump(config))
        return written

    monkeypatch.setattr(test_databricks, "write_dagster_home", home_without_monitoring)


def test_expectations_through_the_step_launcher(project, tmp_path, spark, without_run_monitoring):
    """One pack on a cluster: the asset body runs there, on a classic session."""
    keep_objects(project, KEYS)
    break_the_sources(project)
    with databricks_deployment(
        project, tmp_path, objects_per_run=2, cluster_limits={"default": 1}, data_in="dbfs"
    ) as (instance, emu, _home):
        wait_for(
            lambda: all_runs_finished(instance, 1),
            timeout=900,
            what="the databricks run",
            on_timeout=lambda: (
                describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-3000:]
            ),
        )
        assert emu.stats()["runs_submitted"] == 1
        assert_the_expectations_held(instance, spark, emu, project)


def test_expectations_through_pipes(project, tmp_path, spark):
    """erp-orders on serverless (Spark Connect), finance-fx_rates on a cluster."""
    place_objects(project, {"erp-orders": "quick", "finance-fx_rates": "default"})
    break_the_sources(project)
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1, "quick": 1},
        data_in="volume",
        dbfs_root=False,
        env=pipes_env(tmp_path),
    ) as (instance, emu, _home):
        wait_for(
            lambda: all_runs_finished(instance, 2),
            timeout=900,
            what="the pipes runs",
            on_timeout=lambda: (
                describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-3000:]
            ),
        )
        assert emu.stats()["runs_submitted"] == 2
        assert_the_expectations_held(instance, spark, emu, project)
