"""The code location: one asset, one sensor, resources chosen per target.

The target is picked here and only here, by FANOUT_TARGET:
- `local` (default): embedded Spark in the run process, Parquet bronze tables
  under warehouse/, no credentials;
- `databricks`: each step runs as a Databricks run through the dagster-databricks
  step launcher, on the cluster's SparkSession (resources/databricks.py).
"""

from __future__ import annotations

import os

from dagster import Definitions, ResourceDefinition, in_process_executor

from fanout_dagster.assets.bronze import build_bronze_asset
from fanout_dagster.resources.catalog import ObjectCatalog
from fanout_dagster.resources.spark import LocalSparkResource
from fanout_dagster.resources.warehouse import BronzeWarehouse
from fanout_dagster.sensors import DEFAULT_MAX_RUNS_PER_TICK, build_object_sensor

TARGETS = ("local", "databricks")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def local_resources() -> dict:
    return {
        "spark": LocalSparkResource(
            master=os.environ.get("FANOUT_SPARK_MASTER", "local[2]"),
            warehouse_dir=os.environ.get("FANOUT_WAREHOUSE", "warehouse"),
        ),
        "warehouse": BronzeWarehouse(
            format="parquet", location=os.environ.get("FANOUT_BRONZE_LOCATION", "warehouse/bronze")
        ),
        "catalog": ObjectCatalog.from_env(),
        # No step launcher: the step runs in the run's own process.
        "pyspark_step_launcher": ResourceDefinition.none_resource(),
    }


def databricks_resources() -> dict:
    from fanout_dagster.resources.databricks import databricks_target_resources

    return databricks_target_resources(ObjectCatalog.from_env())


def build_definitions(target: str | None = None) -> Definitions:
    target = target or os.environ.get("FANOUT_TARGET", "local")
    if target not in TARGETS:
        raise ValueError(f"FANOUT_TARGET={target!r}: expected one of {', '.join(TARGETS)}")
    # Packing: how many objects one run takes from a backfill, and how many of
    # them load at once. Small objects want big packs (Spark start-up paid once);
    # large objects want 1 (see README, "Packing").
    objects_per_run = _env_int("FANOUT_OBJECTS_PER_RUN", 1)
    bronze = build_bronze_asset(
        objects_per_run=objects_per_run,
        threads_per_run=_env_int("FANOUT_THREADS_PER_RUN", 4),
    )
    sensor = build_object_sensor(
        objects_per_run=objects_per_run,
        max_runs_per_tick=_env_int("FANOUT_MAX_RUNS_PER_TICK", DEFAULT_MAX_RUNS_PER_TICK),
    )
    resources = local_resources() if target == "local" else databricks_resources()
    return Definitions(
        assets=[bronze],
        sensors=[sensor],
        resources=resources,
        # A bronze run has one step. The default multiprocess executor would
        # start a second Python process (and import Dagster and this code
        # again) to run it: seconds of CPU per run for nothing. The step
        # launcher works the same under either executor.
        executor=in_process_executor,
    )


defs = build_definitions()
