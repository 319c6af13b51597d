"""End to end: the stock ``databricks_pyspark_step_launcher`` runs an asset on the emulator.

The launcher zips ``local_dagster_job_package_path`` (this test folder), uploads it with the
pickled step to DBFS, submits a ``spark_python_task`` running ``databricks_step_main.py`` and
polls the run and the events file. The remote side rebuilds the job from the zip: the job
(emulator_step_job.py) is pointed at by *file* so that dagster rewrites it to the module name
relative to the zipped folder (``emulator_step_job``), which proves the zip is what gets
imported. The "cluster" has the launcher's default libraries (dagster, dagster-databricks,
dagster-pyspark, databricks-sdk) and pyspark, nothing else.
"""

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableJob

from databricks_emulator import run_emulator
from databricks_emulator_tests import emulator_step_job
from databricks_emulator_tests.emulator_step_job import SECRET_KEY, SECRET_SCOPE, SECRET_VALUE


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
        recon_job = ReconstructableJob.for_file(emulator_step_job.__file__, "define_job")
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
