"""The job the step-launcher test runs on the emulator (test_databricks_emulator_step_launcher).

The launcher zips this folder and the "cluster" imports this module from the zip: it imports
only what a cluster with the launcher's default libraries has (dagster, dagster-databricks,
pyspark), not pytest or the tests.
"""

# No `from __future__ import annotations`: dagster inspects the `context` annotation at runtime.

import os

import dagster as dg
from dagster_databricks import databricks_pyspark_step_launcher

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
