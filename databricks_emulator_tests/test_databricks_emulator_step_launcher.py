"""End to end: the stock ``databricks_pyspark_step_launcher`` runs an asset on the emulator.

The launcher zips ``local_dagster_job_package_path`` (this test folder), uploads it with the
pickled step to DBFS, submits a ``spark_python_task`` running ``databricks_step_main.py`` and
polls the run and the events file. The remote side rebuilds the job from the zip: the job is
pointed at by *file* so that dagster rewrites it to the module name relative to the zipped
folder (``test_databricks_emulator_step_launcher``), which proves the zip is what gets imported.

This module is imported on the "cluster" too, so keep its top level light.
"""

# No `from __future__ import annotations`: dagster inspects the `context` annotation at runtime.

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster_databricks import databricks_pyspark_step_launcher

from databricks_emulator import run_emulator

JOB_NAME = "emulator_e2e_job"
SECRET_SCOPE, SECRET_KEY, SECRET_VALUE = "e2e", "api_key", "s3cr3t-value"


@dg.asset(required_resource_keys={"pyspark_step_launcher"})
def emulator_spark_count(context: dg.AssetExecutionContext) -> None:
    from pyspark.sql import SparkSession

    count = SparkSession.builder.getOrCreate().range(10).count()
    # secrets_to_env_variables: the launcher's remote setup(dbutils, sc) exported this secret.
    secret_ok = os.environ.get("EMU_E2E_SECRET") == SECRET_VALUE
    print(
        f"EMULATOR_E2E_COUNT={count} secret_ok={secret_ok} on={os.environ.get('DATABRICKS_EMULATOR')}"
    )
    context.add_output_metadata({"count": count})


defs = dg.Definitions(
    assets=[emulator_spark_count],
    jobs=[dg.define_asset_job(JOB_NAME, executor_def=dg.in_process_executor)],
    resources={"pyspark_step_launcher": databricks_pyspark_step_launcher},
)


def define_job() -> dg.JobDefinition:
    return defs.resolve_job_def(JOB_NAME)


@pytest.mark.slow
def test_step_launcher_materializes_asset_on_emulator(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu", cluster_start_seconds=0.0) as emu:
        emu.set_secret(SECRET_SCOPE, SECRET_KEY, SECRET_VALUE)
        launcher_config = {
            "databricks_host": emu.host,
            "databricks_token": emu.token,
            "local_dagster_job_package_path": str(Path(__file__).parent),
            "staging_prefix": "/dagster_staging",
            "poll_interval_sec": 0.5,
            "secrets_to_env_variables": [
                {"name": "EMU_E2E_SECRET", "scope": SECRET_SCOPE, "key": SECRET_KEY}
            ],
            # Makes the launcher call runs/get for the cluster and PATCH the job's permissions.
            "permissions": {"job_permissions": {"CAN_VIEW": [{"user_name": "viewer@example.com"}]}},
            "run_config": {
                "run_name": "emulator-e2e",
                "cluster": {"existing": "e2e-cluster"},
            },
        }
        recon_job = ReconstructableJob.for_file(__file__, "define_job")
        with dg.instance_for_test() as instance:
            result = dg.execute_job(
                recon_job,
                instance=instance,
                run_config={"resources": {"pyspark_step_launcher": {"config": launcher_config}}},
            )
            assert result.success
            messages = [e.message for e in instance.all_logs(result.run_id)]
            materializations = result.asset_materializations_for_node("emulator_spark_count")

        stats = emu.stats()

    # The remote stdout (captured by databricks_step_main, read back from DBFS) is in the event log.
    assert any("EMULATOR_E2E_COUNT=10 secret_ok=True on=1" in m for m in messages), messages
    assert materializations and materializations[0].metadata["count"].value == 10
    assert stats["runs_submitted"] == 1
    assert stats["runs_started"] == 1
    assert stats["runs_by_result_state"] == {"SUCCESS": 1}
    assert stats["api_calls"]["permissions/update"] == 1
    # The launcher always adds dagster, dagster-databricks, dagster-pyspark, databricks-sdk.
    (libraries,) = stats["libraries_by_run"].values()
    packages = {lib["pypi"]["package"].split("==")[0] for lib in libraries}
    assert {"dagster", "dagster-databricks", "dagster-pyspark", "databricks-sdk"} <= packages
