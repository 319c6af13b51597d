"""Which cluster each object runs on, how often its runs are retried and which
bronze table it writes, and the run tags that follow from them.

The sensor records each object's `cluster`, `retries` and `target.table` in the
Dagster instance's key-value store; the run coordinator reads them back to tag
runs it did not create itself (UI backfills, manual launches) and to lock the
tables every run writes (locks.py). Keeping them in the instance means the
coordinator needs no access to the configs folder (it reads it only for objects
the sensor has not recorded yet, or recorded before it recorded tables).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from dagster import DagsterInstance

from fanout_dagster.core.objects import DEFAULT_CLUSTER
from fanout_dagster.orchestration.object_state import delete_kv, existing_kv_keys, set_kv
from fanout_dagster.orchestration.tags import (
    CLUSTER_TAG,
    CLUSTERS_TAG,
    RETRIES_TAG,
    RETRY_STRATEGY,
    RETRY_STRATEGY_TAG,
)

_KV_PREFIX = "fanout_dagster/cluster/"
# An object's declared `retries`; an empty value: none declared (the deployment's).
_RETRIES_PREFIX = "fanout_dagster/retries/"
# The bronze table an object writes (`target.table`).
_TABLE_PREFIX = "fanout_dagster/table/"
_PREFIXES = (_KV_PREFIX, _RETRIES_PREFIX, _TABLE_PREFIX)


class Placement(NamedTuple):
    cluster: str
    retries: int | None  # as declared; None: the deployment's default
    table: str | None = None  # the bronze table it writes; None: not known


def record_placements(instance: DagsterInstance, placements: Mapping[str, Placement]) -> None:
    if not placements:
        return
    pairs = {_KV_PREFIX + key: p.cluster for key, p in placements.items()}
    pairs.update(
        {
            _RETRIES_PREFIX + key: "" if p.retries is None else str(p.retries)
            for key, p in placements.items()
        }
    )
    pairs.update({_TABLE_PREFIX + key: p.table for key, p in placements.items() if p.table})
    set_kv(instance, pairs, existing_kv_keys(instance, pairs))


def record_clusters(instance: DagsterInstance, clusters_by_key: Mapping[str, str]) -> None:
    if clusters_by_key:
        pairs = {_KV_PREFIX + key: cluster for key, cluster in clusters_by_key.items()}
        set_kv(instance, pairs, existing_kv_keys(instance, pairs))


def forget_placements(instance: DagsterInstance, keys: Iterable[str]) -> None:
    """Drop the records of removed objects."""
    keys = list(keys)
    delete_kv(instance, [prefix + key for prefix in _PREFIXES for key in keys])


def recorded_placements(
    instance: DagsterInstance,
    keys: Iterable[str],
    fallback: Callable[[], Mapping[str, Placement]] | None = None,
) -> dict[str, Placement]:
    """Placement per key: what the sensor recorded, else what `fallback()` says
    (the configs folder, read only when a record is missing or incomplete), else
    what was recorded, with the default cluster, the deployment's retries and no
    table for what was not."""
    keys = list(keys)
    stored = instance.run_storage.get_cursor_values(
        {prefix + key for prefix in _PREFIXES for key in keys}
    )
    result: dict[str, Placement] = {}
    missing = []
    for key in keys:
        cluster, retries, table = (stored.get(prefix + key) for prefix in _PREFIXES)
        if cluster is None or retries is None or table is None:
            missing.append(key)
        else:
            result[key] = Placement(cluster, int(retries) if retries else None, table)
    declared = fallback() if missing and fallback is not None else {}
    for key in missing:
        if key in declared:
            result[key] = declared[key]
        else:  # recorded before retries or tables were, or not at all
            retries = stored.get(_RETRIES_PREFIX + key)
            result[key] = Placement(
                stored.get(_KV_PREFIX + key, DEFAULT_CLUSTER),
                int(retries) if retries else None,
                stored.get(_TABLE_PREFIX + key),
            )
    return result


def recorded_clusters(
    instance: DagsterInstance,
    keys: Iterable[str],
    fallback: Callable[[], Mapping[str, str]] | None = None,
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


def retry_tags(retries: Iterable[int | None], deployment_default: int) -> dict[str, str]:
    """Dagster's run retry tags for a run over objects declaring these `retries`.

    None when no object declares any (the deployment's `run_retries` applies
    as it is); otherwise the most any object of the run asks for (an object
    without `retries` counting as the deployment's default): a run is retried
    whole, so a pack is retried as often as its most-retried object needs.
    """
    retries = list(retries)
    if all(value is None for value in retries):
        return {}
    most = max(deployment_default if value is None else value for value in retries)
    return {RETRIES_TAG: str(most), RETRY_STRATEGY_TAG: RETRY_STRATEGY}
