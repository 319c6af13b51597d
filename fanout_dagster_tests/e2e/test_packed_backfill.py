"""A packed UI backfill end to end: real `dagster-webserver` + real daemon.

What a user does: turn the object sensor off, launch a backfill of every
`bronze` partition from the UI with 4 objects per run, see that one broken
object failed on its own while its pack-mates were loaded, fix it, and
re-execute the backfill "from failure". Every action goes over HTTP with the
GraphQL the UI sends; every check reads what Dagster itself recorded (run
records, the event log, and the GraphQL views the UI renders). On SQLite and on
PostgreSQL storage.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    FloatMetadataValue,
    TimestampMetadataValue,
)
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARENT_BACKFILL_ID_TAG

from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import record_clusters
from fanout_dagster.orchestration.tags import CLUSTER_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    assert_packed,
    backfill_runs,
    configured_limits,
    dagster_daemon,
    describe_runs,
    max_overlap,
    peak_overlap,
    run_keys,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.e2e.webserver import (
    asset_partitions,
    asset_status_counts,
    backfill_status,
    dagster_webserver,
    launch_asset_backfill,
    metadata_by_label,
    partition_events,
    reexecute_backfill,
    stop_sensor,
    wait_until_loaded,
)
from fanout_dagster_tests.helpers import expected_source_files
from fanout_dagster_tests.postgres import STORAGES

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
BRONZE_PATH = ["bronze"]
SENSOR = "object_configs_sensor"
OBJECTS_PER_RUN = 4
THREADS_PER_RUN = 2
MAX_RUNS = 2
CLUSTER_LIMITS = {"default": 2, "heavy": 1}
# A default-cluster object in the first pack: its pack-mates must still load.
BROKEN = "erp-customers"


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.duration(120)
def test_packed_ui_backfill_fails_only_the_broken_object_and_reexecutes_only_it(
    project, tmp_path, dagster_storage
):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    home = write_dagster_home(
        tmp_path / "dagster_home",
        max_concurrent_runs=MAX_RUNS,
        cluster_limits=CLUSTER_LIMITS,
        storage=dagster_storage,
    )
    global_limit, cluster_limits = configured_limits(home)
    env = {
        **project.env(),
        "FANOUT_OBJECTS_PER_RUN": str(OBJECTS_PER_RUN),
        "FANOUT_THREADS_PER_RUN": str(THREADS_PER_RUN),
    }
    web_log, daemon_log = tmp_path / "webserver.log", tmp_path / "daemon.log"

    # The sensor's partition order: grouped by cluster, then by key.
    objects = sorted(load_objects(project.configs).objects, key=lambda o: (o.cluster, o.key))
    keys = [obj.key for obj in objects]
    clusters = {obj.key: obj.cluster for obj in objects}
    healthy = set(keys) - {BROKEN}
    assert BROKEN in keys

    # Break the object: its source files disappear (kept aside to fix it later).
    broken_obj = next(obj for obj in objects if obj.key == BROKEN)
    aside = tmp_path / "aside"
    moved: list[tuple[Path, Path]] = []
    for source in expected_source_files(project.data, broken_obj):
        target = aside / Path(source).relative_to(project.data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        moved.append((target, Path(source)))

    def logs() -> str:
        out = []
        for path in (web_log, daemon_log):
            if path.exists():
                out.append(f"--- {path.name} (tail)\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    with DagsterInstance.from_config(str(home)) as instance:
        with dagster_webserver(home, env, web_log) as (web, gql):
            wait_until_loaded(gql, web, timeout=180, log_path=web_log)
            timings["webserver ready"] = time.monotonic() - t0

            # 1. The sensor is RUNNING by default: switch it off in the UI
            #    before any daemon runs, then register the objects as it would.
            assert stop_sensor(gql, SENSOR) == "STOPPED"
            instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
            # The sensor also records each object's cluster, which the run
            # coordinator reads to tag backfill runs (placement.py).
            record_clusters(instance, clusters)

            # 2. Backfill every partition from the UI, before the daemon starts
            #    so its first backfill iteration picks it up at once.
            first = launch_asset_backfill(gql, BRONZE_PATH, all_partitions=True)
            assert backfill_status(gql, first)["numPartitions"] == len(keys)

            with dagster_daemon(home, env, daemon_log):
                wait_backfill(
                    instance,
                    first,
                    timeout=540,
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
                timings["first backfill done"] = time.monotonic() - t0

                # 3. What the first backfill did.
                first_runs = backfill_runs(instance, first)
                assert_packed(first_runs, keys, clusters, OBJECTS_PER_RUN, describe_runs(instance))
                by_key = {key: rec for rec in first_runs for key in run_keys(rec)}
                for rec in first_runs:
                    expected = (
                        DagsterRunStatus.FAILURE
                        if BROKEN in run_keys(rec)
                        else DagsterRunStatus.SUCCESS
                    )
                    assert rec.dagster_run.status == expected, describe_runs(instance)

                assert instance.get_materialized_partitions(BRONZE) == healthy

                # The asset's Partitions tab: 14 materialized, the broken one failed.
                node = asset_partitions(gql, BRONZE_PATH)
                statuses = node["assetPartitionStatuses"]
                assert statuses["__typename"] == "DefaultPartitionStatuses"
                assert set(statuses["materializedPartitions"]) == healthy
                assert statuses["failedPartitions"] == [BROKEN]
                assert statuses["materializingPartitions"] == []
                assert node["partitionStats"] == {
                    "numMaterialized": len(healthy),
                    "numPartitions": len(keys),
                    "numFailed": 1,
                    "numMaterializing": 0,
                }

                # The broken partition's own events: the observation with its
                # error, from the pack's run, and no materialization.
                events = partition_events(gql, BRONZE_PATH, BROKEN)
                assert events["assetMaterializations"] == []
                observations = events["assetObservations"]
                assert len(observations) == 1, observations
                assert observations[0]["partition"] == BROKEN
                assert observations[0]["runId"] == by_key[BROKEN].dagster_run.run_id
                meta = metadata_by_label(observations[0])
                assert meta["status"] == "failed"
                assert "SourceError" in meta["error"] and "no source files match" in meta["error"]

                # The backfill's page: exactly one failed partition.
                view = backfill_status(gql, first)
                assert view["status"] == "COMPLETED_FAILED", view
                assert asset_status_counts(view, BRONZE_PATH) == {
                    "__typename": "AssetPartitionsStatusCounts",
                    "assetKey": {"path": BRONZE_PATH},
                    "numPartitionsTargeted": len(keys),
                    "numPartitionsInProgress": 0,
                    "numPartitionsMaterialized": len(healthy),
                    "numPartitionsFailed": 1,
                }

                # 4. Fix the object, re-execute the backfill from failure.
                for kept, original in moved:
                    shutil.move(kept, original)
                second = reexecute_backfill(gql, first, "FROM_FAILURE")
                retry_view = backfill_status(gql, second)
                assert {"key": PARENT_BACKFILL_ID_TAG, "value": first} in retry_view["tags"]
                assert retry_view["assetBackfillData"]["rootTargetedPartitions"][
                    "partitionKeys"
                ] == [BROKEN]

                wait_backfill(
                    instance,
                    second,
                    timeout=300,
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
                timings["re-execution done"] = time.monotonic() - t0

                second_runs = backfill_runs(instance, second)
                assert [run_keys(rec) for rec in second_runs] == [[BROKEN]], describe_runs(instance)
                assert second_runs[0].dagster_run.status == DagsterRunStatus.SUCCESS
                assert second_runs[0].dagster_run.tags.get(CLUSTER_TAG) == clusters[BROKEN]

                assert instance.get_materialized_partitions(BRONZE) == set(keys)
                node = asset_partitions(gql, BRONZE_PATH)
                assert node["assetPartitionStatuses"]["failedPartitions"] == []
                assert node["partitionStats"]["numMaterialized"] == len(keys)
                assert node["partitionStats"]["numFailed"] == 0
                view = backfill_status(gql, second)
                assert view["status"] == "COMPLETED_SUCCESS", view
                counts = asset_status_counts(view, BRONZE_PATH)
                assert (
                    counts["numPartitionsTargeted"],
                    counts["numPartitionsMaterialized"],
                    counts["numPartitionsFailed"],
                ) == (1, 1, 0)

        # 5. Caps, observed from run records and per-object timings.
        records = instance.get_run_records()
        # Every run came from the two backfills: the sensor launched nothing.
        assert {rec.dagster_run.tags.get(BACKFILL_ID_TAG) for rec in records} == {first, second}
        assert len(records) == len(first_runs) + len(second_runs)
        overall = max_overlap(records)
        assert 2 <= overall <= global_limit, describe_runs(instance)
        for cluster, limit in cluster_limits.items():
            assert max_overlap(records, (CLUSTER_TAG, cluster)) <= limit, describe_runs(instance)

        loads = object_intervals(instance)
        assert set(loads) == set(keys), "a timed materialization for every object"
        per_run: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for run_id, start, end in loads.values():
            per_run[run_id].append((start, end))
        run_peaks = {run_id: peak_overlap(intervals) for run_id, intervals in per_run.items()}
        assert max(run_peaks.values()) <= THREADS_PER_RUN, run_peaks
        # The threads really did overlap inside a pack (not one at a time).
        assert max(run_peaks.values()) == THREADS_PER_RUN, run_peaks
        everything = [(start, end) for _, start, end in loads.values()]
        assert peak_overlap(everything) <= global_limit * THREADS_PER_RUN

        timings["total"] = time.monotonic() - t0
        print(
            "\n"
            + describe_runs(instance)
            + f"\nrun overlap {overall}, object overlap per run {sorted(run_peaks.values())}, "
            f"overall {peak_overlap(everything)}\n"
            + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
        )


# --------------------------------------------------------------------------- helpers


def wait_backfill(
    instance: DagsterInstance, backfill_id: str, timeout: float, on_timeout
) -> BulkActionStatus:
    def done() -> bool:
        backfill = instance.get_backfill(backfill_id)
        return backfill is not None and backfill.status in BULK_ACTION_TERMINAL_STATUSES

    wait_for(done, timeout=timeout, what=f"backfill {backfill_id} to finish", on_timeout=on_timeout)
    backfill = instance.get_backfill(backfill_id)
    assert backfill is not None
    return backfill.status


def object_intervals(instance: DagsterInstance) -> dict[str, tuple[str, float, float]]:
    """(run id, started, finished) of each object's latest load, from its materialization.

    The materialization's `started_at`/`finished_at` metadata are the load's own
    clock; without them, fall back to the event time minus `duration_s`.
    """
    latest: dict[str, tuple[str, float, float]] = {}
    records = instance.fetch_materializations(BRONZE, limit=1000, ascending=True).records
    for record in records:
        materialization = record.asset_materialization
        assert materialization is not None and record.partition_key is not None
        metadata = materialization.metadata
        if "started_at" in metadata and "finished_at" in metadata:
            started, finished = metadata["started_at"], metadata["finished_at"]
            assert isinstance(started, TimestampMetadataValue)
            assert isinstance(finished, TimestampMetadataValue)
            start, end = started.value, finished.value
        else:
            duration = metadata["duration_s"]
            assert isinstance(duration, FloatMetadataValue) and duration.value is not None
            end = record.timestamp
            start = end - duration.value
        latest[record.partition_key] = (record.run_id, start, end)
    return latest
