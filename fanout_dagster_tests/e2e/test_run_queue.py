"""The run queue end to end: the real daemon runs the object sensor, the queued
run coordinator and the runs; the limits are checked from run records.

The queue's core scenario (a UI backfill's pack held by overlapping sensor
runs: the sensor, the webserver, the queue daemon and the runs) runs on SQLite
and on PostgreSQL storage; the 15-object run under the limits on SQLite only,
to keep the suite short.
"""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import RunRecord
from dagster._core.storage.tags import BACKFILL_ID_TAG, SENSOR_NAME_TAG
from pyspark.sql import SparkSession

from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.tags import OBJECTS_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    all_runs_finished,
    configured_limits,
    dagster_daemon,
    describe_runs,
    failed_runs,
    max_overlap,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.helpers import keep_objects
from fanout_dagster_tests.postgres import STORAGES

IN_PROGRESS_STATUSES = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)

pytestmark = pytest.mark.slow


OBJECTS_PER_RUN = 3


def test_sensor_runs_every_sample_object_within_the_run_queue_limits(project, tmp_path, spark):
    # Tighter than the shipped limits, so a violation has room to show on 2 cores.
    home = write_dagster_home(
        tmp_path / "dagster_home", max_concurrent_runs=3, cluster_limits={"default": 2, "heavy": 1}
    )
    global_limit, cluster_limits = configured_limits(home)
    objects = load_objects(project.configs).objects
    clusters = {obj.key: obj.cluster for obj in objects}

    # New objects are packed per cluster: ceil(n_cluster / 3) runs per cluster.
    expected_runs = sum(
        -(-sum(1 for o in objects if o.cluster == c) // OBJECTS_PER_RUN)
        for c in set(clusters.values())
    )
    env = {**project.env(), "FANOUT_OBJECTS_PER_RUN": str(OBJECTS_PER_RUN)}

    with DagsterInstance.from_config(str(home)) as instance:
        with dagster_daemon(home, env, tmp_path / "daemon.log"):
            wait_for(
                lambda: all_runs_finished(instance, expected_runs),
                timeout=600,
                what="the sensor's runs for every sample object",
                on_timeout=lambda: (
                    describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-3000:]
                ),
            )

        assert not failed_runs(instance), describe_runs(instance)
        records = instance.get_run_records()
        assert len(records) == expected_runs, describe_runs(instance)

        # Each run is a pack on one cluster and carries that cluster's tag;
        # together the packs cover every object exactly once.
        packed_keys = []
        for record in records:
            keys = record.dagster_run.tags["fanout/objects"].split(",")
            assert len(keys) <= OBJECTS_PER_RUN
            assert {clusters[k] for k in keys} == {record.dagster_run.tags["fanout/cluster"]}
            packed_keys.extend(keys)
        assert sorted(packed_keys) == sorted(clusters)
        overall = max_overlap(records)
        assert 2 <= overall <= global_limit, describe_runs(instance)
        for cluster, limit in cluster_limits.items():
            assert max_overlap(records, ("fanout/cluster", cluster)) <= limit

        materialized = instance.get_materialized_partitions(AssetKey("bronze"))
        assert materialized == {obj.key for obj in objects}

    # The data is really there: each table's rows equal its source's rows.
    sample = next(obj for obj in objects if obj.key == "erp-orders")
    active = SparkSession.getActiveSession()
    assert active is not None
    source_rows = (
        active.read.options(**{k: str(v).lower() for k, v in sample.source.options.items()})
        .csv(str(project.data / sample.source.path))
        .count()
    )
    table = spark.read.format("delta").load(str(project.process_table(sample.target.table)))
    assert table.count() == source_rows


# Four small objects of one cluster: the sensor packs them A-B and C-D; a UI
# backfill of B and C packs them B-C, which overlaps both.
OVERLAP_KEYS = ["erp-customers", "erp-products", "erp-stores", "erp-suppliers"]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.duration(100)
def test_a_ui_backfill_pack_beside_overlapping_sensor_runs_waits_in_the_queue(
    project, tmp_path, dagster_storage
):
    """The queue, not the runs, keeps two runs of one object apart. The queue
    is first closed (max_concurrent_runs 0) while the sensor's packs and a UI
    backfill's pack are created, then opened for 3 runs, 3 on the cluster: the
    global and cluster limits have room for all three, and only the per-object
    limits can hold the backfill's pack until both sensor runs have ended."""
    from fanout_dagster_tests.e2e.webserver import (
        dagster_webserver,
        launch_asset_backfill,
        wait_until_loaded,
    )

    keep_objects(project, OVERLAP_KEYS)
    home = write_dagster_home(
        tmp_path / "dagster_home",
        max_concurrent_runs=0,
        cluster_limits={"default": 3},
        storage=dagster_storage,
    )
    env = {**project.env(), "FANOUT_OBJECTS_PER_RUN": "2", "FANOUT_THREADS_PER_RUN": "1"}
    daemon_log, web_log = tmp_path / "daemon.log", tmp_path / "webserver.log"

    def logs() -> str:
        return "\n--- daemon.log (tail)\n" + daemon_log.read_text(errors="replace")[-3000:]

    def runs_by_objects(instance) -> dict[str, RunRecord]:
        return {
            rec.dagster_run.tags.get(OBJECTS_TAG, "?"): rec for rec in instance.get_run_records()
        }

    with DagsterInstance.from_config(str(home)) as instance:
        # 1. Queue closed: the sensor's first tick queues its packs, the UI backfills B and C.
        with dagster_webserver(home, env, web_log) as (web, gql):
            wait_until_loaded(gql, web, timeout=180, log_path=web_log)
            with dagster_daemon(home, env, daemon_log):
                wait_for(
                    lambda: len(instance.get_runs()) == 2,
                    180,
                    "the sensor's two packs",
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
                backfill_id = launch_asset_backfill(
                    gql, ["bronze"], partition_names=OVERLAP_KEYS[1:3]
                )
                wait_for(
                    lambda: len(instance.get_runs()) == 3,
                    180,
                    "the backfill's pack",
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
        queued = runs_by_objects(instance)
        assert sorted(queued) == [
            "erp-customers,erp-products",
            "erp-products,erp-stores",
            "erp-stores,erp-suppliers",
        ], describe_runs(instance)
        assert all(rec.dagster_run.status == DagsterRunStatus.QUEUED for rec in queued.values())
        backfill_run = queued["erp-products,erp-stores"].dagster_run
        assert backfill_run.tags[BACKFILL_ID_TAG] == backfill_id
        assert SENSOR_NAME_TAG not in backfill_run.tags

        # 2. The queue opens.
        write_dagster_home(
            home, max_concurrent_runs=3, cluster_limits={"default": 3}, storage=dagster_storage
        )
        held_with_room: list[int] = []  # in-progress counts while the backfill's pack waited

        def observe() -> None:
            records = instance.get_run_records()
            in_progress = [r for r in records if r.dagster_run.status in IN_PROGRESS_STATUSES]
            backfill_status = next(
                r.dagster_run.status for r in records if r.dagster_run.run_id == backfill_run.run_id
            )
            if in_progress and backfill_status == DagsterRunStatus.QUEUED:
                held_with_room.append(len(in_progress))

        with dagster_daemon(home, env, daemon_log):
            wait_for(
                lambda: all_runs_finished(instance, 3),
                600,
                "the three runs",
                interval=0.5,
                on_poll=observe,
                on_timeout=lambda: describe_runs(instance) + logs(),
            )

        records = instance.get_run_records()
        detail = describe_runs(instance)
        assert not failed_runs(instance), detail + logs()
        # The queue held the backfill's pack while it had room for it.
        assert held_with_room and min(held_with_room) < 3, (held_with_room, detail)
        # Runs that share an object never overlapped; the sensor's packs did run together.
        spans = {
            rec.dagster_run.tags[OBJECTS_TAG]: (rec.start_time or 0.0, rec.end_time or 0.0)
            for rec in records
        }
        backfill_span = spans.pop("erp-products,erp-stores")
        for objects, (_start, end) in spans.items():
            assert end <= backfill_span[0], (objects, spans, backfill_span, detail)
        sensor_records = [r for r in records if r.dagster_run.run_id != backfill_run.run_id]
        assert max_overlap(sensor_records) == 2
        assert instance.get_materialized_partitions(AssetKey("bronze")) == set(OVERLAP_KEYS)
