"""The `databricks` target: each bronze step runs as a Databricks run.

Two launch modes, one per deployment (`FANOUT_DATABRICKS_LAUNCH`, read in
definitions.py through `databricks_target_resources`):

- `step_launcher` (default): the stock `dagster-databricks` step launcher zips
  the code, stages it on DBFS, submits a `spark_python_task` that unpickles the
  step and runs the whole asset body on the cluster, and streams the step's
  events back from DBFS. Needs a DBFS root and matching Dagster versions on
  the cluster.
- `pipes`: the step stays here and submits a Databricks job run through
  Dagster Pipes (databricks/pipes.py): the remote side runs only this
  package's loading loop and reports each object back through a Unity Catalog
  volume. Classic clusters or serverless compute; no DBFS.

This module decides, per Dagster run, what either mode hands Databricks:

- the compute: the run's `fanout/cluster` tag names an entry of clusters.yaml
  (`existing_cluster_id`, `new_cluster`, or - Pipes only - `serverless`);
- the code bundle: the package and the configs folder, nothing else (zipping
  the repo root would ship the virtualenv), built per run and removed after it
  along with the run's remote staging folder;
- an idempotency token per run, step and attempt, so a retried submit can
  never start the same objects twice (the stock launcher sends none);
- `timeout_seconds`, so Databricks stops a run whose Dagster side died, and a
  run name carrying the Dagster run id and its objects;
- environment variables for the remote side, never a credential: the token
  stays in this process (databricks-sdk's usual sources: DATABRICKS_HOST /
  DATABRICKS_TOKEN, or a ~/.databrickscfg profile).

Under the step launcher the remote step rebuilds the same definitions with
FANOUT_REMOTE_STEP=1, where there is no launcher (the step is already remote),
Spark is the cluster's session and the configs are the bundle's.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from dagster import InitResourceContext, ResourceDefinition, resource
from dagster._core.events import DagsterEvent
from dagster._core.execution.context.system import StepExecutionContext
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

from fanout_dagster.core.objects import DEFAULT_CLUSTER, ObjectConfig
from fanout_dagster.orchestration.claims import configs_of, held_claims
from fanout_dagster.orchestration.partitions import run_partition_keys
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.object_loader import LocalObjectLoader
from fanout_dagster.orchestration.resources.spark import ClusterSparkResource
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster.settings import PROJECT_ROOT, Settings

# Settings the remote side of the step launcher needs to rebuild the same
# definitions. Not configs_dir: the remote side reads the bundle's configs.
PASSED_THROUGH_SETTINGS = (
    "data_root",
    "bronze_schema",
    "objects_per_run",
    "threads_per_run",
)
# Where the bundle puts the configs, relative to its root (the remote PROJECT_ROOT).
BUNDLED_CONFIGS = "configs"
RUN_NAME_LIMIT = 200


class ClusterConfigError(ValueError):
    """The deployment's Databricks settings or clusters.yaml are wrong (names what to fix)."""


ComputeKind = Literal["existing", "new", "serverless"]


@dataclass(frozen=True)
class ClusterDefinition:
    """One entry of clusters.yaml: an all-purpose cluster, a job cluster, or serverless."""

    name: str
    kind: ComputeKind
    existing_cluster_id: str | None = None
    new_cluster: dict[str, Any] = field(default_factory=dict)
    serverless: dict[str, Any] = field(default_factory=dict)  # the environment spec

    def launcher_cluster(self) -> dict[str, Any]:
        """The step launcher's `run_config.cluster`."""
        if self.kind == "existing":
            return {"existing": self.existing_cluster_id}
        if self.kind == "new":
            return {"new": launcher_new_cluster(self.new_cluster)}
        raise ClusterConfigError(
            f"clusters.{self.name}: serverless compute needs FANOUT_DATABRICKS_LAUNCH=pipes "
            "(the step launcher runs on clusters only)"
        )


def load_cluster_definitions(path: str | Path) -> dict[str, ClusterDefinition]:
    """Named clusters from clusters.yaml, each with exactly one form of compute."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"{path}: cannot read cluster definitions: {exc}") from exc
    clusters = document.get("clusters") if isinstance(document, Mapping) else None
    if not isinstance(clusters, Mapping) or not clusters:
        raise ClusterConfigError(f"{path}: expected a non-empty `clusters:` mapping")
    forms = {"existing_cluster_id", "new_cluster", "serverless"}
    result = {}
    for name, spec in clusters.items():
        where = f"{path}: clusters.{name}"
        if not isinstance(spec, Mapping) or len(spec) != 1 or not (set(spec) <= forms):
            raise ClusterConfigError(
                f"{where}: give exactly one of existing_cluster_id, new_cluster or serverless"
            )
        if "existing_cluster_id" in spec:
            result[name] = ClusterDefinition(
                name, "existing", existing_cluster_id=str(spec["existing_cluster_id"])
            )
        elif "new_cluster" in spec:
            if not isinstance(spec["new_cluster"], Mapping):
                raise ClusterConfigError(
                    f"{where}.new_cluster: expected a mapping (a cluster spec)"
                )
            result[name] = ClusterDefinition(name, "new", new_cluster=dict(spec["new_cluster"]))
        else:
            environment = spec["serverless"] or {}
            if not isinstance(environment, Mapping):
                raise ClusterConfigError(
                    f"{where}.serverless: expected a mapping (an environment spec, or {{}})"
                )
            dependencies = environment.get("dependencies", [])
            if not isinstance(dependencies, list) or not all(
                isinstance(d, str) for d in dependencies
            ):
                raise ClusterConfigError(
                    f"{where}.serverless.dependencies: expected a list of pip requirements"
                )
            result[name] = ClusterDefinition(name, "serverless", serverless=dict(environment))
    return result


def launcher_new_cluster(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A job-cluster spec in the step launcher's shape (`nodes`, `size`); clusters.yaml
    may use that shape or Databricks' own (`node_type_id`, `num_workers`...)."""
    spec = dict(spec)
    if "nodes" in spec or "size" in spec:
        return spec
    if "instance_pool_id" in spec:
        nodes: dict[str, Any] = {"instance_pool_id": spec.pop("instance_pool_id")}
        if "driver_instance_pool_id" in spec:
            nodes["driver_instance_pool_id"] = spec.pop("driver_instance_pool_id")
    else:
        node_types = {"node_type_id": spec.pop("node_type_id", None)}
        if "driver_node_type_id" in spec:
            node_types["driver_node_type_id"] = spec.pop("driver_node_type_id")
        nodes = {"node_types": node_types}
    size = (
        {"autoscale": spec.pop("autoscale")}
        if "autoscale" in spec
        else {"num_workers": spec.pop("num_workers", 0)}
    )
    return {**spec, "nodes": nodes, "size": size}


def api_new_cluster(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A job-cluster spec in Databricks' own shape (what `runs/submit` takes)."""
    spec = dict(spec)
    if "nodes" not in spec and "size" not in spec:
        return spec
    nodes = spec.pop("nodes", {}) or {}
    size = spec.pop("size", {}) or {}
    if "instance_pool_id" in nodes:
        spec["instance_pool_id"] = nodes["instance_pool_id"]
        if "driver_instance_pool_id" in nodes:
            spec["driver_instance_pool_id"] = nodes["driver_instance_pool_id"]
    else:
        node_types = nodes.get("node_types", {}) or {}
        spec["node_type_id"] = node_types.get("node_type_id")
        if "driver_node_type_id" in node_types:
            spec["driver_node_type_id"] = node_types["driver_node_type_id"]
    if "autoscale" in size:
        spec["autoscale"] = size["autoscale"]
    else:
        spec["num_workers"] = size.get("num_workers", 0)
    return spec


def cluster_for_run(
    clusters: Mapping[str, ClusterDefinition], run_tags: Mapping[str, str]
) -> ClusterDefinition:
    name = run_tags.get(CLUSTER_TAG, DEFAULT_CLUSTER)
    if name not in clusters:
        raise ClusterConfigError(
            f"cluster {name!r} (run tag {CLUSTER_TAG}) is not defined in clusters.yaml "
            f"(defined: {', '.join(sorted(clusters))})"
        )
    return clusters[name]


def with_cluster_tag(
    run_tags: Mapping[str, str], objects: Callable[[], Sequence[ObjectConfig]]
) -> Mapping[str, str]:
    """The run's tags, with the cluster its objects name where the run has no cluster
    tag: a UI backfill's run on a stock deployment, which no coordinator tagged (a
    pack across clusters runs on its first object's; its claims hold a slot of each)."""
    if CLUSTER_TAG in run_tags:
        return run_tags
    found = objects()
    return {**run_tags, CLUSTER_TAG: found[0].cluster} if found else run_tags


def idempotency_token(run_id: str, step_key: str, attempt: int) -> str:
    # Databricks accepts at most 64 characters.
    return hashlib.sha256(f"{run_id}:{step_key}:{attempt}".encode()).hexdigest()[:48]


def databricks_run_name(
    run_id: str, keys: Sequence[str], cluster: str, limit: int = RUN_NAME_LIMIT
) -> str:
    """`fanout_dagster bronze <dagster run id> [cluster]: key, key, ... +N more`.

    The full Dagster run id, so a Databricks user finds the run in Dagster (and
    the Databricks run is found by searching its runs for the id); as many
    object keys as fit.
    """
    head = f"fanout_dagster bronze {run_id} [{cluster}]: "
    shown: list[str] = []
    for i, key in enumerate(keys):
        rest = len(keys) - i - 1
        more = f" +{rest} more" if rest else ""
        candidate = ", ".join([*shown, key])
        if len(head) + len(candidate) + len(more) > limit:
            return head + ", ".join(shown) + f" +{len(keys) - len(shown)} more"
        shown.append(key)
    return head + ", ".join(shown)


def run_keys(run_tags: Mapping[str, str], fallback: Sequence[str] = ()) -> list[str]:
    tagged = run_tags.get(OBJECTS_TAG)
    return tagged.split(",") if tagged else list(fallback)


def write_code_bundle(configs_dir: str, dest: Path) -> Path:
    """Into `dest`: only what the remote side needs, the package and the configs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "fanout_dagster", dest / "fanout_dagster", ignore=ignore)
    shutil.copytree(configs_dir, dest / BUNDLED_CONFIGS, ignore=ignore)
    return dest


def code_bundle(configs_dir: str) -> str:
    """A new temporary folder holding the code bundle; the caller removes it."""
    return str(write_code_bundle(configs_dir, Path(tempfile.mkdtemp(prefix="fanout_bundle_"))))


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
    """What the step launcher's remote side is told: the target, and the settings it needs.

    The configs are the uploaded bundle's: a configs folder named on the
    launching machine (FANOUT_CONFIGS_DIR) does not exist on the cluster.
    """
    env = {
        Settings.env_name("remote_step"): "1",
        Settings.env_name("target"): "databricks",
        Settings.env_name("configs_dir"): BUNDLED_CONFIGS,
    }
    for name in PASSED_THROUGH_SETTINGS:
        env[Settings.env_name(name)] = str(getattr(settings, name))
    return env


# --------------------------------------------------------------------------- step launcher


class IdempotentStepLauncher(DatabricksPySparkStepLauncher):
    """The stock launcher, with what it lacks for fan-out loads:

    - a submit token derived from run, step and attempt: Databricks answers a
      repeated `runs/submit` carrying the same token with the run it already
      started, so a submit retried after a lost response never runs the
      objects twice;
    - a code bundle built for this step and removed after it, and the step's
      DBFS staging folder removed after it (success or failure);
    - the Databricks run's page in the step's log.
    """

    def __init__(
        self, *, configs_dir: str, cluster_limits: Mapping[str, int] | None = None, **kwargs: Any
    ):
        super().__init__(local_dagster_job_package_path=str(PROJECT_ROOT), **kwargs)
        self.configs_dir = configs_dir
        self.cluster_limits = dict(cluster_limits or {})

    def launch_step(self, step_context: StepExecutionContext) -> Iterator[DagsterEvent]:
        token = idempotency_token(
            step_context.run_id, step_context.step.key, step_context.previous_attempt_count
        )
        self.run_config = {**self.run_config, "idempotency_token": token}
        bundle = code_bundle(self.configs_dir)
        self.local_dagster_job_package_path = bundle
        try:
            # The step's claims (orchestration/claims.py), held here: the remote
            # side sees a stand-in instance. From the bundle's configs, the ones
            # the remote side loads.
            with self._claims(step_context, bundle):
                yield from super().launch_step(step_context)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            self._remove_staging(step_context)

    def _claims(
        self, step_context: StepExecutionContext, bundle: str
    ) -> AbstractContextManager[None]:
        instance, run = step_context.instance, step_context.dagster_run
        keys = run_keys(run.tags, fallback=run_partition_keys(instance, run))
        objects = configs_of(str(Path(bundle) / BUNDLED_CONFIGS), keys)
        return held_claims(instance, run, step_context.step.key, objects, self.cluster_limits)

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
        cluster_limits=settings.cluster_limits,
        verbose_logs=False,
        add_dagster_env_variables=False,
    )


# --------------------------------------------------------------------------- the target


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
                spark=spark,
                bronze_tables=bronze_tables,
                object_configs=object_configs,
                take_claims=False,  # the launching process holds the step's claims
            ),
            "pyspark_step_launcher": ResourceDefinition.none_resource(),
        }

    clusters = load_cluster_definitions(settings.clusters_path)
    # An object naming a cluster clusters.yaml lacks is a config error (file and field).
    object_configs = ObjectConfigs.from_settings(settings, known_clusters=sorted(clusters))
    common = {"spark": spark, "bronze_tables": bronze_tables, "object_configs": object_configs}

    if settings.databricks_launch == "pipes":
        from fanout_dagster.databricks.pipes import PipesObjectLoader

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
        run = context.dagster_run
        assert run is not None

        def objects() -> list[ObjectConfig]:
            keys = run_keys(run.tags)
            if not keys and context.instance is not None:
                keys = run_partition_keys(context.instance, run)
            return object_configs.lookup(keys)[0]

        return build_step_launcher(
            run_id=run.run_id,
            run_tags=with_cluster_tag(run.tags, objects),
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
