"""Faults, each with its proof: real Spark, real Dagster processes, the real
step launcher against the Databricks emulator. Nothing is mocked.

An object's Spark write fails half way (in-process, through the asset; on SQLite
and on PostgreSQL storage); the end-to-end faults (daemon killed, Databricks API throttled, remote run killed,
run terminated) are in e2e/test_faults.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, instance_for_test, materialize

from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster_tests.helpers import (
    expected_source_files,
    keep_objects,
    spark_source_count,
    table_state,
)
from fanout_dagster_tests.postgres import STORAGES, storage_overrides

BRONZE = AssetKey("bronze")


@pytest.fixture(params=STORAGES)
def storage(request) -> str:
    """The fault runs on both storages."""
    return request.param


# --------------------------------------------------------------------------- helpers


def set_source_option(project, key: str, name: str, value: str) -> None:
    """Add a reader option to one object of the project's (single) objects.yaml."""
    path = project.configs / "objects.yaml"
    entries = yaml.safe_load(path.read_text())
    [entry] = [e for e in entries if f"{e['code']}-{e['name']}" == key]
    entry["source"].setdefault("options", {})[name] = value
    path.write_text(yaml.safe_dump(entries))


def step_failure_messages(instance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    return [r.event_log_entry.dagster_event.step_failure_data.error.message for r in records]


# --------------------------------------------------------------------------- 1. write fails half way


@pytest.mark.duration(100)
def test_a_spark_write_that_fails_half_way_keeps_the_previous_load_and_a_retry_heals(
    classic_spark, classic_spark_resource, project, dagster_storage
):
    """The write job of a load dies after some of its tasks have written their
    part files: the run fails naming the object, the table keeps its previous
    version (nothing committed), and a retry with the source fixed commits the
    new source's rows as the next version."""
    key, table = "erp-orders", "erp_orders"
    keep_objects(project, [key])
    # FAILFAST: a malformed CSV row fails the task that reads it, which in a
    # load is a task of the write job (the read is lazy).
    set_source_option(project, key, "mode", "FAILFAST")
    obj = load_objects(project.configs).by_key()[key]
    files = expected_source_files(project.data, obj)
    # The embedded mode: Spark's status tracker shows the write job failing half way.
    spark, spark_resource = classic_spark, classic_spark_resource
    bronze = build_bronze_asset(objects_per_run=1, threads_per_run=1)
    name = project.table(table)
    tracker = spark.sparkContext.statusTracker()
    # One file per Spark partition (6 files -> 6 write tasks; Spark orders
    # them largest first). The malformed row goes into the smallest file, so
    # the write tasks of the other files have finished before it fails.
    previous_split = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")
    try:
        with instance_for_test(overrides=storage_overrides(dagster_storage)) as instance:

            def run():
                return materialize(
                    [bronze],
                    resources=project.resources(spark_resource),
                    instance=instance,
                    partition_key=key,
                    raise_on_error=False,
                )

            instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, [key])
            first = run()
            assert first.success
            first_rows = spark_source_count(spark, obj, files)
            assert spark.table(name).count() == first_rows
            before = table_state(spark, name)

            # The next extract of the smallest file: 3 more rows (re-sent ones:
            # bronze keeps rows as they come) and one malformed row.
            victim = min(files, key=lambda f: os.path.getsize(f))
            good = Path(victim).read_text()
            _header, *rows = good.splitlines()
            extra_rows = "\n".join(rows[:3]) + "\n"
            Path(victim).write_text(
                good + extra_rows + "999999,SO-BROKEN,1,2,3,4,5,6,7,8,9,10,11,12,13\n"
            )
            assert victim == min(files, key=lambda f: os.path.getsize(f))

            jobs_before = set(tracker.getJobIdsForGroup(None))
            failed = run()
            assert not failed.success
            run_id = failed.run_id
            [message] = step_failure_messages(instance, run_id)
            # The run fails naming the object, with Spark's reason.
            assert "1 of 1 object(s) failed (0 loaded): erp-orders: " in message, message[:2000]
            # The summary is Spark's one telling line (naming the file), not
            # kilobytes of Java stack; the full trace is on the partition.
            assert "FAILED_READ_FILE" in message and len(message) < 2000, message[:2000]
            # It failed inside the write job, half way: tasks of the failed job
            # completed (their part files were written) before one failed.
            new_jobs = [
                tracker.getJobInfo(j) for j in set(tracker.getJobIdsForGroup(None)) - jobs_before
            ]
            failed_jobs = [j for j in new_jobs if j is not None and j.status == "FAILED"]
            assert failed_jobs, [(j.jobId, j.status) for j in new_jobs if j]
            stages = [tracker.getStageInfo(s) for j in failed_jobs for s in j.stageIds]
            stages = [s for s in stages if s is not None]
            assert sum(s.numCompletedTasks for s in stages) >= 1, [
                (s.stageId, s.numTasks, s.numCompletedTasks, s.numFailedTasks) for s in stages
            ]
            assert sum(s.numFailedTasks for s in stages) >= 1
            # Spark names the file holding the malformed row.
            assert Path(victim).name in message
            # Its partition shows the failure, not a materialization.
            assert instance.get_materialized_partitions(BRONZE) == {key}
            observations = [
                e.asset_observation_data.asset_observation
                for e in failed.all_events
                if e.event_type == DagsterEventType.ASSET_OBSERVATION
            ]
            assert [o.partition for o in observations] == [key]
            assert observations[0].metadata["status"].value == "failed"
            # The full trace: the failing call is the Delta write, and the
            # root cause the malformed record.
            trace = observations[0].metadata["traceback"].value
            assert "MALFORMED_CSV_RECORD" in trace and "saveAsTable" in trace

            # The table is still its previous version, row for row.
            assert table_state(spark, name) == before

            # Fix the source (drop the malformed row, keep the new rows): the retry heals.
            Path(victim).write_text(good + extra_rows)
            healed = run()
            assert healed.success
            new_rows = spark_source_count(spark, obj, files)
            assert new_rows == first_rows + 3
            table_df = spark.table(name)
            assert table_df.count() == new_rows
            assert [r[0] for r in table_df.select("_dagster_run_id").distinct().collect()] == [
                healed.run_id
            ]
            after = table_state(spark, name)
            assert before is not None and after is not None
            assert after[0] == before[0] + 1
            [mat] = [
                e.step_materialization_data.materialization
                for e in healed.all_events
                if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
            ]
            assert mat.metadata["dagster/row_count"].value == new_rows
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous_split)
