"""The `databricks` target: each bronze step runs as a Databricks run.

The stock `dagster-databricks` step launcher does the work: it zips the code,
stages it on DBFS, calls `runs/submit` with a `spark_python_task`, polls the
run and streams the step's events back. This module only decides, per Dagster
run, what to hand it:

- the cluster: the run's `fanout/cluster` tag names an entry of clusters.yaml
  (an existing cluster id, or a new job-cluster spec);
- the code bundle: the package and the configs folder, nothing else (zipping
  the repo root would ship the virtualenv);
- an idempotency token per run, step and attempt, so a retried submit can
  never start the same objects twice (the stock launcher sends none);
- environment variables for the remote side, never a credential: the token
  stays in this process (databricks-sdk's usual sources: DATABRICKS_HOST /
  DATABRICKS_TOKEN, or a ~/.databrickscfg profile).

On the cluster, the remote step rebuilds the same definitions with
FANOUT_REMOTE_STEP=1, where there is no launcher (the step is already remote)
and Spark is the cluster's session.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from dagster import InitResourceContext, resource
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

from fanout_dagster.objects import DEFAULT_CLUSTER
from fanout_dagster.resources.bronze_tables import BronzeTables
from fanout_dagster.resources.object_configs import ObjectConfigs
from fanout_dagster.resources.object_loader import LocalObjectLoader
from fanout_dagster.resources.spark import ClusterSparkResource
from fanout_dagster.settings import PROJECT_ROOT, Settings
from fanout_dagster.tags import CLUSTER_TAG

# Settings the remote side needs to rebuild the same definitions.
PASSED_THROUGH_SETTINGS = (
    "data_root",
    "configs_dir",
    "bronze_schema",
    "objects_per_run",
    "threads_per_run",
)


class ClusterConfigError(ValueError):
    pass


def load_cluster_definitions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Named clusters: `{name: {"existing": id} | {"new": spec}}` in the launcher's shape."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"{path}: cannot read cluster definitions: {exc}") from exc
    clusters = document.get("clusters")
    if not isinstance(clusters, Mapping) or not clusters:
        raise ClusterConfigError(f"{path}: expected a non-empty `clusters:` mapping")
    result = {}
    for name, spec in clusters.items():
        if (
            not isinstance(spec, Mapping)
            or len(spec) != 1
            or not (set(spec) <= {"existing_cluster_id", "new_cluster"})
        ):
            raise ClusterConfigError(
                f"{path}: clusters.{name}: give exactly one of existing_cluster_id or new_cluster"
            )
        if "existing_cluster_id" in spec:
            result[name] = {"existing": str(spec["existing_cluster_id"])}
        else:
            result[name] = {"new": dict(spec["new_cluster"])}
    return result


def idempotency_token(run_id: str, step_key: str, attempt: int) -> str:
    # Databricks accepts at most 64 characters.
    return hashlib.sha256(f"{run_id}:{step_key}:{attempt}".encode()).hexdigest()[:48]


class IdempotentStepLauncher(DatabricksPySparkStepLauncher):
    """The stock launcher, submitting with a token derived from run, step and attempt.

    Databricks answers a repeated `runs/submit` carrying the same token with
    the run it already started, so a submit retried after a lost response
    never runs the objects twice.
    """

    def launch_step(self, step_context):
        token = idempotency_token(
            step_context.run_id, step_context.step.key, step_context.previous_attempt_count
        )
        self.run_config = {**self.run_config, "idempotency_token": token}
        yield from super().launch_step(step_context)


@cache
def code_bundle(configs_dir: str) -> str:
    """A folder holding only what the cluster needs: the package and the configs."""
    bundle = Path(tempfile.mkdtemp(prefix="fanout_bundle_"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "fanout_dagster", bundle / "fanout_dagster", ignore=ignore)
    shutil.copytree(configs_dir, bundle / "configs", ignore=ignore)
    return str(bundle)


def databricks_auth() -> tuple[str, str | None]:
    """Host and token from databricks-sdk's default sources (env vars or a config profile)."""
    from databricks.sdk.core import Config

    # Config() reads DATABRICKS_HOST / DATABRICKS_TOKEN / DATABRICKS_CONFIG_PROFILE itself.
    config = Config()
    if not config.host:
        raise ClusterConfigError(
            "no Databricks workspace configured: set DATABRICKS_HOST and DATABRICKS_TOKEN, or "
            "DATABRICKS_CONFIG_PROFILE naming a ~/.databrickscfg profile"
        )
    return config.host, config.token


def remote_env(settings: Settings) -> dict[str, str]:
    env = {Settings.env_name("remote_step"): "1", Settings.env_name("target"): "databricks"}
    for name in PASSED_THROUGH_SETTINGS:
        env[Settings.env_name(name)] = str(getattr(settings, name))
    return env


def build_step_launcher(
    *, run_tags: Mapping[str, str], settings: Settings, object_configs: ObjectConfigs
) -> IdempotentStepLauncher:
    clusters = load_cluster_definitions(settings.clusters_path)
    name = run_tags.get(CLUSTER_TAG, DEFAULT_CLUSTER)
    if name not in clusters:
        raise ClusterConfigError(
            f"cluster {name!r} (run tag {CLUSTER_TAG}) is not defined in clusters.yaml "
            f"(defined: {', '.join(sorted(clusters))})"
        )
    host, token = databricks_auth()
    libraries = [{"pypi": {"package": spec}} for spec in settings.cluster_libraries.split()]
    return IdempotentStepLauncher(
        run_config={
            "run_name": f"fanout_dagster bronze ({name})",
            "cluster": clusters[name],
            "libraries": libraries,
            # The cluster must already have dagster, dagster-databricks and
            # pyspark at the versions in pyproject.toml (README, "Run on Databricks").
            "install_default_libraries": settings.install_default_libraries,
        },
        permissions={},
        databricks_host=host,
        databricks_token=token,
        secrets_to_env_variables=[],
        env_variables=remote_env(settings),
        staging_prefix=settings.dbfs_staging,
        wait_for_logs=False,
        max_completion_wait_time_seconds=settings.databricks_timeout_s,
        # Typed int by the launcher, but it only sleeps for it: fractions work.
        poll_interval_sec=settings.databricks_poll_s,  # type: ignore[arg-type]
        local_dagster_job_package_path=code_bundle(object_configs.configs_path),
        verbose_logs=False,
        add_dagster_env_variables=False,
    )


def databricks_target_resources(settings: Settings) -> dict[str, Any]:
    if "data_root" not in settings.model_fields_set:
        raise ClusterConfigError(
            "FANOUT_TARGET=databricks needs FANOUT_DATA_ROOT: where the cluster reads sources "
            "(e.g. /Volumes/main/raw/landing or dbfs:/mnt/landing)"
        )

    object_configs = ObjectConfigs.from_settings(settings)

    @resource(description="Runs the bronze step on the run's Databricks cluster.")
    def pyspark_step_launcher(context: InitResourceContext) -> IdempotentStepLauncher | None:
        if settings.remote_step:
            return None  # already on the cluster: run the step here
        assert context.dagster_run is not None
        return build_step_launcher(
            run_tags=context.dagster_run.tags, settings=settings, object_configs=object_configs
        )

    spark = ClusterSparkResource()
    bronze_tables = BronzeTables(schema_name=settings.bronze_schema, local_catalog=False)
    return {
        "spark": spark,
        "bronze_tables": bronze_tables,
        "object_configs": object_configs,
        # On the cluster, the step loads its objects on the cluster's session.
        "object_loader": LocalObjectLoader(
            spark=spark, bronze_tables=bronze_tables, object_configs=object_configs
        ),
        "pyspark_step_launcher": pyspark_step_launcher,
    }
