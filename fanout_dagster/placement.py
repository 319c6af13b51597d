"""Which cluster each object runs on, and the run tags that follow from it.

The sensor records each object's `cluster` in the Dagster instance's key-value
store; the run coordinator reads it back to tag runs it did not create itself
(UI backfills, manual launches). Keeping the mapping in the instance means the
coordinator needs no access to the configs folder.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from fanout_dagster.objects import DEFAULT_CLUSTER
from fanout_dagster.tags import CLUSTER_TAG, CLUSTERS_TAG

_KV_PREFIX = "fanout_dagster/cluster/"


def record_clusters(instance, clusters_by_key: Mapping[str, str]) -> None:
    if clusters_by_key:
        instance.run_storage.set_cursor_values(
            {_KV_PREFIX + key: cluster for key, cluster in clusters_by_key.items()}
        )


def recorded_clusters(
    instance, keys: Iterable[str], fallback: Callable[[], Mapping[str, str]] | None = None
) -> dict[str, str]:
    """Cluster per key: what the sensor recorded, else what `fallback()` says
    (the configs folder, read only when needed), else the default cluster."""
    keys = list(keys)
    stored = instance.run_storage.get_cursor_values({_KV_PREFIX + key for key in keys})
    result = {key: stored[_KV_PREFIX + key] for key in keys if _KV_PREFIX + key in stored}
    missing = [key for key in keys if key not in result]
    if missing and fallback is not None:
        declared = fallback()
        result.update({key: declared[key] for key in missing if key in declared})
    return {key: result.get(key, DEFAULT_CLUSTER) for key in keys}


def cluster_tags(
    clusters_by_key: Mapping[str, str], limits: Mapping[str, int] | None = None
) -> dict[str, str]:
    """Run tags for a run over these objects.

    A pack is meant to sit on one cluster. If it spans several, it runs on the
    most constrained of them (the smallest run limit in `limits`; then the one
    most of its objects name; then alphabetical), so no cluster ever runs more
    than its limit: the smaller cluster's objects are never let through under
    a bigger cluster's limit. CLUSTERS_TAG lists all of them.
    """
    counts = Counter(clusters_by_key.values())
    if not counts:
        return {CLUSTER_TAG: DEFAULT_CLUSTER}
    limits = limits or {}
    primary = min(counts, key=lambda name: (limits.get(name, math.inf), -counts[name], name))
    tags = {CLUSTER_TAG: primary}
    if len(counts) > 1:
        tags[CLUSTERS_TAG] = "+".join(sorted(counts))
    return tags
