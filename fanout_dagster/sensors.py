"""The object sensor: configs/ -> `objects` partitions and runs.

Each tick reads the configs folder and
- adds a partition for every new valid object;
- requests a run (or a packed run, `objects_per_run`) for every object whose config content hash differs from the
  one it last ran (new or changed); an unchanged config never re-runs. The
  run key is key + generation + hash: the generation counts the object's
  config changes, so a config changed A -> B -> A runs again (Dagster skips
  run keys a sensor has used before), while a repeated tick never does;
- creates at most `max_runs_per_tick` runs; the rest wait for the next tick;
- records each object's cluster for the run coordinator (placement.py);
- reports every invalid file with its field, without holding back the valid
  objects.

A config that disappears stops being scheduled; its partition and its bronze
table stay (nothing is deleted automatically: history and data are kept, and
the tick says so). Delete the partition from the UI to hide it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fanout_dagster.objects import ObjectConfig
from fanout_dagster.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.placement import record_clusters
from fanout_dagster.resources.object_configs import ObjectConfigs
from fanout_dagster.tags import CLUSTER_TAG, CONFIG_HASH_TAG, OBJECTS_TAG

# Enough to keep the run queue busy between ticks (it runs a handful at a
# time), small enough that a tick takes seconds, not minutes, at 10k objects.
DEFAULT_MAX_RUNS_PER_TICK = 100


def run_request_for(obj: ObjectConfig, generation: int = 1) -> RunRequest:
    return RunRequest(
        run_key=run_key_for(obj, generation),
        partition_key=obj.key,
        tags={CLUSTER_TAG: obj.cluster, OBJECTS_TAG: obj.key, CONFIG_HASH_TAG: obj.config_hash},
    )


def run_key_for(obj: ObjectConfig, generation: int) -> str:
    # The first generation keeps the plain key:hash form.
    return (
        f"{obj.key}:{obj.config_hash}"
        if generation <= 1
        else f"{obj.key}:{generation}:{obj.config_hash}"
    )


def pack_request_for(pack: list[ObjectConfig], generations: dict[str, int]) -> RunRequest:
    """One run over a contiguous range of new partitions, all on one cluster."""
    if len(pack) == 1:
        return run_request_for(pack[0], generations.get(pack[0].key, 1))
    identity = ",".join(run_key_for(obj, generations.get(obj.key, 1)) for obj in pack)
    return RunRequest(
        run_key="pack:" + hashlib.sha256(identity.encode()).hexdigest()[:24],
        tags={
            ASSET_PARTITION_RANGE_START_TAG: pack[0].key,
            ASSET_PARTITION_RANGE_END_TAG: pack[-1].key,
            CLUSTER_TAG: pack[0].cluster,
            OBJECTS_TAG: ",".join(obj.key for obj in pack),
        },
    )


def plan_run_requests(
    partition_order: Sequence[str],
    to_run: Mapping[str, ObjectConfig],
    objects_per_run: int,
    generations: Mapping[str, int] | None = None,
    max_requests: int | None = None,
) -> tuple[list[RunRequest], list[ObjectConfig]]:
    """Run requests for the objects in `to_run`; returns them and the objects they cover.

    A packed run covers a contiguous range of partitions, so packs are cut
    along the partition order: consecutive objects that need a run and share a
    cluster go together, up to `objects_per_run`; a key that needs no run ends
    the pack (the range must not cover it). New objects are added as one block,
    so they pack well; changed ones pack with their neighbours when those
    changed too. At most `max_requests` requests: the rest wait for a later tick.
    """
    generations = generations or {}
    requests: list[RunRequest] = []
    covered: list[ObjectConfig] = []
    pack: list[ObjectConfig] = []

    def close_pack() -> None:
        if pack:
            requests.append(pack_request_for(pack, generations))
            covered.extend(pack)
            pack.clear()

    for key in partition_order:
        obj = to_run.get(key)
        if pack and (obj is None or obj.cluster != pack[0].cluster or len(pack) >= objects_per_run):
            close_pack()
            if max_requests is not None and len(requests) >= max_requests:
                break
        if obj is not None:
            pack.append(obj)
    close_pack()  # empty after a break
    return requests, covered


def build_object_sensor(
    objects_per_run: int = 1, max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK
) -> SensorDefinition:
    @sensor(
        name="object_configs_sensor",
        asset_selection=AssetSelection.assets("bronze"),
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a partition per object config and runs new or changed objects.",
    )
    def object_configs_sensor(context: SensorEvaluationContext, object_configs: ObjectConfigs):
        return evaluate(context, object_configs, objects_per_run, max_runs_per_tick)

    return object_configs_sensor


def evaluate(
    context: SensorEvaluationContext,
    object_configs: ObjectConfigs,
    objects_per_run: int,
    max_runs_per_tick: int = DEFAULT_MAX_RUNS_PER_TICK,
):
    load = object_configs.load()
    for error in load.errors:
        context.log.error(f"invalid object config: {error}")

    ran = _read_cursor(context.cursor)  # key -> (config hash last run, generation)
    instance = context.instance
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

    to_run = {obj.key: obj for obj in ordered if ran.get(obj.key, ("", 0))[0] != obj.config_hash}
    generations = {key: ran.get(key, ("", 0))[1] + 1 for key in to_run}

    # Keys the sensor ran before that have no valid config now: removed, or
    # their file is invalid at the moment (an unparseable file hides which).
    current = {obj.key for obj in load.objects}
    for key in sorted(set(ran) - current):
        context.log.warning(
            f"{key}: no valid config any more (removed, or its file is invalid); not scheduled. "
            "Its partition and bronze table are kept."
        )

    requests, covered = plan_run_requests(
        [*existing, *new_keys], to_run, objects_per_run, generations, max_runs_per_tick
    )
    waiting = len(to_run) - len(covered)
    if waiting:
        # A tick that creates thousands of runs takes minutes and holds the
        # sensor daemon; the queue runs only a few at a time anyway. Objects
        # left out stay out of the cursor, so the next tick picks them up.
        context.log.info(
            f"{waiting} object(s) wait for a later tick ({max_runs_per_tick} runs per tick)"
        )
    record_clusters(instance, {obj.key: obj.cluster for obj in covered})
    # Hashes are never dropped from the cursor, so an object whose file was
    # broken for a while does not re-run once the file is fixed, unless its
    # own config changed.
    cursor = {**ran, **{obj.key: (obj.config_hash, generations[obj.key]) for obj in covered}}

    if not requests:
        summary = f"{len(load.objects)} object(s) up to date"
        if new_keys:
            summary = f"added {len(new_keys)} partition(s); " + summary
        if load.errors:
            summary += f"; {len(load.errors)} config error(s) in {', '.join(load.invalid_files)}"
        return SkipReason(summary)

    return SensorResult(
        run_requests=requests,
        cursor=json.dumps({key: list(value) for key, value in cursor.items()}, sort_keys=True),
    )


def _some(keys: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _read_cursor(cursor: str | None) -> dict[str, tuple[str, int]]:
    return {key: (value[0], int(value[1])) for key, value in json.loads(cursor or "{}").items()}
