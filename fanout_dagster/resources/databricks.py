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
import os
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
from fanout_dagster.placement import CLUSTER_TAG
from fanout_dagster.resources.catalog import PROJECT_ROOT, ObjectCatalog
from fanout_dagster.resources.spark import ClusterSparkResource
from fanout_dagster.resources.warehouse import BronzeWarehouse

REMOTE_STEP_ENV = "FANOUT_REMOTE_STEP"
# Settings the remote side needs to rebuild the same definitions.
PASSED_THROUGH_ENV = (
    "FANOUT_DATA_ROOT",
    "FANOUT_CONFIGS_DIR",
    "FANOUT_BRONZE_FORMAT",
    "FANOUT_BRONZE_LOCATION",
    "FANOUT_OBJECTS_PER_RUN",
    "FANOUT_THREADS_PER_RUN",
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

    config = Config(profile=os.environ.get("DATABRICKS_CONFIG_PROFILE"))
    if not config.host:
        raise ClusterConfigError(
            "no Databricks workspace configured: set DATABRICKS_HOST and DATABRICKS_TOKEN, or "
            "DATABRICKS_CONFIG_PROFILE naming a ~/.databrickscfg profile"
        )
    return config.host, config.token


def remote_env() -> dict[str, str]:
    env = {REMOTE_STEP_ENV: "1", "FANOUT_TARGET": "databricks"}
    env.update({name: os.environ[name] for name in PASSED_THROUGH_ENV if os.environ.get(name)})
    return env


def build_step_launcher(
    *, run_tags: Mapping[str, str], catalog: ObjectCatalog
) -> IdempotentStepLauncher:
    clusters = load_cluster_definitions(
        os.environ.get("FANOUT_CLUSTERS_FILE", str(PROJECT_ROOT / "clusters.yaml"))
    )
    name = run_tags.get(CLUSTER_TAG, DEFAULT_CLUSTER)
    if name not in clusters:
        raise ClusterConfigError(
            f"cluster {name!r} (run tag {CLUSTER_TAG}) is not defined in clusters.yaml "
            f"(defined: {', '.join(sorted(clusters))})"
        )
    host, token = databricks_auth()
    libraries = [
        {"pypi": {"package": spec}}
        for spec in os.environ.get("FANOUT_CLUSTER_LIBRARIES", "").split()
    ]
    return IdempotentStepLauncher(
        run_config={
            "run_name": f"fanout_dagster bronze ({name})",
            "cluster": clusters[name],
            "libraries": libraries,
            # The cluster must already have dagster, dagster-databricks and
            # pyspark at the versions in pyproject.toml (README, "Run on Databricks").
            "install_default_libraries": os.environ.get("FANOUT_INSTALL_DEFAULT_LIBRARIES") == "1",
        },
        permissions={},
        databricks_host=host,
        databricks_token=token,
        secrets_to_env_variables=[],
        env_variables=remote_env(),
        staging_prefix=os.environ.get("FANOUT_DBFS_STAGING", "/dagster_staging"),
        wait_for_logs=False,
        max_completion_wait_time_seconds=int(os.environ.get("FANOUT_DATABRICKS_TIMEOUT_S", "3600")),
        poll_interval_sec=float(os.environ.get("FANOUT_DATABRICKS_POLL_S", "5")),
        local_dagster_job_package_path=code_bundle(catalog.configs_path),
        verbose_logs=False,
        add_dagster_env_variables=False,
    )


def databricks_target_resources(catalog: ObjectCatalog) -> dict:
    if not os.environ.get("FANOUT_DATA_ROOT"):
        raise ClusterConfigError(
            "FANOUT_TARGET=databricks needs FANOUT_DATA_ROOT: where the cluster reads sources "
            "(e.g. /Volumes/main/raw/landing or dbfs:/mnt/landing)"
        )

    @resource(description="Runs the bronze step on the run's Databricks cluster.")
    def pyspark_step_launcher(context: InitResourceContext):
        if os.environ.get(REMOTE_STEP_ENV) == "1":
            return None  # already on the cluster: run the step here
        return build_step_launcher(run_tags=context.dagster_run.tags, catalog=catalog)

    return {
        "spark": ClusterSparkResource(),
        "warehouse": BronzeWarehouse(
            format=os.environ.get("FANOUT_BRONZE_FORMAT", "delta"),
            location=os.environ.get("FANOUT_BRONZE_LOCATION", "bronze"),
        ),
        "catalog": catalog,
        "pyspark_step_launcher": pyspark_step_launcher,
    }
