"""On a stock deployment no coordinator tags a UI backfill's runs with their cluster:
the databricks target then runs them on the compute their objects name, as it runs
the sensor's runs (which carry the tag)."""

from __future__ import annotations

from dagster import DagsterRun, InitResourceContext

from fanout_dagster.databricks.step_launcher import IdempotentStepLauncher
from fanout_dagster.databricks.target import databricks_target_resources
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster.settings import Settings
from fanout_dagster_tests.databricks.test_databricks_launch import DATABRICKS, workspace_env
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS
from fanout_dagster_tests.orchestration.test_bronze import range_tags

__all__ = ["workspace_env"]  # the fixture, used below

DEFAULT_COMPUTE = {"existing": "0000-000000-fanoutdefault"}


def launcher_for(instance, tags: dict[str, str]) -> IdempotentStepLauncher:
    """The step launcher the databricks target builds for a run with these tags."""
    settings = Settings(**DATABRICKS, configs_dir=str(SAMPLE_CONFIGS))
    launcher_def = databricks_target_resources(settings)["pyspark_step_launcher"]
    context = InitResourceContext(
        resource_config=None,
        resources=None,  # type: ignore[arg-type]
        resource_def=launcher_def,
        all_resource_defs={},
        instance=instance,
        dagster_run=DagsterRun(job_name="__ASSET_JOB", run_id="0" * 36, tags=tags),
    )
    return launcher_def.resource_fn(context)


def test_a_run_without_a_cluster_tag_runs_on_the_compute_of_its_objects(workspace_env, instance):
    # crm-web_events and erp-inventory are on the sample's `heavy` job cluster.
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["crm-web_events", "erp-inventory"])
    ranged = launcher_for(instance, range_tags("crm-web_events", "erp-inventory"))
    assert "new" in ranged.run_config["cluster"], ranged.run_config["cluster"]
    single = launcher_for(instance, {"dagster/partition": "crm-web_events"})
    assert "new" in single.run_config["cluster"]
    listed = launcher_for(instance, {OBJECTS_TAG: "erp-inventory"})
    assert "new" in listed.run_config["cluster"]
    # A run's cluster tag (the sensor's, or the coordinator's) decides where it has one.
    tagged = launcher_for(instance, {OBJECTS_TAG: "erp-inventory", CLUSTER_TAG: "default"})
    assert tagged.run_config["cluster"] == DEFAULT_COMPUTE
    # An object without a valid config: the default compute (the step reports it missing).
    unknown = launcher_for(instance, {OBJECTS_TAG: "nope-nothing"})
    assert unknown.run_config["cluster"] == DEFAULT_COMPUTE
