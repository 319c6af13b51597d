"""The `objects` dynamic partitions: one partition per object config.

Keys come from objects.partition_key (code-name, safe alphabet). The sensor
adds them; nothing removes them automatically, because a partition carries the
object's materialization history (see orchestration/sensor.py).
"""

from dagster import DynamicPartitionsDefinition

OBJECTS_PARTITIONS_NAME = "objects"

objects_partitions = DynamicPartitionsDefinition(name=OBJECTS_PARTITIONS_NAME)
