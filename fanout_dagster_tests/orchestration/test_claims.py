"""Claims (orchestration/claims.py): what a bronze step holds in the instance's
concurrency store while it loads, so that the per-cluster caps and one run per
object and per table hold on a stock deployment too. On a real instance, on
SQLite and on PostgreSQL storage; steps hold their claims in threads or in
processes of their own, and every order is read from the event log."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Mapping, Sequence

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    instance_for_test,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.test_utils import create_run_for_test
from dagster._core.utils import make_new_run_id

from fanout_dagster.core.objects import ObjectConfig, load_objects
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.claims import (
    CLAIMS_METADATA,
    claim_in_order,
    cluster_pool,
    held_claims,
    lock_pool,
    step_claims,
)
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import Placement, record_placements
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.e2e.dagster_processes import wait_for
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS, keep_objects
from fanout_dagster_tests.postgres import STORAGES, storage_overrides

STEP = "bronze"
SAMPLES = load_objects(SAMPLE_CONFIGS).by_key()


@pytest.fixture(params=STORAGES)
def storage(request) -> str:
    """Claims run on both storages (the claim is one SQL statement of each)."""
    return request.param


def sample(key: str, *, table: str | None = None, cluster: str | None = None) -> ObjectConfig:
    """A sample object's config, optionally writing another table or on another cluster."""
    obj = SAMPLES[key]
    if table is not None:
        obj = obj.model_copy(update={"target": obj.target.model_copy(update={"table": table})})
    if cluster is not None:
        obj = obj.model_copy(update={"cluster": cluster})
    return obj


class Step(threading.Thread):
    """A step of a run of its own holding its claims until told to let go."""

    def __init__(
        self,
        instance: DagsterInstance,
        objects: Sequence[ObjectConfig],
        cluster_limits: Mapping[str, int] | None = None,
        status: DagsterRunStatus | None = None,
    ):
        super().__init__(daemon=True)
        self.instance = instance
        self.objects = objects
        self.cluster_limits = cluster_limits or {}
        self.dagster_run = create_run_for_test(instance, job_name="__ASSET_JOB", status=status)
        self.holding = threading.Event()
        self.let_go = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with held_claims(
                self.instance, self.dagster_run, STEP, self.objects, self.cluster_limits
            ):
                self.holding.set()
                self.let_go.wait(300)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.let_go.set()
        self.join(120)
        assert not self.is_alive() and self.error is None, self.error

    @property
    def run_id(self) -> str:
        return self.dagster_run.run_id


def claim_events(instance: DagsterInstance, run_id: str) -> list[EventLogEntry]:
    """The claim events of a run (waiting, held, released), in the order stored."""
    return [
        entry
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if entry.dagster_event is not None
        and CLAIMS_METADATA in (entry.dagster_event.engine_event_data.metadata or {})
    ]


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [entry.dagster_event.message or "" for entry in claim_events(instance, run_id)]  # type: ignore[union-attr]


def logged_at(instance: DagsterInstance, run_id: str, prefix: str) -> float:
    """When a run logged its first claim event whose message starts with `prefix`."""
    return next(
        entry.timestamp
        for entry in claim_events(instance, run_id)
        if (entry.dagster_event.message or "").startswith(prefix)  # type: ignore[union-attr]
    )


def wait_for_message(instance: DagsterInstance, run_id: str, prefix: str) -> str:
    def logged() -> str | None:
        return next((m for m in messages(instance, run_id) if m.startswith(prefix)), None)

    message = wait_for(
        logged,
        120,
        f"run {run_id[:8]} to log {prefix!r}",
        interval=0.2,
        on_timeout=lambda: "\n".join(messages(instance, run_id)),
    )
    assert message is not None
    return message


def holders(instance: DagsterInstance, pool: str) -> list[str]:
    return [
        slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots
    ]


# --------------------------------------------------------------------------- the claim itself


ATTEMPTS = 10


def _claim_at_once(ref, run_id: str, ready, results) -> None:
    """In a process of its own: at each attempt, claim that attempt's lock with the others."""
    with DagsterInstance.from_ref(ref) as instance:
        storage = instance.event_log_storage
        for attempt in range(ATTEMPTS):
            pool = lock_pool(f"object/erp-orders-{attempt}")
            storage.get_concurrency_info(pool)  # connected before the start
            ready.wait(300)
            results.put((attempt, run_id, claim_in_order(storage, [pool], run_id, STEP) == 1))


def test_a_lock_claimed_by_many_processes_at_the_same_instant_has_one_holder(instance):
    """6 processes claim one free lock at once, 10 times over: one of them holds it.
    (Dagster's own claim_concurrency_slot lets two or three through most times.)"""
    context = multiprocessing.get_context("spawn")  # no fork of this process's threads
    processes = 6
    pools = [lock_pool(f"object/erp-orders-{attempt}") for attempt in range(ATTEMPTS)]
    for pool in pools:
        instance.event_log_storage.set_concurrency_slots(pool, 1)
    ready, results = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(
            target=_claim_at_once, args=(instance.get_ref(), f"run-{i}", ready, results)
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[int, list[str]] = {attempt: [] for attempt in range(ATTEMPTS)}
    try:
        for _attempt in range(ATTEMPTS):
            ready.wait(600)  # every process is at the start line
            for _ in workers:
                got, run_id, won = results.get(timeout=120)
                if won:
                    outcomes[got].append(run_id)
    finally:
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
    for attempt, pool in enumerate(pools):
        assert len(outcomes[attempt]) == 1, outcomes
        assert holders(instance, pool) == outcomes[attempt]


def test_claims_come_in_one_order_whatever_the_pack_order():
    pack = [sample("erp-stores"), sample("crm-web_events"), sample("erp-customers")]
    expected = [
        lock_pool("object/crm-web_events"),
        lock_pool("object/erp-customers"),
        lock_pool("object/erp-stores"),
        lock_pool("table/crm_web_events"),
        lock_pool("table/erp_customers"),
        lock_pool("table/erp_stores"),
        cluster_pool("default"),
        cluster_pool("heavy"),
    ]
    assert step_claims(pack) == expected
    assert step_claims(list(reversed(pack))) == expected
    assert expected[0] == "fanout-object-crm-web_events"  # no '/': pools are in the UI's URLs


# --------------------------------------------------------------------------- waiting


def test_a_pack_waits_for_the_run_holding_one_of_its_objects_and_says_which(instance):
    first = Step(instance, [sample("erp-products")])
    first.start()
    assert first.holding.wait(120), first.error
    pack = Step(instance, [sample("erp-products"), sample("erp-stores")])
    pack.start()
    waiting = wait_for_message(instance, pack.run_id, "Waiting for")
    assert waiting == f"Waiting for object erp-products (in use by run {first.run_id[:8]})"
    assert not pack.holding.is_set()
    # A pack waiting holds nothing later in the order than what it waits for.
    assert holders(instance, lock_pool("object/erp-stores")) == []

    first.finish()
    assert pack.holding.wait(120), pack.error
    assert holders(instance, lock_pool("object/erp-products")) == [pack.run_id]
    pack.finish()
    # Held after the first run released, as the event log records them.
    assert logged_at(instance, first.run_id, "Claims released") <= logged_at(
        instance, pack.run_id, "Claims held"
    )
    assert holders(instance, lock_pool("object/erp-products")) == []


def test_packs_over_the_same_objects_in_opposite_orders_both_finish(instance):
    """Each pack takes its claims in the global order, so neither holds one the
    other needs while waiting for one the other holds."""
    keys = ["erp-customers", "erp-products", "erp-stores", "erp-suppliers"]
    for _ in range(5):
        forward = Step(instance, [sample(key) for key in keys])
        backward = Step(instance, [sample(key) for key in reversed(keys)])
        forward.start()
        backward.start()
        pair = (forward, backward)

        def holding(pair: tuple[Step, Step] = pair) -> Step | None:
            return next((step for step in pair if step.holding.is_set()), None)

        first = wait_for(holding, 120, "one pack to hold its claims", interval=0.05)
        assert first is not None
        other = backward if first is forward else forward
        assert not other.holding.is_set()
        first.finish()
        assert other.holding.wait(120), other.error
        other.finish()


def test_a_run_locks_the_table_of_the_config_it_loads_not_the_one_recorded_at_queueing(
    instance, project, spark_resource
):
    """The gap the run queue leaves: tables are locked when a run is queued, from what
    the sensor recorded, but a run loads its objects' newest configs when it starts.
    erp-suppliers was recorded writing erp_suppliers; its config now writes
    erp_products, which another run is writing: the bronze step must wait for it,
    and load only once that run has let go."""
    # erp-products' config is gone (two configs may not write one table), its run goes on.
    keep_objects(project, ["erp-suppliers"])
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-products", "erp-suppliers"])
    record_placements(
        instance,
        {
            "erp-products": Placement("default", None, "erp_products"),
            "erp-suppliers": Placement("default", None, "erp_suppliers"),
        },
    )
    objects_yaml = project.configs / "objects.yaml"
    objects_yaml.write_text(
        objects_yaml.read_text().replace("table: erp_suppliers", "table: erp_products")
    )
    writing = Step(instance, [sample("erp-products")])
    writing.start()
    assert writing.holding.wait(120), writing.error

    job = Definitions(
        assets=[build_bronze_asset()], resources=project.resources(spark_resource)
    ).resolve_implicit_global_asset_job_def()
    run_id = make_new_run_id()
    outcome: dict = {}

    def execute() -> None:
        result = job.execute_in_process(
            instance=instance,
            partition_key="erp-suppliers",
            run_id=run_id,
            tags={OBJECTS_TAG: "erp-suppliers", CLUSTER_TAG: "default"},
        )
        outcome["success"] = result.success

    step = threading.Thread(target=execute, daemon=True)
    step.start()
    waiting = wait_for_message(instance, run_id, "Waiting for")
    assert waiting == f"Waiting for table erp_products (in use by run {writing.run_id[:8]})"
    assert instance.get_materialized_partitions(build_bronze_asset().key) == set()

    writing.finish()
    step.join(300)
    assert outcome == {"success": True}
    released = logged_at(instance, writing.run_id, "Claims released")
    assert released <= logged_at(instance, run_id, "Claims held")
    [materialization] = instance.fetch_materializations(build_bronze_asset().key, limit=5).records
    assert materialization.partition_key == "erp-suppliers"
    assert materialization.timestamp > released
    metadata = materialization.asset_materialization.metadata
    assert metadata["dagster/table_name"].value.endswith("erp_products")


# --------------------------------------------------------------------------- cluster slots


def test_a_cluster_takes_as_many_steps_as_its_limit_and_says_who_holds_it(instance):
    limits = {"heavy": 1}
    running = Step(instance, [sample("crm-web_events")], limits)
    running.start()
    assert running.holding.wait(120), running.error
    info = instance.event_log_storage.get_concurrency_info(cluster_pool("heavy"))
    assert (info.limit, [slot.run_id for slot in info.claimed_slots]) == (1, [running.run_id])

    # Another object of the heavy cluster waits for the slot; one of the default
    # cluster (no limit configured: no slot to claim) does not.
    second = Step(instance, [sample("erp-inventory")], limits)
    second.start()
    waiting = wait_for_message(instance, second.run_id, "Waiting for")
    assert waiting == f"Waiting for cluster heavy (1 of 1 in use by run {running.run_id[:8]})"
    other = Step(instance, [sample("erp-orders")], limits)
    other.start()
    assert other.holding.wait(120), other.error
    assert messages(instance, other.run_id)[0].endswith("; without a limit: cluster default")
    other.finish()

    running.finish()
    assert second.holding.wait(120), second.error
    second.finish()


def test_a_cluster_limit_changed_on_the_concurrency_page_stands_until_the_config_changes(
    instance,
):
    pool = cluster_pool("heavy")
    store = instance.event_log_storage
    step = Step(instance, [sample("crm-web_events")], {"heavy": 1})
    step.start()
    step.holding.wait(120)
    step.finish()
    assert store.get_concurrency_info(pool).limit == 1

    store.set_concurrency_slots(pool, 3)  # what the UI's Concurrency page does
    step = Step(instance, [sample("crm-web_events")], {"heavy": 1})
    step.start()
    step.holding.wait(120)
    step.finish()
    assert store.get_concurrency_info(pool).limit == 3

    step = Step(instance, [sample("crm-web_events")], {"heavy": 2})  # the config changed
    step.start()
    step.holding.wait(120)
    step.finish()
    assert store.get_concurrency_info(pool).limit == 2


def test_a_lock_is_one_holder_whatever_its_pool_was_set_to(instance):
    pool = lock_pool("object/erp-stores")
    instance.event_log_storage.set_concurrency_slots(pool, 4)
    first = Step(instance, [sample("erp-stores")])
    first.start()
    first.holding.wait(120)
    assert instance.event_log_storage.get_concurrency_info(pool).limit == 1
    second = Step(instance, [sample("erp-stores")])
    second.start()
    wait_for_message(instance, second.run_id, "Waiting for object erp-stores")
    first.finish()
    assert second.holding.wait(120), second.error
    second.finish()


@pytest.mark.parametrize("where", ["concurrency", "run_coordinator"])
def test_cluster_limits_default_to_the_run_queue_limits_of_dagster_yaml(where, dagster_storage):
    """Without a configured limit, a cluster's pool takes its `fanout/cluster` limit
    from the run queue: the stock `concurrency: runs:` section, or the queued run
    coordinator's own config (the accelerated dagster.yaml)."""
    limits = [{"key": CLUSTER_TAG, "value": "heavy", "limit": 2}]
    if where == "concurrency":
        queue: dict = {"concurrency": {"runs": {"tag_concurrency_limits": limits}}}
    else:
        queue = {
            "run_coordinator": {
                "module": "dagster._core.run_coordinator",
                "class": "QueuedRunCoordinator",
                "config": {"tag_concurrency_limits": limits},
            }
        }
    with instance_for_test(overrides={**queue, **storage_overrides(dagster_storage)}) as instance:
        step = Step(instance, [sample("crm-web_events")])
        step.start()
        step.holding.wait(120)
        step.finish()
        info = instance.event_log_storage.get_concurrency_info(cluster_pool("heavy"))
        assert info.limit == 2


def test_claims_are_released_when_the_step_fails(instance):
    run = create_run_for_test(instance, job_name="__ASSET_JOB")
    with (
        pytest.raises(RuntimeError, match="load failed"),
        held_claims(instance, run, STEP, [sample("erp-stores")], {"default": 1}),
    ):
        assert holders(instance, cluster_pool("default")) == [run.run_id]
        raise RuntimeError("load failed")
    assert holders(instance, cluster_pool("default")) == []
    assert holders(instance, lock_pool("object/erp-stores")) == []
    assert messages(instance, run.run_id)[-1] == "Claims released"
