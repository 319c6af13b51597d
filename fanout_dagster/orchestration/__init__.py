"""The Dagster definitions: the partitioned `bronze` asset, the object sensor,
the `objects` partitions, the run tags and the resources each target uses."""
