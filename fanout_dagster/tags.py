"""The run tags fanout_dagster sets and reads, in one place.

The run queue limits runs per value of CLUSTER_TAG (dagster.yaml), so every
bronze run carries it, however it was launched (sensors.py sets it on the runs
it requests, run_coordinator.py on every other bronze run).
"""

# The cluster a run's objects run on (an object's `cluster` key).
CLUSTER_TAG = "fanout/cluster"
# Every cluster a packed run touches, when it is more than one.
CLUSTERS_TAG = "fanout/clusters"
# The run's partition keys, comma-separated (keys never contain commas). The
# remote side of a Databricks step reads them: Dagster ships no dynamic
# partitions to the remote step for ranged runs.
OBJECTS_TAG = "fanout/objects"
# The config content hash a sensor run was requested for.
CONFIG_HASH_TAG = "fanout/config_hash"
