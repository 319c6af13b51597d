"""The run queue: every bronze run tagged with its cluster, its objects and its
retries, and never two runs of one object, or of one bronze table, at once.

Dagster's QueuedRunCoordinator enforces the run limits of its config (in
dagster.yaml, under `run_coordinator: config:`), including per-tag limits.
Runs the sensor creates carry the cluster tag already; runs a UI backfill
creates do not (Dagster gives asset backfill runs only partition tags). This
subclass adds, at submit time and before the run is queued:

- `fanout/cluster`: the cluster the run's objects are placed on (placement.py:
  recorded by the sensor, else read from the configs folder), so the
  per-cluster limit applies to every bronze run, however launched;
- `fanout/objects`: the run's partition keys, which the remote side of a
  Databricks step needs (see orchestration/bronze.py);
- `dagster/max_retries` (+ `dagster/retry_strategy`) from the objects'
  `retries`, when the sensor did not set them (placement.retry_tags);
- one hidden tag per lock the run holds (locks.py): per object
  (`.dagster/fanout-object/<key>`) and per bronze table it writes
  (`.dagster/fanout-table/<table>`, the table from placement.py).

One run per object, and per table, at a time. A pack touches many objects,
and two packs can overlap without being equal (a UI backfill's ranges beside
the sensor's packs of changed objects), so no single tag value can say
"conflicts with". Each lock is its own tag key instead, and
`get_run_queue_config` adds a limit of 1 for every lock to the limits of the
config: the lock of every object (every `objects` partition) and of every
table in the lock registry (locks.py; a table is registered before any run
that writes it is queued). The queue daemon asks for the config at every
dequeue pass (instance.get_concurrency_config() -> get_run_queue_config()) and
applies the limits with its own counter, which also counts the runs it
launches within the pass; so a run that shares any lock with a run in
progress, or with one launched ahead of it, stays QUEUED until that run ends.
The limits cover every lock there is, not only those of runs seen in progress,
so a run queued while the list is being made still meets its limits. (The
UI's "queue criteria" dialog lists them all: one line per object and table.)
The alternatives did not hold runs in the queue: Dagster pools are declared
per asset, not per partition, so one pool would serialize every bronze run; a
lock taken inside the run holds it STARTED (occupying a slot) rather than
QUEUED; a custom queue daemon cannot be configured in dagster.yaml.

The lock limits must be added to the config's `tag_concurrency_limits`:
`concurrency: runs: tag_concurrency_limits` would replace them, so that form
is refused when the instance loads, as is run storage the lock registry cannot
list (not SQL).

A run whose objects straddle clusters (a UI backfill range across a cluster
boundary) is split by cluster: it keeps its first cluster's objects and sibling
runs take the rest (pack_split.py), each with its own tags and locks.

Configured in dagster.yaml under `run_coordinator:`.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetKey, DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from fanout_dagster.orchestration.locks import (
    object_lock,
    register_locks,
    registered_locks,
    registry_version,
    run_locks,
)
from fanout_dagster.orchestration.object_state import sql_run_storage
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import (
    Placement,
    cluster_tags,
    recorded_placements,
    retry_tags,
)
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.tags import CLUSTER_TAG, LOCK_TAG_PREFIX, OBJECTS_TAG, RETRIES_TAG
from fanout_dagster.settings import Settings
from fanout_dagster.single_host.pack_split import (
    Segment,
    cluster_segments,
    segment_tags,
    submit_siblings,
)

BRONZE_KEY = AssetKey("bronze")


class ClusterTaggingRunCoordinator(QueuedRunCoordinator):
    _lock_limits_cache: tuple[tuple[str | None, str | None], list[dict[str, Any]]] | None = None

    def register_instance(self, instance: DagsterInstance) -> None:
        super().register_instance(instance)
        runs = (instance.get_settings("concurrency") or {}).get("runs") or {}
        if runs.get("tag_concurrency_limits") is not None:
            raise DagsterInvalidConfigError(
                "fanout_dagster's run coordinator adds a limit per object to the tag limits "
                "of its own config, and `concurrency: runs: tag_concurrency_limits` would "
                "replace them (two runs of one object could then run at once): move those "
                "limits to `run_coordinator: config: tag_concurrency_limits` in dagster.yaml",
                [],
                None,
            )
        if sql_run_storage(instance) is None:
            raise DagsterInvalidConfigError(
                "fanout_dagster's run coordinator keeps its table locks in the run storage's "
                "key-value table and needs SQL run storage (SQLite, PostgreSQL or MySQL)",
                [],
                None,
            )

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        keys = self.run_objects(run)
        placements = self._placements(keys)
        tags, segments = self._placement(run, keys, placements)
        if len(segments) > 1:
            # A pack straddling clusters: its other segments become sibling runs
            # (created before this run is narrowed to its first one: pack_split.py).
            submit_siblings(self._instance, context.workspace, run, segments)
            keys = segments[0][1]
        locks = run_locks(keys, {key: placements[key].table for key in keys})
        # Registered before the run is queued: the queue has a limit for each of them.
        register_locks(self._instance, locks)
        tags = {**tags, **lock_tags(locks)}
        tags = {key: value for key, value in tags.items() if run.tags.get(key) != value}
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)

    def run_objects(self, run: DagsterRun) -> list[str]:
        """The objects (partition keys) of a bronze run; [] for any other run."""
        if not run.asset_selection or BRONZE_KEY not in run.asset_selection:
            return []
        if run.tags.get(OBJECTS_TAG):  # the sensor's runs (and retries) list them
            return run.tags[OBJECTS_TAG].split(",")
        return run_partition_keys(self._instance, run)

    def placement_tags(self, run: DagsterRun, keys: list[str] | None = None) -> dict[str, str]:
        """The objects, cluster and retry tags a run lacks."""
        keys = self.run_objects(run) if keys is None else keys
        return self._placement(run, keys, self._placements(keys))[0]

    def _placements(self, keys: list[str]) -> dict[str, Placement]:
        """Where each object runs and which table it writes (placement.py)."""
        if not keys:
            return {}
        return recorded_placements(self._instance, keys, fallback=_declared_placements)

    def _placement(
        self, run: DagsterRun, keys: list[str], placements: dict[str, Placement]
    ) -> tuple[dict[str, str], list[Segment]]:
        """The tags a run lacks, and its cluster segments when it straddles clusters."""
        if not keys:
            return {}, []
        tags: dict[str, str] = {}
        if OBJECTS_TAG not in run.tags:
            tags[OBJECTS_TAG] = ",".join(keys)
        segments: list[Segment] = []
        if CLUSTER_TAG not in run.tags or RETRIES_TAG not in run.tags:
            kept = keys
            if CLUSTER_TAG not in run.tags:
                clusters = {key: p.cluster for key, p in placements.items()}
                segments = cluster_segments(keys, clusters)
                if len(segments) > 1:
                    # This run keeps the first segment (pack_split.py).
                    tags.update(segment_tags(segments[0]))
                    kept = segments[0][1]
                else:
                    tags.update(cluster_tags(clusters, self.cluster_limits()))
            if RETRIES_TAG not in run.tags:
                tags.update(
                    retry_tags(
                        [placements[key].retries for key in kept],
                        self._instance.run_retries_max_retries,
                    )
                )
        return tags, segments

    def cluster_limits(self) -> dict[str, int]:
        """Per-cluster run limits from the config's `tag_concurrency_limits`."""
        return {
            entry["value"]: entry["limit"]
            for entry in self._tag_concurrency_limits
            if entry.get("key") == CLUSTER_TAG and isinstance(entry.get("value"), str)
        }

    def get_run_queue_config(self) -> RunQueueConfig:
        """The config's limits, plus a limit of 1 per lock tag (see the module doc)."""
        config = super().get_run_queue_config()
        if not self.has_instance:
            return config
        return config._replace(
            tag_concurrency_limits=[*config.tag_concurrency_limits, *self.lock_limits()]
        )

    def lock_limits(self) -> list[dict[str, Any]]:
        """A limit of 1 per lock: every partition's object lock and every registered
        table lock, so that a run queued after this list was made still meets its
        limits.

        Dagster asks for the config several times a second (the queue daemon,
        pool settings), so the list is rebuilt only when a partition was added or
        a lock registered since: the newest partition's id and the registry's
        version, one indexed row each, say so. A deleted partition's limit stays
        until then, harmlessly.
        """
        newest = self._instance.get_paginated_dynamic_partitions(
            OBJECTS_PARTITIONS_NAME, limit=1, ascending=False
        ).cursor
        version = (newest, registry_version(self._instance))
        cached = self._lock_limits_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        keys = self._instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME)
        locks = [object_lock(key) for key in keys] + registered_locks(self._instance)
        limits = [{"key": LOCK_TAG_PREFIX + lock, "limit": 1} for lock in locks]
        self._lock_limits_cache = (version, limits)
        return limits


def lock_tags(locks: list[str]) -> dict[str, str]:
    """One tag per lock of a run: each is limited to one run at a time (see the module doc)."""
    return {LOCK_TAG_PREFIX + lock: "1" for lock in locks}


def _declared_placements() -> dict[str, Placement]:
    # For objects the sensor has not recorded (it may be stopped): read the
    # configs folder this process is pointed at.
    catalog = ObjectConfigs.from_settings(Settings())
    return {
        obj.key: Placement(obj.cluster, obj.retries, obj.target.table)
        for obj in catalog.load().objects
    }


def run_partition_keys(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """The `objects` partition keys a run targets: one key, or a range resolved in partition order."""
    if PARTITION_NAME_TAG in run.tags:
        return [run.tags[PARTITION_NAME_TAG]]
    start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not (start and end):
        return []
    all_keys = list(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))
    try:
        first, last = all_keys.index(start), all_keys.index(end)
    except ValueError:
        return []
    return all_keys[first : last + 1]
