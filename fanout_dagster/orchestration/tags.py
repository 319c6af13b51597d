"""The run tags fanout_dagster sets and reads, in one place.

The run queue limits runs per value of CLUSTER_TAG (dagster.yaml), so every
bronze run carries it, however it was launched (orchestration/sensor.py sets it on the runs
it requests, run_coordinator.py on every other bronze run).
"""

from dagster._core.storage import tags as dagster_tags

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
# Why the sensor requested the run: `config` (new or changed), `schedule` (a
# cron tick), `files` (a watched source changed), joined with '+' for several.
TRIGGER_TAG = "fanout/trigger"

# One tag per lock a run holds (locks.py), `<prefix><lock name>: "1"`: the run
# coordinator gives each such key a run limit of 1, so two runs that share an
# object, or write one bronze table, never run at once (run_coordinator.py).
# Under Dagster's hidden-tag prefix, as Dagster's own `.dagster/pool/<pool>`
# run tags are: a pack of 100 objects would otherwise show 200 tags on its run
# page, and the runs filter of the UI would offer one tag key per lock.
LOCK_TAG_PREFIX = f"{dagster_tags.HIDDEN_TAG_PREFIX}fanout-"
OBJECT_LOCK_TAG_PREFIX = f"{LOCK_TAG_PREFIX}object/"  # + partition key
TABLE_LOCK_TAG_PREFIX = f"{LOCK_TAG_PREFIX}table/"  # + bronze table name

# Dagster's run retry tags, set from the objects' `retries` (orchestration/sensor.py on the
# runs it requests, run_coordinator.py on the others).
RETRIES_TAG = dagster_tags.MAX_RETRIES_TAG  # dagster/max_retries
RETRY_STRATEGY_TAG = dagster_tags.RETRY_STRATEGY_TAG  # dagster/retry_strategy
RETRY_STRATEGY = "ALL_STEPS"  # a bronze run has one step: a retry runs it whole
