"""The `databricks` target: each bronze step runs as a Databricks run, by one
of two launch modes, one per deployment (`databricks_launch`):

- `step_launcher` (default, step_launcher.py): the whole step on the cluster,
  staged on DBFS;
- `pipes` (pipes.py): the step stays here and submits a Databricks job run
  through Dagster Pipes; the remote side runs only this package's loading loop
  and reports each object back through a Unity Catalog volume. Classic
  clusters or serverless compute; no DBFS.

Both modes take their compute from clusters.yaml (clusters.py), hand Databricks
what submission.py builds, and ride out throttling (429) and unavailability
(503) with backoff, for a bounded time (api.py).
"""

from __future__ import annotations

from typing import Any

from dagster import InitResourceContext, ResourceDefinition, resource

from fanout_dagster.databricks.clusters import ClusterConfigError, load_cluster_definitions
from fanout_dagster.databricks.pipes import PipesObjectLoader
from fanout_dagster.databricks.step_launcher import IdempotentStepLauncher, build_step_launcher
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.object_loader import LocalObjectLoader
from fanout_dagster.orchestration.resources.spark import ClusterSparkResource
from fanout_dagster.settings import Settings


def databricks_target_resources(settings: Settings) -> dict[str, Any]:
    if "data_root" not in settings.model_fields_set:
        raise ClusterConfigError(
            "FANOUT_TARGET=databricks needs FANOUT_DATA_ROOT: where the cluster reads sources "
            "(e.g. /Volumes/main/raw/landing or dbfs:/mnt/landing)"
        )
    spark = ClusterSparkResource()
    bronze_tables = BronzeTables(schema_name=settings.bronze_schema, local_catalog=False)

    if settings.remote_step:
        # The step launcher's cluster side: load here, with the bundle's configs.
        object_configs = ObjectConfigs.from_settings(settings)
        return {
            "spark": spark,
            "bronze_tables": bronze_tables,
            "object_configs": object_configs,
            "object_loader": LocalObjectLoader(
                spark=spark, bronze_tables=bronze_tables, object_configs=object_configs
            ),
            "pyspark_step_launcher": ResourceDefinition.none_resource(),
        }

    clusters = load_cluster_definitions(settings.clusters_path)
    # An object naming a cluster clusters.yaml lacks is a config error (file and field).
    object_configs = ObjectConfigs.from_settings(settings, known_clusters=sorted(clusters))
    common = {"spark": spark, "bronze_tables": bronze_tables, "object_configs": object_configs}

    if settings.databricks_launch == "pipes":
        if not settings.databricks_volume:
            raise ClusterConfigError(
                "FANOUT_DATABRICKS_LAUNCH=pipes needs FANOUT_DATABRICKS_VOLUME: a Unity Catalog "
                "volume folder for the code bundle and the Pipes messages "
                "(e.g. /Volumes/main/ops/fanout)"
            )
        return {
            **common,
            "object_loader": PipesObjectLoader.from_settings(settings, object_configs),
            # The step runs here; only the loading runs on Databricks.
            "pyspark_step_launcher": ResourceDefinition.none_resource(),
        }

    serverless = sorted(name for name, c in clusters.items() if c.kind == "serverless")
    if serverless:
        raise ClusterConfigError(
            f"{settings.clusters_path}: clusters.{serverless[0]}.serverless: serverless compute "
            "needs FANOUT_DATABRICKS_LAUNCH=pipes (FANOUT_DATABRICKS_LAUNCH=step_launcher runs "
            "on clusters only)"
        )

    @resource(description="Runs the bronze step on the run's Databricks cluster.")
    def pyspark_step_launcher(context: InitResourceContext) -> IdempotentStepLauncher:
        assert context.dagster_run is not None
        return build_step_launcher(
            run_id=context.dagster_run.run_id,
            run_tags=context.dagster_run.tags,
            settings=settings,
            clusters=clusters,
            object_configs=object_configs,
        )

    return {
        **common,
        # On the cluster, the step loads its objects on the cluster's session.
        "object_loader": LocalObjectLoader(
            spark=spark, bronze_tables=bronze_tables, object_configs=object_configs
        ),
        "pyspark_step_launcher": pyspark_step_launcher,
    }
