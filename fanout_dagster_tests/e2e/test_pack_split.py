"""A UI backfill whose packs straddle clusters, end to end: real `dagster-webserver`
and real daemon, local target.

The backfill cuts 5 partitions into packs of 3 in partition order, across a
cluster boundary twice. The run coordinator splits each straddling pack by
cluster (pack_split.py). What must hold, read from what Dagster recorded and
from the GraphQL views the UI renders: every run holds one cluster's objects
and runs under that cluster's limit; every object runs once; the backfill
waits for the sibling runs and counts each object by its own outcome; the
Partitions tab shows each partition's own truth, also for an object whose
pack-mate failed the run it was split from.
"""

from __future__ import annotations

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG

from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import record_clusters
from fanout_dagster.orchestration.tags import CLUSTER_TAG
from fanout_dagster.single_host.pack_split import SPLIT_FROM_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    backfill_runs,
    dagster_daemon,
    describe_runs,
    max_overlap,
    run_keys,
    write_dagster_home,
)
from fanout_dagster_tests.e2e.test_packed_backfill import wait_backfill
from fanout_dagster_tests.e2e.webserver import (
    asset_partitions,
    asset_status_counts,
    backfill_status,
    dagster_webserver,
    launch_asset_backfill,
    stop_sensor,
    wait_until_loaded,
)
from fanout_dagster_tests.helpers import keep_objects

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
# Partition order and clusters: packs of 3 are [customers products stores] and
# [suppliers campaigns], each straddling default/heavy.
ORDER = ["erp-customers", "erp-products", "erp-stores", "erp-suppliers", "crm-campaigns"]
CLUSTERS = {
    "erp-customers": "default",
    "erp-products": "default",
    "erp-stores": "heavy",
    "erp-suppliers": "heavy",
    "crm-campaigns": "default",
}
BROKEN = "erp-products"  # fails the original run of the first pack
EXPECTED_RUNS = [
    ["erp-customers", "erp-products"],
    ["erp-stores"],
    ["erp-suppliers"],
    ["crm-campaigns"],
]


def test_a_backfill_pack_straddling_clusters_runs_split_by_cluster(project, tmp_path):
    keep_objects(project, ORDER)
    path = project.configs / "objects.yaml"
    entries = yaml.safe_load(path.read_text())
    for entry in entries:
        entry["cluster"] = CLUSTERS[f"{entry['code']}-{entry['name']}"]
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    (project.data / "erp/products/products.csv").unlink()

    limits = {"default": 1, "heavy": 1}
    home = write_dagster_home(
        tmp_path / "dagster_home", max_concurrent_runs=2, cluster_limits=limits
    )
    env = {**project.env(), "FANOUT_OBJECTS_PER_RUN": "3", "FANOUT_THREADS_PER_RUN": "2"}
    web_log, daemon_log = tmp_path / "webserver.log", tmp_path / "daemon.log"

    def logs() -> str:
        return "".join(
            f"\n--- {p.name}\n" + p.read_text(errors="replace")[-4000:]
            for p in (web_log, daemon_log)
            if p.exists()
        )

    with (
        DagsterInstance.from_config(str(home)) as instance,
        dagster_webserver(home, env, web_log) as (web, gql),
    ):
        wait_until_loaded(gql, web, timeout=180, log_path=web_log)
        assert stop_sensor(gql, "object_configs_sensor") == "STOPPED"
        instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ORDER)
        record_clusters(instance, CLUSTERS)
        backfill_id = launch_asset_backfill(gql, ["bronze"], partition_names=ORDER)

        with dagster_daemon(home, env, daemon_log):
            status = wait_backfill(
                instance,
                backfill_id,
                timeout=600,
                on_timeout=lambda: describe_runs(instance) + logs(),
            )
        runs = backfill_runs(instance, backfill_id)
        detail = describe_runs(instance) + logs()

        # Split by cluster: one cluster per run, each object in exactly one run,
        # in partition order; the siblings say which run they were split from.
        assert sorted(run_keys(r) for r in runs) == sorted(EXPECTED_RUNS), detail
        for record in runs:
            run = record.dagster_run
            assert {CLUSTERS[key] for key in run_keys(record)} == {run.tags[CLUSTER_TAG]}, detail
            assert run.tags[BACKFILL_ID_TAG] == backfill_id
        originals = [r for r in runs if SPLIT_FROM_TAG not in r.dagster_run.tags]
        siblings = [r for r in runs if SPLIT_FROM_TAG in r.dagster_run.tags]
        assert len(originals) == len(siblings) == 2, detail
        original_ids = {r.dagster_run.run_id for r in originals}
        assert {r.dagster_run.tags[SPLIT_FROM_TAG] for r in siblings} == original_ids
        # Each run's range covers exactly its objects.
        for record in runs:
            tags, keys = record.dagster_run.tags, run_keys(record)
            assert (
                tags["dagster/asset_partition_range_start"],
                tags["dagster/asset_partition_range_end"],
            ) == (keys[0], keys[-1])
        # Under each cluster's own limit.
        for cluster, limit in limits.items():
            assert max_overlap(runs, (CLUSTER_TAG, cluster)) <= limit, detail

        # Each object's own outcome: the broken one failed its run; erp-stores,
        # split from that run, materialized in its own.
        failed = [r for r in runs if r.dagster_run.status == DagsterRunStatus.FAILURE]
        assert [run_keys(r) for r in failed] == [["erp-customers", BROKEN]], detail
        assert instance.get_materialized_partitions(BRONZE) == set(ORDER) - {BROKEN}

        # What the UI shows: the backfill's page and the asset's Partitions tab.
        assert status == BulkActionStatus.COMPLETED_FAILED, detail
        view = backfill_status(gql, backfill_id)
        counts = asset_status_counts(view, ["bronze"])
        assert (
            counts["numPartitionsTargeted"],
            counts["numPartitionsInProgress"],
            counts["numPartitionsMaterialized"],
            counts["numPartitionsFailed"],
        ) == (5, 0, 4, 1), view
        statuses = asset_partitions(gql, ["bronze"])["assetPartitionStatuses"]
        assert statuses["failedPartitions"] == [BROKEN]
        assert set(statuses["materializedPartitions"]) == set(ORDER) - {BROKEN}
        assert statuses["materializingPartitions"] == []
