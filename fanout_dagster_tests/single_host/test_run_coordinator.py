"""One run per object at a time: the run queue (Dagster's queue daemon, with the
repo's run coordinator on a real instance) holds a run that shares an object
with a run in progress, or with a run launched ahead of it in the same pass,
whatever launched them; on SQLite and on PostgreSQL storage. The end-to-end
version is e2e/test_run_queue.py."""

from __future__ import annotations

import pytest
import yaml
from dagster import DagsterEvent, DagsterEventType, Definitions, instance_for_test
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import Placement, record_placements
from fanout_dagster.orchestration.tags import (
    CLUSTER_TAG,
    LOCK_TAG_PREFIX,
    OBJECT_LOCK_TAG_PREFIX,
    OBJECTS_TAG,
    RETRIES_TAG,
    RETRY_STRATEGY_TAG,
    TABLE_LOCK_TAG_PREFIX,
)
from fanout_dagster.single_host.run_coordinator import ClusterTaggingRunCoordinator
from fanout_dagster_tests.helpers import REPO_ROOT, keep_objects
from fanout_dagster_tests.orchestration.test_bronze import make_run, range_tags, without_workspace
from fanout_dagster_tests.postgres import STORAGES, storage_overrides
from fanout_dagster_tests.sensor_daemon import sensor_daemon

KEYS = ["erp-customers", "erp-products", "erp-stores", "erp-suppliers"]  # A B C D


def repo_queue(max_runs: int = 4, default_limit: int = 4) -> dict:
    """The repo's run coordinator config, with limits loose enough that only objects bind."""
    settings = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    coordinator = settings["run_coordinator"]
    coordinator["config"]["max_concurrent_runs"] = max_runs
    coordinator["config"]["tag_concurrency_limits"] = [
        {"key": CLUSTER_TAG, "value": "default", "limit": default_limit}
    ]
    return {"run_coordinator": coordinator}


@pytest.fixture(params=STORAGES)
def storage(request) -> str:
    """The queue's tests run on both storages (the queue daemon's query is the storage's)."""
    return request.param


@pytest.fixture
def queue_instance(dagster_storage):
    overrides = {**repo_queue(), **storage_overrides(dagster_storage)}
    with instance_for_test(overrides=overrides) as instance:
        instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, KEYS)
        yield instance


@pytest.fixture
def bronze_job(project, spark_resource):
    return Definitions(
        assets=[build_bronze_asset()], resources=project.resources(spark_resource)
    ).resolve_implicit_global_asset_job_def()


def submit(instance, job, tags):
    run = make_run(instance, job, tags)
    instance.run_coordinator.submit_run(without_workspace(run))
    return instance.get_run_by_id(run.run_id)


def sensor_pack(instance, job, keys):
    """A run as the sensor requests it: a range with its cluster and objects."""
    tags = {**range_tags(keys[0], keys[-1]), CLUSTER_TAG: "default", OBJECTS_TAG: ",".join(keys)}
    return submit(instance, job, tags)


def ui_backfill_pack(instance, job, start, end):
    """A run as a UI backfill creates it: partition range tags only."""
    return submit(instance, job, {**range_tags(start, end), BACKFILL_ID_TAG: "abcdefgh"})


def report(instance, run, event_type):
    instance.report_dagster_event(
        DagsterEvent(event_type_value=event_type.value, job_name=run.job_name), run_id=run.run_id
    )


def dequeue_pass(instance) -> list[str]:
    """The runs the queue daemon would launch now (its own selection, limits included)."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    runs = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    return [run.run_id for run in runs]


def lock_limits(instance, prefix: str) -> list[dict]:
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    return [lim for lim in limits if lim["key"].startswith(prefix)]


def test_every_bronze_run_gets_a_lock_tag_per_object_and_table(queue_instance, bronze_job):
    # Tables as the sensor records them (the repo's configs say the same).
    record_placements(
        queue_instance,
        {key: Placement("default", None, key.replace("-", "_")) for key in KEYS},
    )
    backfill = ui_backfill_pack(queue_instance, bronze_job, "erp-products", "erp-stores")
    assert backfill.status == DagsterRunStatus.QUEUED
    locks = {k: v for k, v in backfill.tags.items() if k.startswith(LOCK_TAG_PREFIX)}
    assert locks == {
        OBJECT_LOCK_TAG_PREFIX + "erp-products": "1",
        OBJECT_LOCK_TAG_PREFIX + "erp-stores": "1",
        TABLE_LOCK_TAG_PREFIX + "erp_products": "1",
        TABLE_LOCK_TAG_PREFIX + "erp_stores": "1",
    }
    assert backfill.tags[OBJECTS_TAG] == "erp-products,erp-stores"
    assert lock_limits(queue_instance, OBJECT_LOCK_TAG_PREFIX) == [
        {"key": OBJECT_LOCK_TAG_PREFIX + key, "limit": 1} for key in KEYS
    ]
    # Every table a queued run writes has a limit (registered when it was tagged).
    assert lock_limits(queue_instance, TABLE_LOCK_TAG_PREFIX) == [
        {"key": TABLE_LOCK_TAG_PREFIX + table, "limit": 1}
        for table in ["erp_products", "erp_stores"]
    ]
    # A partition added, or a table registered, later gets its limit at the next
    # look (the list is cached).
    queue_instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["hr-people"])
    assert {"key": OBJECT_LOCK_TAG_PREFIX + "hr-people", "limit": 1} in lock_limits(
        queue_instance, OBJECT_LOCK_TAG_PREFIX
    )
    ui_backfill_pack(queue_instance, bronze_job, "erp-customers", "erp-customers")
    assert {"key": TABLE_LOCK_TAG_PREFIX + "erp_customers", "limit": 1} in lock_limits(
        queue_instance, TABLE_LOCK_TAG_PREFIX
    )


def test_a_backfill_of_a_new_key_waits_for_a_run_writing_its_table(queue_instance, bronze_job):
    # erp-products' run writes erp_products; erp-suppliers now writes that table too
    # (the two configs swapped tables, say, while the run went on).
    record_placements(queue_instance, {"erp-products": Placement("default", None, "erp_products")})
    writing = sensor_pack(queue_instance, bronze_job, ["erp-products"])
    assert dequeue_pass(queue_instance) == [writing.run_id]
    report(queue_instance, writing, DagsterEventType.RUN_START)
    record_placements(queue_instance, {"erp-suppliers": Placement("default", None, "erp_products")})
    backfill = ui_backfill_pack(queue_instance, bronze_job, "erp-stores", "erp-suppliers")
    assert TABLE_LOCK_TAG_PREFIX + "erp_products" in backfill.tags
    assert dequeue_pass(queue_instance) == []
    report(queue_instance, writing, DagsterEventType.RUN_FAILURE)
    assert dequeue_pass(queue_instance) == [backfill.run_id]


def test_a_backfill_pack_waits_for_overlapping_sensor_runs(queue_instance, bronze_job):
    ab = sensor_pack(queue_instance, bronze_job, KEYS[:2])
    cd = sensor_pack(queue_instance, bronze_job, KEYS[2:])
    bc = ui_backfill_pack(queue_instance, bronze_job, KEYS[1], KEYS[2])  # shares B and C

    # One pass: the sensor's packs go (nothing shared between them); the
    # backfill pack is held by the packs launched ahead of it, though 4 runs
    # may run and the cluster allows 4.
    assert dequeue_pass(queue_instance) == [ab.run_id, cd.run_id]
    for run in (ab, cd):
        report(queue_instance, run, DagsterEventType.RUN_START)
    assert dequeue_pass(queue_instance) == []
    # A-B ends: C is still in the C-D run.
    report(queue_instance, ab, DagsterEventType.RUN_SUCCESS)
    assert dequeue_pass(queue_instance) == []
    report(queue_instance, cd, DagsterEventType.RUN_FAILURE)
    assert dequeue_pass(queue_instance) == [bc.run_id]

    # And the other way round: a sensor run waits for the backfill pack in progress.
    report(queue_instance, bc, DagsterEventType.RUN_START)
    c_alone = sensor_pack(queue_instance, bronze_job, ["erp-stores"])
    d_alone = sensor_pack(queue_instance, bronze_job, ["erp-suppliers"])
    assert dequeue_pass(queue_instance) == [d_alone.run_id]
    report(queue_instance, bc, DagsterEventType.RUN_SUCCESS)
    assert c_alone.run_id in dequeue_pass(queue_instance)


def test_a_renamed_object_waits_for_the_old_keys_run_on_its_table(
    queue_instance, project, monkeypatch
):
    """Two runs that write one bronze table never run at once, whatever their keys:
    an object renamed (new key, same table) while its old key's run goes on waits
    for it, as the sensor requests it through the daemon and the coordinator tags it."""
    keep_objects(project, ["erp-customers", "erp-stores"])
    objects_yaml = project.configs / "objects.yaml"
    with sensor_daemon(queue_instance, project, monkeypatch) as daemon:
        first = {run.tags["dagster/partition"]: run for run in daemon.tick()}
        assert sorted(first) == ["erp-customers", "erp-stores"]
        assert sorted(dequeue_pass(queue_instance)) == sorted(r.run_id for r in first.values())
        old = first["erp-customers"]
        report(queue_instance, old, DagsterEventType.RUN_START)
        report(queue_instance, first["erp-stores"], DagsterEventType.RUN_SUCCESS)

        # Renamed: a new key (a new partition) for the same table erp_customers.
        objects_yaml.write_text(
            objects_yaml.read_text().replace("name: customers", "name: clients")
        )
        [renamed] = daemon.tick()
        assert renamed.tags["dagster/partition"] == "erp-clients"
        assert renamed.status == DagsterRunStatus.QUEUED
        # erp_customers is being written by the old key's run: the new one waits...
        assert dequeue_pass(queue_instance) == []
        # ...until it ends.
        report(queue_instance, old, DagsterEventType.RUN_SUCCESS)
        assert dequeue_pass(queue_instance) == [renamed.run_id]


def test_backfill_runs_get_retry_tags_from_the_objects_retries(queue_instance, bronze_job):
    record_placements(
        queue_instance,
        {
            "erp-customers": Placement("default", 2, "erp_customers"),
            "erp-products": Placement("default", None, "erp_products"),
            "erp-stores": Placement("default", None, "erp_stores"),
            "erp-suppliers": Placement("default", 0, "erp_suppliers"),
        },
    )
    retried = ui_backfill_pack(queue_instance, bronze_job, "erp-customers", "erp-products")
    assert (retried.tags[RETRIES_TAG], retried.tags[RETRY_STRATEGY_TAG]) == ("2", "ALL_STEPS")
    # No object declares retries: the deployment's run_retries apply (no tag).
    plain = ui_backfill_pack(queue_instance, bronze_job, "erp-stores", "erp-stores")
    assert RETRIES_TAG not in plain.tags
    zero = ui_backfill_pack(queue_instance, bronze_job, "erp-suppliers", "erp-suppliers")
    assert zero.tags[RETRIES_TAG] == "0"


def test_tag_limits_under_concurrency_runs_are_refused():
    overrides = {
        **repo_queue(),
        "concurrency": {
            "runs": {"tag_concurrency_limits": [{"key": CLUSTER_TAG, "value": "x", "limit": 1}]}
        },
    }
    with (
        instance_for_test(overrides=overrides) as instance,
        pytest.raises(DagsterInvalidConfigError, match="run_coordinator: config"),
    ):
        instance.run_coordinator  # noqa: B018 - loading it is the check
    coordinator = ClusterTaggingRunCoordinator()
    with instance_for_test() as instance:
        coordinator.register_instance(instance)  # no such limits: fine
