"""The run queue end to end: the real daemon runs the object sensor, the queued
run coordinator and the runs; the limits are checked from run records."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance
from pyspark.sql import SparkSession

from fanout_dagster.objects import load_objects
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
    source_rows = (
        SparkSession.getActiveSession()
        .read.options(**{k: str(v).lower() for k, v in sample.source.options.items()})
        .csv(str(project.data / sample.source.path))
        .count()
    )
    table = spark.read.format("delta").load(str(project.process_table(sample.target.table)))
    assert table.count() == source_rows
