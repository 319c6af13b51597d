"""The `objects` dynamic partitions: one partition per object config.

Keys come from objects.partition_key (code-name, safe alphabet). The sensor
adds them; nothing removes them automatically, because a partition carries the
object's materialization history (see orchestration/sensor.py).
"""

from dagster import DagsterInstance, DynamicPartitionsDefinition
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

OBJECTS_PARTITIONS_NAME = "objects"

objects_partitions = DynamicPartitionsDefinition(name=OBJECTS_PARTITIONS_NAME)


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
