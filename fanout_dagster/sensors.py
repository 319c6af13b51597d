"""The object sensor: configs/ -> `objects` partitions and runs.

Each tick reads the configs folder and
- adds a partition for every new valid object;
- requests a run for every object whose config content hash differs from the
  one it last ran (new or changed); an unchanged config never re-runs. The
  run key is key + generation + hash: the generation counts the object's
  config changes, so a config changed A -> B -> A runs again (Dagster skips
  run keys a sensor has used before), while a repeated tick never does;
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

from dagster import (
    AssetSelection,
    SensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from fanout_dagster.objects import ObjectConfig
from fanout_dagster.partitions import OBJECTS_PARTITIONS_NAME, objects_partitions
from fanout_dagster.placement import CLUSTER_TAG, OBJECTS_TAG, record_clusters
from fanout_dagster.resources.catalog import ObjectCatalog

CONFIG_HASH_TAG = "fanout/config_hash"


def run_request_for(obj: ObjectConfig, generation: int = 1) -> RunRequest:
    return RunRequest(
        run_key=run_key_for(obj, generation),
        partition_key=obj.key,
        tags={CLUSTER_TAG: obj.cluster, OBJECTS_TAG: obj.key, CONFIG_HASH_TAG: obj.config_hash},
    )


def run_key_for(obj: ObjectConfig, generation: int) -> str:
    # The first generation keeps the plain key:hash form.
    return f"{obj.key}:{obj.config_hash}" if generation <= 1 else f"{obj.key}:{generation}:{obj.config_hash}"


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
    new_in_order: list[ObjectConfig],
    to_run: list[ObjectConfig],
    objects_per_run: int,
    generations: dict[str, int] | None = None,
) -> list[RunRequest]:
    """Packs for new objects, a run each for changed ones.

    New partitions are added as one block in `new_in_order`, so consecutive new
    objects form a range Dagster can run as one multi-partition run. A pack
    ends at a cluster change, at `objects_per_run`, or at a new key that needs
    no run (the range must not cover it). Changed objects sit anywhere in the
    partition list, so each gets its own run.
    """
    generations = generations or {}
    needs_run = {obj.key for obj in to_run}
    new_keys = {obj.key for obj in new_in_order}
    requests: list[RunRequest] = []
    pack: list[ObjectConfig] = []
    for obj in new_in_order:
        if pack and (
            obj.cluster != pack[0].cluster or len(pack) >= objects_per_run or obj.key not in needs_run
        ):
            requests.append(pack_request_for(pack, generations))
            pack = []
        if obj.key in needs_run:
            pack.append(obj)
    if pack:
        requests.append(pack_request_for(pack, generations))
    requests.extend(
        run_request_for(obj, generations.get(obj.key, 1)) for obj in to_run if obj.key not in new_keys
    )
    return requests


def build_object_sensor(objects_per_run: int = 1) -> SensorDefinition:
    @sensor(
        name="object_configs_sensor",
        asset_selection=AssetSelection.assets("bronze"),
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a partition per object config and runs new or changed objects.",
    )
    def object_configs_sensor(context: SensorEvaluationContext, catalog: ObjectCatalog):
        return evaluate(context, catalog, objects_per_run)

    return object_configs_sensor


def evaluate(context: SensorEvaluationContext, catalog: ObjectCatalog, objects_per_run: int):
    load = catalog.load()
    for error in load.errors:
        context.log.error(f"invalid object config: {error}")

    ran = _read_cursor(context.cursor)  # key -> (config hash last run, generation)
    existing = set(context.instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))
    # New partitions go in grouped by cluster, so the contiguous ranges a
    # packed backfill takes tend to stay on one cluster.
    ordered = sorted(load.objects, key=lambda obj: (obj.cluster, obj.key))
    new_objects = [obj for obj in ordered if obj.key not in existing]
    new_keys = [obj.key for obj in new_objects]
    to_run = [obj for obj in ordered if ran.get(obj.key, ("", 0))[0] != obj.config_hash]
    generations = {obj.key: ran.get(obj.key, ("", 0))[1] + 1 for obj in to_run}

    # Keys the sensor ran before that have no valid config now: removed, or
    # their file is invalid at the moment (an unparseable file hides which).
    current = {obj.key for obj in load.objects}
    for key in sorted(set(ran) - current):
        context.log.warning(
            f"{key}: no valid config any more (removed, or its file is invalid); not scheduled. "
            "Its partition and bronze table are kept."
        )

    record_clusters(context.instance, {obj.key: obj.cluster for obj in to_run})
    # Hashes are never dropped from the cursor, so an object whose file was
    # broken for a while does not re-run once the file is fixed, unless its
    # own config changed.
    cursor = {**ran, **{obj.key: (obj.config_hash, generations[obj.key]) for obj in to_run}}

    if not new_keys and not to_run:
        summary = f"{len(load.objects)} object(s) up to date"
        if load.errors:
            summary += f"; {len(load.errors)} config error(s) in {', '.join(load.invalid_files)}"
        return SkipReason(summary)

    return SensorResult(
        run_requests=plan_run_requests(new_objects, to_run, objects_per_run, generations),
        dynamic_partitions_requests=(
            [objects_partitions.build_add_request(new_keys)] if new_keys else []
        ),
        cursor=json.dumps({key: list(value) for key, value in cursor.items()}, sort_keys=True),
    )


def _read_cursor(cursor: str | None) -> dict[str, tuple[str, int]]:
    return {key: (value[0], int(value[1])) for key, value in json.loads(cursor or "{}").items()}



# The sensor with one run per changed object and per new object.
object_configs_sensor = build_object_sensor()
