"""Claims: what a bronze step holds in the Dagster instance's concurrency store
while its objects load, so that the per-cluster caps and "one run per object,
and per bronze table, at a time" hold on any deployment.

Stock Dagster (its QueuedRunCoordinator and DefaultRunLauncher, or the
Kubernetes, ECS and Dagster+ launchers, where no custom class can be
configured) gives a UI backfill's runs only partition tags, so its run queue
cannot see their cluster or objects, and a pool declared on the asset is one
pool for every partition. The step therefore claims, before any of its objects
starts and in this order (the same for every step: a step waits only for
claims later in the order than those it holds, so two packs never wait for
each other in a circle):

1. one lock per object it loads: pool `fanout-object-<key>`, limit 1;
2. one lock per bronze table those objects write: pool `fanout-table-<table>`,
   limit 1. The tables are those of the configs the step loads now, so an
   object whose table changed while its run waited in the queue locks the
   table it will really write;
3. one slot of each cluster its objects name: pool `fanout-cluster-<cluster>`.
   Last in the order: a step holds a cluster slot only once it can work.

The lock names are locks.py's (`object/<key>`, `table/<table>`). A cluster's
limit is the deployment's (`cluster_limits`: the setting FANOUT_CLUSTER_LIMITS
or the component's attribute), else the `fanout/cluster` tag limit of the
instance's run queue (dagster.yaml), else the pool is uncapped. A configured
limit is applied to the pool when it differs from the one last applied, so a
limit changed on the UI's Concurrency page stands until the configuration
changes.

The claims are released when the step's loading ends, however it ends. A run
whose worker died keeps them until Dagster's run monitoring frees the claims
of ended runs (`run_monitoring: free_slots_after_run_end_seconds` in
dagster.yaml). While a step waits, its run is STARTED and its log says what it
waits for and which run holds it.

Where the claims are taken: in the process that drives the loading, before the
work starts: the local object loader (orchestration/resources/object_loader.py),
the Pipes loader (databricks/pipes.py), and, under the dagster-databricks step
launcher, the launching process before it submits the step
(databricks/step_launcher.py); the remote side of that step sees a stand-in
instance and claims nothing.

Why not Dagster's own `claim_concurrency_slot`: it registers a claim and
assigns it a slot in separate statements, so steps of several processes that
claim one free slot at the same instant can all be assigned it (8 processes,
a lock of limit 1, on SQLite: 9 trials in 15 had two or three holders). On SQL
storages (SQLite, PostgreSQL, MySQL) a claim here is one conditional UPDATE of
a free slot row (`... WHERE run_id IS NULL`), which exactly one writer wins,
and an attempt claims every pool it can in one connection (one transaction on
SQLite); Dagster's bookkeeping (pending steps, freeing by run or step, run
monitoring's sweep, the Concurrency page) sees the same rows. Other storages
(Dagster+'s) get their own `claim_concurrency_slot`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as db
from dagster import DagsterInstance, MetadataValue
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import EngineEventData
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRun
from dagster._core.storage.event_log.base import ConcurrencyKeyInfo, EventLogStorage
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable as _slots
from dagster._core.storage.event_log.schema import PendingStepsTable as _pending
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

from fanout_dagster.core.objects import ObjectConfig, load_objects
from fanout_dagster.orchestration.locks import OBJECT_LOCK, TABLE_LOCK, run_locks
from fanout_dagster.orchestration.tags import CLUSTER_TAG

POOL_PREFIX = "fanout-"
CLUSTER_POOL_PREFIX = POOL_PREFIX + "cluster-"
# The limit last applied to a cluster pool from the configuration (key-value store).
_APPLIED_PREFIX = "fanout_dagster/pool-limit/"
# Metadata label of the claim events (the tests read the hold intervals from them).
CLAIMS_METADATA = "fanout/claims"
FIRST_POLL_S = 0.5
MAX_POLL_S = 2.0


def lock_pool(lock: str) -> str:
    """`object/erp-orders` -> `fanout-object-erp-orders` (no '/': the UI puts pools in URLs)."""
    return POOL_PREFIX + lock.replace("/", "-", 1)


def cluster_pool(cluster: str) -> str:
    return CLUSTER_POOL_PREFIX + cluster


def step_claims(objects: Sequence[ObjectConfig]) -> list[str]:
    """The pools a step over these objects claims, in the global order."""
    locks = run_locks([obj.key for obj in objects], {obj.key: obj.target.table for obj in objects})
    object_locks = sorted(lock for lock in locks if lock.startswith(OBJECT_LOCK))
    table_locks = sorted(lock for lock in locks if lock.startswith(TABLE_LOCK))
    clusters = sorted({obj.cluster for obj in objects})
    return [lock_pool(lock) for lock in object_locks + table_locks] + [
        cluster_pool(cluster) for cluster in clusters
    ]


def describe(pool: str) -> str:
    """`fanout-table-erp_orders` -> `table erp_orders`, for log lines."""
    kind, _, name = pool.removeprefix(POOL_PREFIX).partition("-")
    return f"{kind} {name}"


@dataclass
class StepClaims:
    """The claims of one step of one run (see the module docstring)."""

    instance: DagsterInstance
    run: DagsterRun
    step_key: str
    cluster_limits: Mapping[str, int]

    @property
    def storage(self) -> EventLogStorage:
        return self.instance.event_log_storage

    def take(self, pools: Sequence[str]) -> None:
        """Claim every pool, in order, waiting for each until it is free."""
        started = time.monotonic()
        limits = self._limits(pools)
        capped = [pool for pool in pools if limits[pool] is not None]
        self._wait_for(capped)
        uncapped = [describe(pool) for pool in pools if limits[pool] is None]
        waited = time.monotonic() - started
        self._event(
            f"Claims held ({waited:.1f} s to take): "
            + ", ".join(describe(pool) for pool in capped)
            + (f"; without a limit: {', '.join(uncapped)}" if uncapped else ""),
            capped,
        )

    def release(self, pools: Sequence[str]) -> None:
        # Said before it is done: the log's hold intervals lie within the real ones.
        try:
            self._event("Claims released", list(pools))
        finally:
            self.storage.free_concurrency_slot_for_step(self.run.run_id, self.step_key)

    # ------------------------------------------------------------------ limits

    def _limits(self, pools: Sequence[str]) -> dict[str, int | None]:
        """Each pool's limit, after applying the configured ones; None: uncapped."""
        for pool in pools:
            if pool.startswith(CLUSTER_POOL_PREFIX):
                self._apply_cluster_limit(pool)
        infos = self.storage.get_concurrency_infos(list(pools))
        limits: dict[str, int | None] = {}
        for pool in pools:
            if pool.startswith(CLUSTER_POOL_PREFIX):
                limits[pool] = _own_limit(infos[pool])
            else:
                if infos[pool].slot_count != 1 or _own_limit(infos[pool]) != 1:
                    _set_slots(self.storage, pool, 1)  # a lock: one holder, whatever was set
                limits[pool] = 1
        return limits

    def _apply_cluster_limit(self, pool: str) -> None:
        cluster = pool.removeprefix(CLUSTER_POOL_PREFIX)
        configured = self.cluster_limits.get(cluster)
        if configured is None:
            configured = run_queue_cluster_limits(self.instance).get(cluster)
        if configured is None:
            return
        record = _APPLIED_PREFIX + pool
        applied = self.instance.run_storage.get_cursor_values({record}).get(record)
        if applied != str(configured):
            _set_slots(self.storage, pool, configured)
            self.instance.run_storage.set_cursor_values({record: str(configured)})

    # ------------------------------------------------------------------ waiting

    def _wait_for(self, pools: Sequence[str]) -> None:
        """Claim the pools in order: as many as are free at each attempt, then wait for
        the first that is not, saying who holds it."""
        shown: tuple[str, tuple[str, ...]] | None = None
        poll = FIRST_POLL_S
        # Terminating the run interrupts the wait (the caller releases what it holds).
        with raise_execution_interrupts():
            while (
                held := claim_in_order(self.storage, pools, self.run.run_id, self.step_key)
            ) < len(pools):
                pool = pools[held]
                info = self.storage.get_concurrency_info(pool)
                holders = tuple(sorted({slot.run_id for slot in info.claimed_slots}))
                if (pool, holders) != shown:
                    shown = (pool, holders)
                    self._event(self._waiting_message(pool, info, holders), [pool])
                time.sleep(poll)
                poll = min(poll * 1.5, MAX_POLL_S)

    def _waiting_message(
        self, pool: str, info: ConcurrencyKeyInfo, holders: tuple[str, ...]
    ) -> str:
        what = describe(pool)
        if not holders:
            return f"Waiting for {what} (limit {info.limit}, set on the Concurrency page as {pool})"
        ended = []
        for run_id in holders:
            holder = self.instance.get_run_by_id(run_id)
            if holder is not None and holder.status in FINISHED_STATUSES:
                ended.append(f"{run_id[:8]} ended {holder.status.value}")
        note = (
            f"; {', '.join(ended)}: run monitoring frees the claims of ended runs "
            "(free_slots_after_run_end_seconds)"
            if ended
            else ""
        )
        runs = ", ".join(run_id[:8] for run_id in holders)
        if pool.startswith(CLUSTER_POOL_PREFIX):
            return (
                f"Waiting for {what} ({len(info.claimed_slots)} of {info.limit} in use by "
                f"run {runs}{note})"
            )
        return f"Waiting for {what} (in use by run {runs}{note})"

    def _event(self, message: str, pools: Sequence[str]) -> None:
        self.instance.report_engine_event(
            message,
            self.run,
            EngineEventData(metadata={CLAIMS_METADATA: MetadataValue.json(list(pools))}),
            step_key=self.step_key,
        )


@contextmanager
def held_claims(
    instance: DagsterInstance,
    run: DagsterRun,
    step_key: str,
    objects: Sequence[ObjectConfig],
    cluster_limits: Mapping[str, int],
) -> Iterator[None]:
    """Hold the claims of a step over these objects (as loaded now) while the block runs."""
    if not objects or not instance.event_log_storage.supports_global_concurrency_limits:
        # No objects to load, or an instance without a concurrency store (an
        # in-memory one, as on the remote side of a step): nothing to hold.
        yield
        return
    claims = StepClaims(instance, run, step_key, cluster_limits)
    pools = step_claims(objects)
    try:
        claims.take(pools)
        yield
    finally:
        claims.release(pools)


def configs_of(configs_dir: str, keys: Sequence[str]) -> list[ObjectConfig]:
    """The valid configs of these keys in a configs folder (a run's snapshot of it)."""
    by_key = load_objects(configs_dir).by_key()
    return [by_key[key] for key in keys if key in by_key]


def run_queue_cluster_limits(instance: DagsterInstance) -> dict[str, int]:
    """Per-cluster limits of the instance's run queue (dagster.yaml): the `fanout/cluster`
    entries of `concurrency: runs: tag_concurrency_limits`, else of the queued run
    coordinator's own `tag_concurrency_limits`."""
    runs = (instance.get_settings("concurrency") or {}).get("runs") or {}
    entries = runs.get("tag_concurrency_limits")
    if entries is None:
        coordinator = instance.run_coordinator
        data = coordinator.inst_data if isinstance(coordinator, QueuedRunCoordinator) else None
        entries = (data.config_dict if data else {}).get("tag_concurrency_limits")
    return {
        entry["value"]: entry["limit"]
        for entry in entries or []
        if entry.get("key") == CLUSTER_TAG and isinstance(entry.get("value"), str)
    }


# --------------------------------------------------------------------------- the store


def _own_limit(info: ConcurrencyKeyInfo) -> int | None:
    """The pool's limit, or None when it has none (not even Dagster's default pool limit)."""
    if info.limit is None:
        return None
    if info.using_default_limit and info.slot_count < info.limit:
        return None  # `concurrency: pools: default_limit` shown for a pool never set up
    return info.limit


def _set_slots(storage: EventLogStorage, pool: str, limit: int) -> None:
    """Set a pool's limit. Two steps may set up one new pool at once: the store's unique
    limit row lets one through and fails the other, which then finds it set up."""
    try:
        storage.set_concurrency_slots(pool, limit)
    except Exception:  # noqa: BLE001 - the other writer won; check what it left
        info = storage.get_concurrency_info(pool)
        if info.slot_count != limit:
            storage.set_concurrency_slots(pool, limit)


def _sql_storage(storage: Any) -> SqlEventLogStorage | None:
    for _ in range(3):  # a legacy wrapper holds the composite storage's event log storage
        if isinstance(storage, SqlEventLogStorage):
            return storage
        inner = getattr(storage, "_storage", None)
        storage = getattr(inner, "event_log_storage", inner)
        if storage is None:
            return None
    return None


def claim_in_order(
    storage: EventLogStorage, pools: Sequence[str], run_id: str, step_key: str
) -> int:
    """One attempt to hold the pools, in order, for this step: returns how many of the
    first pools it holds (all of them, or up to the first that has no free slot)."""
    sql = _sql_storage(storage)
    if sql is None:
        held = 0
        while held < len(pools) and (
            storage.claim_concurrency_slot(pools[held], run_id, step_key).is_claimed
        ):
            held += 1
        return held
    try:
        with sql.index_connection() as conn:  # one transaction on SQLite
            held = _compare_and_set(conn, pools, run_id, step_key)
            _register_pending(conn, pools, held, run_id, step_key)
            return held
    except db.exc.OperationalError:
        # SQLite: two writers' transactions met ("database is locked"), and this one
        # was rolled back. Try again later.
        return 0


def _compare_and_set(conn: Any, pools: Sequence[str], run_id: str, step_key: str) -> int:
    """Take a free slot row of each pool in turn with one conditional UPDATE, which
    exactly one of several writers wins (see the module doc); stop at the first pool
    without one. Slots this step holds already count as taken."""
    mine = set(
        conn.scalars(
            db.select(_slots.c.concurrency_key).where(
                db.and_(_slots.c.run_id == run_id, _slots.c.step_key == step_key)
            )
        )
    )
    for held, pool in enumerate(pools):
        if pool in mine:
            continue
        free = db.and_(
            _slots.c.concurrency_key == pool,
            _slots.c.run_id.is_(None),
            _slots.c.deleted == False,  # noqa: E712 - SQL, not Python
        )
        free_ids = conn.scalars(db.select(_slots.c.id).where(free)).all()
        if not any(
            conn.execute(
                _slots.update()
                .where(db.and_(_slots.c.id == slot_id, free))
                .values(run_id=run_id, step_key=step_key)
            ).rowcount
            == 1
            for slot_id in free_ids
        ):
            return held
    return len(pools)


def _register_pending(
    conn: Any, pools: Sequence[str], held: int, run_id: str, step_key: str
) -> None:
    """Record the step on each pool it holds (assigned) and on the one it waits for, as
    Dagster's own claims do: run monitoring finds the runs whose claims to free there,
    and the Concurrency page lists who holds and who waits."""
    registered = set(
        conn.scalars(
            db.select(_pending.c.concurrency_key).where(
                db.and_(_pending.c.run_id == run_id, _pending.c.step_key == step_key)
            )
        )
    )
    now = db.func.now()
    rows = [
        {
            "concurrency_key": pool,
            "run_id": run_id,
            "step_key": step_key,
            "priority": 0,
            "assigned_timestamp": now if index < held else None,
        }
        for index, pool in enumerate(pools[: held + 1])
        if pool not in registered
    ]
    if rows:
        conn.execute(_pending.insert().values(rows))
