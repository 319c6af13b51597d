"""Settings -> Definitions: one asset, one sensor, resources chosen per target.

The one code path every way of loading fanout_dagster goes through: the
`BronzeFanout` component (component/bronze_fanout.py) resolves its YAML
attributes to a `Settings` and calls `build_definitions`; so does the remote
side of a Databricks step (definitions.py), from the environment.

The target is picked here and only here (`target`, see settings.py):
- `local` (default): each run attaches to a Spark Connect server (`spark:
  connect`, `make dev` starts a local one) or starts an embedded Spark
  (`spark: embedded`); bronze Delta tables `bronze.<table>` under warehouse/;
  no credentials;
- `databricks`: each step's objects load in a Databricks run, by one of two
  launch modes (`databricks_launch`, databricks/target.py): the
  dagster-databricks step launcher (the whole step on the cluster, staged on
  DBFS) or Dagster Pipes (a job run on a cluster or serverless compute,
  staged on a Unity Catalog volume, objects reported back as they finish).
"""

from __future__ import annotations

from typing import Any

from dagster import Definitions, ResourceDefinition, in_process_executor

from fanout_dagster.orchestration.bronze import build_bronze_asset, expectation_names
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.object_loader import LocalObjectLoader
from fanout_dagster.orchestration.resources.spark import (
    LocalSparkResource,
    SparkConnectResource,
    SparkResource,
)
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster.settings import Settings


def local_spark(settings: Settings) -> SparkResource:
    """Runs attach to a warm Spark Connect server, or start a Spark of their own."""
    if settings.spark == "connect":
        return SparkConnectResource(
            host=settings.spark_connect_host, port=settings.spark_connect_port
        )
    return LocalSparkResource(master=settings.spark_master, warehouse_dir=settings.spark_warehouse)


def local_resources(settings: Settings) -> dict[str, Any]:
    spark = local_spark(settings)
    bronze_tables = BronzeTables(schema_name=settings.bronze_schema, local_catalog=True)
    object_configs = ObjectConfigs.from_settings(settings)
    return {
        "spark": spark,
        "bronze_tables": bronze_tables,
        "object_configs": object_configs,
        # Objects load in the run's own process, on its SparkSession.
        "object_loader": LocalObjectLoader(
            spark=spark, bronze_tables=bronze_tables, object_configs=object_configs
        ),
        # No step launcher: the step runs in the run's own process.
        "pyspark_step_launcher": ResourceDefinition.none_resource(),
    }


def databricks_resources(settings: Settings) -> dict[str, Any]:
    from fanout_dagster.databricks.target import databricks_target_resources

    return databricks_target_resources(settings)


def build_definitions(settings: Settings | None = None, *, in_process: bool = True) -> Definitions:
    """The bronze asset, its sensor and the target's resources.

    `in_process`: make the in-process executor the code location's default. A
    bronze run has one step; the default multiprocess executor would start a
    second Python process (and import Dagster and this code again) to run it:
    seconds of CPU per run for nothing. The step launcher works the same under
    either executor. A project that sets an executor of its own passes False.
    """
    settings = settings or Settings()
    # Packing: how many objects one run takes from a backfill, and how many of
    # them load at once. Small objects want big packs (Spark start-up paid once);
    # large objects want 1 (see README, "Packing").
    bronze = build_bronze_asset(
        objects_per_run=settings.objects_per_run,
        threads_per_run=settings.threads_per_run,
        # One asset check per expectation name of the configs (read at load time).
        check_names=expectation_names(ObjectConfigs.from_settings(settings).load().objects),
    )
    sensor = build_object_sensor(
        objects_per_run=settings.objects_per_run, max_runs_per_tick=settings.max_runs_per_tick
    )
    if settings.target == "local":
        resources = local_resources(settings)
    else:
        resources = databricks_resources(settings)
    return Definitions(
        assets=[bronze],
        sensors=[sensor],
        resources=resources,
        executor=in_process_executor if in_process else None,
    )
