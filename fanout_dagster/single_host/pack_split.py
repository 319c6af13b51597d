"""Packs that straddle clusters are split, one run per cluster segment.

A UI backfill with `BackfillPolicy.multi_run(k)` cuts the selected partitions
into contiguous ranges of k in partition order, whatever cluster each object
names; Dagster offers no hook to cut them otherwise. The sensor adds
partitions grouped by cluster, so a range rarely straddles two clusters, but
it can (an object added later, a cluster changed). Running such a pack on one
cluster would put the other cluster's objects under the wrong cluster's run
limit and on the wrong compute.

So the run coordinator splits it at submit time, before the run is queued:

- the pack's keys, in partition order, are cut into maximal segments of
  consecutive keys on one cluster ([a1 a2 b1 a3] -> [a1 a2], [b1], [a3]);
- the submitted run is narrowed to the first segment: its partition range
  tags, `fanout/objects` and `fanout/cluster` say exactly that segment;
- each other segment becomes a sibling run of the same job and asset, with
  its own range, objects and cluster, and every other tag of the original
  (the backfill id among them), submitted through the same coordinator, so
  it queues under its own cluster's limit.

Why this keeps every object's status truthful in the backfill view: an asset
backfill counts as materialized what any run carrying its backfill tag
materialized, and as failed the partition range (range tags) of its failed
runs minus what was materialized. Every run's range now covers exactly its own
objects, and every sibling carries the backfill tag, so neither count sees an
object through another object's run; the backfill also waits for the siblings
(its completion looks at every unfinished run with its tag). The partitions
view uses each partition's latest planned run: the siblings plan their
objects after the original did (they are created from its submit), so theirs
is the one that counts.

Sibling run ids are derived from the original's (uuid5), so a submit retried
after a crash (the backfill daemon submits a created run again) finds the
siblings it already made instead of making new ones.

Only runs without a `fanout/cluster` tag are split: the sensor's packs never
straddle, and a run someone tagged by hand is left as tagged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._core.workspace.context import BaseWorkspaceRequestContext

from fanout_dagster.orchestration.tags import CLUSTER_TAG, CLUSTERS_TAG, OBJECTS_TAG

# On a sibling run: the run it was split from.
SPLIT_FROM_TAG = "fanout/split_from"

Segment = tuple[str, list[str]]  # (cluster, keys in partition order)


def cluster_segments(keys: Sequence[str], clusters: Mapping[str, str]) -> list[Segment]:
    """Maximal runs of consecutive keys on one cluster, in order."""
    segments: list[Segment] = []
    for key in keys:
        cluster = clusters[key]
        if segments and segments[-1][0] == cluster:
            segments[-1][1].append(key)
        else:
            segments.append((cluster, [key]))
    return segments


def segment_tags(segment: Segment) -> dict[str, str]:
    """The tags that make a run target exactly this segment."""
    cluster, keys = segment
    return {
        ASSET_PARTITION_RANGE_START_TAG: keys[0],
        ASSET_PARTITION_RANGE_END_TAG: keys[-1],
        OBJECTS_TAG: ",".join(keys),
        CLUSTER_TAG: cluster,
    }


def sibling_run_id(run_id: str, index: int) -> str:
    return str(uuid.uuid5(uuid.UUID(run_id), f"fanout-split-{index}"))


def submit_siblings(
    instance: DagsterInstance,
    workspace: BaseWorkspaceRequestContext,
    run: DagsterRun,
    segments: Sequence[Segment],
) -> list[str]:
    """Create (once) and submit a run for every segment but the first; their run ids.

    `run` is the original run as it was submitted (before narrowing): siblings
    inherit its tags, job, snapshots and asset selection.
    """
    job_snapshot = instance.get_job_snapshot(run.job_snapshot_id) if run.job_snapshot_id else None
    plan_snapshot = (
        instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        if run.execution_plan_snapshot_id
        else None
    )
    inherited = {
        key: value
        for key, value in run.tags.items()
        if key not in (PARTITION_NAME_TAG, CLUSTERS_TAG)
    }
    run_ids = []
    for index, segment in enumerate(segments[1:], start=1):
        run_id = sibling_run_id(run.run_id, index)
        sibling = instance.get_run_by_id(run_id)
        if sibling is None:
            sibling = instance.create_run(
                job_name=run.job_name,
                run_id=run_id,
                run_config=run.run_config,
                status=DagsterRunStatus.NOT_STARTED,
                tags={**inherited, **segment_tags(segment), SPLIT_FROM_TAG: run.run_id},
                root_run_id=None,
                parent_run_id=None,
                step_keys_to_execute=run.step_keys_to_execute,
                execution_plan_snapshot=plan_snapshot,
                job_snapshot=job_snapshot,
                parent_job_snapshot=None,
                asset_selection=run.asset_selection,
                asset_check_selection=run.asset_check_selection,
                resolved_op_selection=run.resolved_op_selection,
                op_selection=run.op_selection,
                remote_job_origin=run.remote_job_origin,
                job_code_origin=run.job_code_origin,
                asset_graph=workspace.asset_graph,
            )
        if sibling.status == DagsterRunStatus.NOT_STARTED:
            instance.submit_run(run_id, workspace)
        run_ids.append(run_id)
    return run_ids
