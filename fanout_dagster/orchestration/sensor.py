"""The object sensor: configs/ -> `objects` partitions and runs.

Each tick reads the configs folder and
- adds a partition for every new valid object;
- requests a run for every object that needs one, for any of three triggers:
  - `config`: its config content hash differs from the one it settled on (new
    or changed; an unchanged config never re-runs);
  - `schedule`: its `schedule` (cron, UTC) has ticked since the tick last
    handled. A tick is noticed within one sensor interval; ticks missed while
    the sensor was off make one run, not one per tick;
  - `files`: its source is watched (`source.watch`) and the listing of its
    files (names, sizes, modification times) changed (source_watch.py);
- packs the objects that need a run as before: consecutive partitions of one
  cluster (and one `retries`), up to `objects_per_run` a run;
- creates at most `max_runs_per_tick` runs; the rest wait for the next tick;
- records each requested object's cluster, retries and table for the run
  coordinator (placement.py), registers its table's lock (locks.py), and sets
  Dagster's run retry tags from the objects' `retries`;
- reports every invalid file with its field, and every watch that cannot be
  listed, without holding back the other objects.

What an object "settled on" is what ran: when a run created after the sensor's
request loads the object (its materialization carries the config hash it
loaded, which is the newest valid config when the run started), that hash is
recorded, not the one requested. Run keys are key + generation + hash for
config changes, key + cron tick for schedules, key + listing + tick for files.
Dagster skips run keys a sensor has used before, so a key must never come
back for a new reason to run: the generation grows with every config change
(A -> B -> A runs again), and an object without state (new, or added back
after its state was pruned: A -> removed -> A) starts at the tick's number,
above any generation it had (tick numbers never go back: object_state.py).
A tick redone after a crash has the same number and makes the same keys.

Per-object state lives in the instance's key-value store (object_state.py),
one entry per object, read in one query a tick and written only for objects
that changed; the cursor holds a tick number and an event watermark only.

A config that disappears stops being scheduled and its sensor state is pruned
(one log line for all of them); its partition and its bronze table stay
(nothing is deleted automatically: history and data are kept). Objects whose
file is invalid keep their state until the file is fixed.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fanout_dagster.core.objects import ConfigError, ObjectConfig
from fanout_dagster.core.source_watch import SourceWatcher, WatchError
from fanout_dagster.orchestration.locks import register_locks, table_lock
from fanout_dagster.orchestration.object_state import ObjectState, ObjectStateStore, SensorCursor
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import (
    Placement,
    forget_placements,
    record_placements,
    retry_tags,
)
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.tags import CLUSTER_TAG, CONFIG_HASH_TAG, OBJECTS_TAG, TRIGGER_TAG

# Enough to keep the run queue busy between ticks (it runs a handful at a
# time), small enough that a tick takes seconds, not minutes, at 10k objects.
DEFAULT_MAX_RUNS_PER_TICK = 100
# Bronze materializations a tick reads to learn what ran; more wait for the next.
MAX_LOADS_PER_TICK = 10_000
_LOADS_PAGE = 1_000
SENSOR_INTERVAL_S = 15
BRONZE = AssetKey("bronze")

CONFIG, SCHEDULE, FILES = "config", "schedule", "files"
# The listing of a watched source that could not be listed yet.
UNLISTED = "-"


@dataclass(frozen=True)
class Planned:
    """An object that needs a run this tick, and why."""

    obj: ObjectConfig
    triggers: tuple[str, ...]
    generation: int
    schedule_tick: int | None
    files: str | None
    tick: int

    @property
    def key(self) -> str:
        return self.obj.key

    @property
    def run_key(self) -> str:
        """This object's part of a run key: unique per reason to run, stable when a tick is redone."""
        obj = self.obj
        if self.triggers == (CONFIG,):
            # The first generation keeps the plain key:hash form.
            if self.generation <= 1:
                return f"{obj.key}:{obj.config_hash}"
            return f"{obj.key}:{self.generation}:{obj.config_hash}"
        parts = []
        if CONFIG in self.triggers:
            parts.append(f"{self.generation}:{obj.config_hash}")
        if SCHEDULE in self.triggers:
            parts.append(f"at{self.schedule_tick}")
        if FILES in self.triggers:
            parts.append(f"files{(self.files or '')[:12]}.{self.tick}")
        return f"{obj.key}:" + "+".join(parts)


def build_object_sensor(
    objects_per_run: int = 1,
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK,
    clock: Callable[[], float] = time.time,
    workspace_client: Callable[[], Any] | None = None,
) -> SensorDefinition:
    """The object sensor. `clock` gives the time cron ticks are compared with;
    `workspace_client` makes the Databricks client for watched /Volumes roots
    (default: databricks-sdk's WorkspaceClient() with its usual credentials)."""

    @sensor(
        name="object_configs_sensor",
        asset_selection=AssetSelection.assets("bronze"),
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a partition per object config and runs new or changed objects, "
        "objects whose schedule ticked and watched objects whose files changed.",
    )
    def object_configs_sensor(
        context: SensorEvaluationContext, object_configs: ObjectConfigs
    ) -> SensorResult:
        return evaluate(
            context,
            object_configs,
            objects_per_run,
            max_runs_per_tick,
            now=clock(),
            workspace_client=workspace_client,
        )

    return object_configs_sensor


def evaluate(
    context: SensorEvaluationContext,
    object_configs: ObjectConfigs,
    objects_per_run: int,
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK,
    now: float | None = None,
    workspace_client: Callable[[], Any] | None = None,
) -> SensorResult:
    now = time.time() if now is None else now
    load = object_configs.load()
    errors: list[ConfigError] = list(load.errors)
    instance = context.instance
    cursor = SensorCursor.parse(context.cursor)

    existing = list(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))
    # New partitions go in grouped by cluster, so the contiguous ranges a
    # packed backfill takes tend to stay on one cluster.
    ordered = sorted(load.objects, key=lambda obj: (obj.cluster, obj.key))
    existing_keys = set(existing)
    new_keys = [obj.key for obj in ordered if obj.key not in existing_keys]
    if new_keys:
        # Added here in one insert rather than returned as a
        # DynamicPartitionsRequest: the sensor daemon checks a request's keys
        # one query at a time (~2 ms each on SQLite, 20 s for 10,000 keys),
        # and adding them up front also holds if the tick fails later on.
        instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, new_keys)
        context.log.info(f"added {len(new_keys)} partition(s): {_some(new_keys)}")
    order = [*existing, *new_keys]

    # Every partition's state (removed objects' too), in one query.
    store = ObjectStateStore(instance)
    states = store.read(order, cursor_tick=cursor.tick)
    tick = store.committed_tick + 1  # never a number an earlier tick used for other work
    previous = dict(states)
    changed: dict[str, ObjectState] = {}
    for key, legacy in cursor.legacy.items():  # a cursor of the first format
        if key not in states:
            states[key] = changed[key] = legacy

    # What ran since the last tick: the config hash each load actually used.
    events = cursor.events
    if events is None:
        events = instance.event_log_storage.get_maximum_record_id() or 0
    loads, events = _recent_loads(instance, events)
    _settle_loads(instance, loads, states, changed)

    # Who needs a run, and why.
    watcher = SourceWatcher(object_configs.data_root_path, workspace_client)
    watched = [(obj.key, obj.source) for obj in ordered if obj.source.watch]
    listings = watcher.fingerprints(watched) if watched else {}
    cron_ticks: dict[str, int] = {}
    to_run: dict[str, Planned] = {}
    # Objects whose placement records need writing without a run (see _without_run).
    to_place: list[ObjectConfig] = []
    for obj in ordered:
        state = states.get(obj.key)
        schedule_tick = _latest_cron_tick(obj.schedule, now, cron_ticks) if obj.schedule else None
        files: str | None = None
        if obj.source.watch:
            listing = listings[obj.key]
            if isinstance(listing, WatchError):
                errors.append(
                    ConfigError(obj.config_file, f"{obj.key}: source.watch", str(listing))
                )
                # Keep the last listing; without one, the first listing that
                # works will differ, and run the object.
                files = state.files if state is not None and state.files else UNLISTED
            else:
                files = listing
        planned = _plan_object(obj, state, schedule_tick, files, tick)
        if planned is not None:
            to_run[obj.key] = planned
        elif state is not None:
            settled = _without_run(obj, state, schedule_tick, files)
            if settled != state:
                states[obj.key] = changed[obj.key] = settled
                if settled.table != state.table:
                    to_place.append(obj)

    for error in errors:
        context.log.error(f"invalid object config: {error}")

    # Keys with state but no valid config now: removed, or their file is invalid.
    current = {obj.key for obj in load.objects}
    removed = sorted(set(states) - current)
    configs_folder = str(Path(object_configs.configs_path))
    folder_broken = any(error.file == configs_folder for error in load.errors)
    invalid_files = set(load.invalid_files)
    held = [k for k in removed if folder_broken or states[k].config_file in invalid_files]
    held_keys = set(held)
    pruned = [k for k in removed if k not in held_keys]
    if held:
        context.log.warning(
            f"{len(held)} object(s) not scheduled while their config file is invalid "
            f"(state kept until it is fixed): {_some(held)}"
        )
    if pruned:
        context.log.warning(
            f"{len(pruned)} object(s) removed (no config any more): {_some(pruned)}; their "
            "sensor state is pruned, their partitions and bronze tables are kept"
        )
    stale = [k for k in store.orphans(states) if k not in current]
    if pruned or stale:
        store.delete([*pruned, *stale])
        forget_placements(instance, pruned)
    for key in pruned:
        changed.pop(key, None)

    # Runs, packed along the partition order.
    requests, covered = plan_run_requests(
        order,
        to_run,
        objects_per_run,
        max_requests=max_runs_per_tick,
        default_retries=instance.run_retries_max_retries,
    )
    waiting = len(to_run) - len(covered)
    if waiting:
        # A tick that creates thousands of runs takes minutes and holds the
        # sensor daemon; the queue runs only a few at a time anyway. Objects
        # left out keep their state, so the next tick picks them up.
        context.log.info(
            f"{waiting} object(s) wait for a later tick ({max_runs_per_tick} runs per tick)"
        )
    if covered:
        runs_before = _latest_run_storage_id(instance)
        for planned in covered:
            before = states.get(planned.key)
            changed[planned.key] = ObjectState(
                config_hash=planned.obj.config_hash,
                generation=planned.generation,
                config_file=planned.obj.config_file,
                requested_after_run=runs_before,
                loaded_hash=before.loaded_hash if before else None,
                schedule_tick=planned.schedule_tick,
                files=planned.files,
                table=planned.obj.target.table,
            )
        to_place += [planned.obj for planned in covered]
        counts = Counter(t for p in covered for t in p.triggers)
        context.log.info(
            f"requested {len(requests)} run(s) for {len(covered)} object(s) ("
            + ", ".join(f"{trigger}: {n}" for trigger, n in sorted(counts.items()))
            + ")"
        )
    if to_place:
        _record_placements(instance, to_place)
    if changed:
        store.write(changed, previous, tick)
    new_cursor = SensorCursor(tick=tick, events=events).serialize()

    if not requests:
        summary = f"{len(load.objects)} object(s) up to date"
        if new_keys:
            summary = f"added {len(new_keys)} partition(s); " + summary
        if errors:
            files_with_errors = sorted({error.file for error in errors})
            summary += f"; {len(errors)} config error(s) in {', '.join(files_with_errors)}"
        return SensorResult(skip_reason=summary, cursor=new_cursor)
    return SensorResult(run_requests=requests, cursor=new_cursor)


def _plan_object(
    obj: ObjectConfig,
    state: ObjectState | None,
    schedule_tick: int | None,
    files: str | None,
    tick: int,
) -> Planned | None:
    triggers = []
    if state is None:
        # New to the sensor, or back after a removal pruned its state: its run
        # keys may have been used before, with any generation up to the last
        # tick's number (a generation grows by at most one a tick), so it
        # starts at this tick's.
        triggers.append(CONFIG)
        generation = tick
    else:
        generation = state.generation
        if state.config_hash != config_hash(obj):
            triggers.append(CONFIG)
            generation += 1
    if (
        state is not None
        and schedule_tick is not None
        and state.schedule_tick is not None
        and schedule_tick > state.schedule_tick
    ):
        triggers.append(SCHEDULE)
    if files is not None and state is not None and state.files is not None and files != state.files:
        triggers.append(FILES)
    if not triggers:
        return None
    return Planned(obj, tuple(triggers), generation, schedule_tick, files, tick)


def _without_run(
    obj: ObjectConfig, state: ObjectState, schedule_tick: int | None, files: str | None
) -> ObjectState:
    """State updates that need no run: where the object is declared, a first cron
    tick or listing for objects whose state predates them, and the table of its
    placement records (recorded before tables were, or of a newer config that a
    run loaded: _settle_loads)."""
    new_schedule_tick = (state.schedule_tick or schedule_tick) if obj.schedule else None
    new_files = (state.files or files) if obj.source.watch else None
    if (state.config_file, state.schedule_tick, state.files, state.table) == (
        obj.config_file,
        new_schedule_tick,
        new_files,
        obj.target.table,
    ):
        return state  # the common case: 10,000 unchanged objects a tick
    return state.updated(
        config_file=obj.config_file,
        schedule_tick=new_schedule_tick,
        files=new_files,
        table=obj.target.table,
    )


def _record_placements(instance: DagsterInstance, objects: Sequence[ObjectConfig]) -> None:
    """Record the objects' cluster, retries and table for the run coordinator, and
    register their tables' locks before any run that writes them is queued."""
    record_placements(
        instance,
        {obj.key: Placement(obj.cluster, obj.retries, obj.target.table) for obj in objects},
    )
    register_locks(instance, [table_lock(obj.target.table) for obj in objects])


# Config hashes by object: the parse cache hands out the same ObjectConfig while
# its file is unchanged, so a steady tick hashes nothing (10,000 hashes: 0.1-0.3 s).
_HASHES: dict[int, tuple[ObjectConfig, str]] = {}
_HASHES_MAX = 60_000


def config_hash(obj: ObjectConfig) -> str:
    cached = _HASHES.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    if len(_HASHES) >= _HASHES_MAX:
        _HASHES.clear()
    value = obj.config_hash
    _HASHES[id(obj)] = (obj, value)
    return value


def plan_run_requests(
    partition_order: Sequence[str],
    to_run: Mapping[str, Planned],
    objects_per_run: int,
    max_requests: int | None = None,
    default_retries: int = 0,
) -> tuple[list[RunRequest], list[Planned]]:
    """Run requests for the objects in `to_run`; returns them and the objects they cover.

    A packed run covers a contiguous range of partitions, so packs are cut
    along the partition order: consecutive objects that need a run and share a
    cluster and a `retries` go together, up to `objects_per_run`; a key that
    needs no run ends the pack (the range must not cover it). New objects are
    added as one block, so they pack well; objects changed, scheduled or
    refreshed together pack with their neighbours. At most `max_requests`
    requests: the rest wait for a later tick.
    """
    requests: list[RunRequest] = []
    covered: list[Planned] = []
    pack: list[Planned] = []

    def close_pack() -> None:
        if pack:
            requests.append(pack_request_for(pack, default_retries))
            covered.extend(pack)
            pack.clear()

    for key in partition_order:
        planned = to_run.get(key)
        if pack and (
            planned is None
            or (planned.obj.cluster, planned.obj.retries)
            != (pack[0].obj.cluster, pack[0].obj.retries)
            or len(pack) >= objects_per_run
        ):
            close_pack()
            if max_requests is not None and len(requests) >= max_requests:
                break
        if planned is not None:
            pack.append(planned)
    close_pack()  # empty after a break
    return requests, covered


def pack_request_for(pack: Sequence[Planned], default_retries: int = 0) -> RunRequest:
    """One run over a contiguous range of partitions (or one partition), all on one cluster."""
    objects = [planned.obj for planned in pack]
    tags = {
        CLUSTER_TAG: objects[0].cluster,
        OBJECTS_TAG: ",".join(obj.key for obj in objects),
        TRIGGER_TAG: "+".join(sorted({t for planned in pack for t in planned.triggers})),
        **retry_tags([obj.retries for obj in objects], default_retries),
    }
    if len(pack) == 1:
        return RunRequest(
            run_key=pack[0].run_key,
            partition_key=objects[0].key,
            tags={**tags, CONFIG_HASH_TAG: objects[0].config_hash},
        )
    identity = ",".join(planned.run_key for planned in pack)
    return RunRequest(
        run_key="pack:" + hashlib.sha256(identity.encode()).hexdigest()[:24],
        tags={
            ASSET_PARTITION_RANGE_START_TAG: objects[0].key,
            ASSET_PARTITION_RANGE_END_TAG: objects[-1].key,
            **tags,
        },
    )


def _recent_loads(instance: DagsterInstance, after: int) -> tuple[list[tuple[str, str, str]], int]:
    """(partition, config hash, run id) of each bronze load after event `after`, oldest
    first, and the new watermark."""
    loads: list[tuple[str, str, str]] = []
    watermark = after
    while len(loads) < MAX_LOADS_PER_TICK:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BRONZE, after_storage_id=watermark),
            limit=_LOADS_PAGE,
            ascending=True,
        ).records
        for record in records:
            watermark = max(watermark, record.storage_id)
            materialization = record.asset_materialization
            if materialization is None or record.partition_key is None:
                continue
            config_hash = getattr(materialization.metadata.get("config_hash"), "value", None)
            if isinstance(config_hash, str):
                loads.append((record.partition_key, config_hash, record.run_id))
        if len(records) < _LOADS_PAGE:
            break
    return loads, watermark


def _settle_loads(
    instance: DagsterInstance,
    loads: Sequence[tuple[str, str, str]],
    states: dict[str, ObjectState],
    changed: dict[str, ObjectState],
) -> None:
    """Record what each load used. A run created after the sensor's last request
    for the object settles it on the hash the run loaded (the newest valid config
    when it started, which may be newer than the one requested); an older run's
    load is recorded as loaded only."""
    if not loads:
        return
    run_ids = sorted({run_id for _, _, run_id in loads})
    created = {
        record.dagster_run.run_id: record.storage_id
        for record in instance.get_run_records(RunsFilter(run_ids=run_ids))
    }
    for key, config_hash, run_id in loads:
        state = states.get(key)
        if state is None:
            continue
        settled = state.updated(loaded_hash=config_hash)
        if created.get(run_id, 0) > state.requested_after_run:
            settled = settled.updated(config_hash=config_hash)
        if settled != state:
            states[key] = changed[key] = settled


def _latest_run_storage_id(instance: DagsterInstance) -> int:
    """Storage id of the newest run: every run created later has a higher one."""
    records = instance.get_run_records(limit=1)
    return records[0].storage_id if records else 0


def _latest_cron_tick(cron: str, now: float, cache: dict[str, int]) -> int:
    """Epoch seconds of the cron's latest tick at or before `now` (UTC)."""
    if cron not in cache:
        from dagster._utils.schedules import get_latest_completed_cron_tick

        latest = get_latest_completed_cron_tick(cron, datetime.fromtimestamp(now, UTC), "UTC")
        cache[cron] = int(latest.timestamp())
    return cache[cron]


def _some(keys: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
