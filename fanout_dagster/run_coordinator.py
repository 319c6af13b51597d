"""The run queue, with every bronze run tagged by the cluster it runs on.

Dagster's QueuedRunCoordinator enforces `concurrency: runs:` from dagster.yaml,
including per-tag limits. Runs the sensor creates carry the cluster tag
already; runs a UI backfill creates do not (Dagster gives asset backfill runs
only partition tags). This subclass adds, at submit time and before the run is
queued:

- `fanout/cluster`: the cluster the run's objects are placed on (placement.py:
  recorded by the sensor, else read from the configs folder), so the
  per-cluster limit applies to every bronze run, however launched;
- `fanout/objects`: the run's partition keys, which the remote side of a
  Databricks step needs (see assets/bronze.py).

A run whose objects straddle clusters (a UI backfill range across a cluster
boundary) is split by cluster: it keeps its first cluster's objects and sibling
runs take the rest (pack_split.py).

Configured in dagster.yaml under `run_coordinator:`.
"""

from __future__ import annotations

from dagster import AssetKey
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from fanout_dagster.pack_split import Segment, cluster_segments, segment_tags, submit_siblings
from fanout_dagster.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.placement import cluster_tags, recorded_clusters
from fanout_dagster.resources.object_configs import ObjectConfigs
from fanout_dagster.settings import Settings
from fanout_dagster.tags import CLUSTER_TAG, OBJECTS_TAG

BRONZE_KEY = AssetKey("bronze")


class ClusterTaggingRunCoordinator(QueuedRunCoordinator):
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        tags, segments = self._placement(run)
        if len(segments) > 1:
            # A pack straddling clusters: its other segments become sibling runs
            # (created before this run is narrowed, see pack_split.py).
            submit_siblings(self._instance, context.workspace, run, segments)
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)

    def placement_tags(self, run: DagsterRun) -> dict[str, str]:
        return self._placement(run)[0]

    def _placement(self, run: DagsterRun) -> tuple[dict[str, str], list[Segment]]:
        """The run's tags to add, and its cluster segments when it straddles clusters."""
        if not run.asset_selection or BRONZE_KEY not in run.asset_selection:
            return {}, []
        keys = run_partition_keys(self._instance, run)
        if not keys:
            return {}, []
        tags: dict[str, str] = {}
        if OBJECTS_TAG not in run.tags:
            tags[OBJECTS_TAG] = ",".join(keys)
        segments: list[Segment] = []
        if CLUSTER_TAG not in run.tags:
            clusters = recorded_clusters(self._instance, keys, fallback=_declared_clusters)
            segments = cluster_segments(keys, clusters)
            if len(segments) > 1:
                # This run keeps the first segment (pack_split.py).
                tags.update(segment_tags(segments[0]))
            else:
                tags.update(cluster_tags(clusters, self.cluster_limits()))
        return tags, segments

    def cluster_limits(self) -> dict[str, int]:
        """Per-cluster run limits from `concurrency: runs: tag_concurrency_limits`."""
        queue = self._instance.get_concurrency_config().run_queue_config
        entries = queue.tag_concurrency_limits if queue else []
        return {
            entry["value"]: entry["limit"]
            for entry in entries
            if entry.get("key") == CLUSTER_TAG and isinstance(entry.get("value"), str)
        }


def _declared_clusters() -> dict[str, str]:
    # For objects the sensor has not recorded (it may be stopped): read the
    # configs folder this process is pointed at.
    catalog = ObjectConfigs.from_settings(Settings())
    return {obj.key: obj.cluster for obj in catalog.load().objects}


def run_partition_keys(instance, run: DagsterRun) -> list[str]:
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
