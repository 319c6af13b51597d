"""The `step_launcher` launch mode: the stock `dagster-databricks` step launcher
zips the code, stages it on DBFS, submits a `spark_python_task` that unpickles
the step and runs the whole asset body on the cluster, and streams the step's
events back from DBFS. Needs a DBFS root and matching Dagster versions on the
cluster. Under it the remote step rebuilds the same definitions with
FANOUT_REMOTE_STEP=1 (target.py), where there is no launcher (the step is
already remote), Spark is the cluster's session and the configs are the bundle's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from typing import Any

from dagster._core.events import DagsterEvent
from dagster._core.execution.context.system import StepExecutionContext
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

from fanout_dagster.databricks.api import ThrottlePolicy, ride_out_throttling
from fanout_dagster.databricks.clusters import ClusterDefinition, cluster_for_run
from fanout_dagster.databricks.submission import (
    code_bundle,
    databricks_auth,
    databricks_run_name,
    idempotency_token,
    remote_env,
    run_keys,
)
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.settings import PROJECT_ROOT, Settings


class IdempotentStepLauncher(DatabricksPySparkStepLauncher):
    """The stock launcher, with what it lacks for fan-out loads:

    - a submit token derived from run, step and attempt: Databricks answers a
      repeated `runs/submit` carrying the same token with the run it already
      started, so a submit retried after a lost response never runs the
      objects twice;
    - a code bundle built for this step and removed after it, and the step's
      DBFS staging folder removed after it (success or failure);
    - the Databricks run's page in the step's log;
    - every API call it makes (DBFS, runs/submit, runs/get...) retried through
      throttling and unavailability, by `throttle`.
    """

    def __init__(self, *, configs_dir: str, throttle: ThrottlePolicy | None = None, **kwargs: Any):
        super().__init__(local_dagster_job_package_path=str(PROJECT_ROOT), **kwargs)
        self.configs_dir = configs_dir
        # The launcher calls Databricks only through this client.
        ride_out_throttling(self.databricks_runner.client.workspace_client, throttle)

    def launch_step(self, step_context: StepExecutionContext) -> Iterator[DagsterEvent]:
        token = idempotency_token(
            step_context.run_id, step_context.step.key, step_context.previous_attempt_count
        )
        self.run_config = {**self.run_config, "idempotency_token": token}
        bundle = code_bundle(self.configs_dir)
        self.local_dagster_job_package_path = bundle
        try:
            yield from super().launch_step(step_context)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            self._remove_staging(step_context)

    def _remove_staging(self, step_context: StepExecutionContext) -> None:
        folder = "/".join(
            [
                self.staging_prefix.rstrip("/"),
                step_context.run_id,
                self._sanitize_step_key(step_context.step.key),
            ]
        )
        dbfs = self.databricks_runner.client.workspace_client.dbfs
        try:
            dbfs.delete(folder, recursive=True)
            # The run's folder, once its last step's folder is gone.
            parent = folder.rsplit("/", 1)[0]
            if not list(dbfs.list(parent)):
                dbfs.delete(parent)
        except Exception as exc:  # noqa: BLE001 - cleanup must not mask the step's outcome
            step_context.log.warning(f"could not remove the DBFS staging folder {folder}: {exc}")

    def get_databricks_run_dagster_event(
        self, context: StepExecutionContext, databricks_run_id: int
    ) -> DagsterEvent:
        event = super().get_databricks_run_dagster_event(context, databricks_run_id)
        url = (event.event_specific_data.metadata or {}).get("databricks_run_url")  # type: ignore[union-attr]
        context.log.info(
            f"Databricks run {databricks_run_id}: {getattr(url, 'value', '(no run page)')}"
        )
        return event


def build_step_launcher(
    *,
    run_id: str,
    run_tags: Mapping[str, str],
    settings: Settings,
    clusters: Mapping[str, ClusterDefinition],
    object_configs: ObjectConfigs,
) -> IdempotentStepLauncher:
    cluster = cluster_for_run(clusters, run_tags)
    host, token = databricks_auth()
    libraries = [{"pypi": {"package": spec}} for spec in settings.cluster_libraries.split()]
    return IdempotentStepLauncher(
        run_config={
            "run_name": databricks_run_name(run_id, run_keys(run_tags), cluster.name),
            "cluster": cluster.launcher_cluster(),
            "libraries": libraries,
            # The cluster must already have dagster, dagster-databricks and
            # pyspark at the versions in pyproject.toml (docs/databricks.md).
            "install_default_libraries": settings.install_default_libraries,
            # Databricks stops the run itself if the Dagster side is gone.
            "timeout_seconds": settings.databricks_timeout_s,
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
        poll_interval_sec=settings.databricks_poll_s,
        configs_dir=object_configs.configs_path,
        verbose_logs=False,
        add_dagster_env_variables=False,
    )
