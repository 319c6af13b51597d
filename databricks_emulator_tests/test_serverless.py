"""Serverless compute: environments, validation, a Spark Connect-only `spark`, run shapes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest, DatabricksError
from databricks.sdk.service import jobs

from databricks_emulator import run_emulator
from databricks_emulator_tests.test_databricks_emulator import upload_script, wait_terminal

ENVIRONMENTS = [{"environment_key": "default", "spec": {"client": "3", "dependencies": ["pyyaml"]}}]

SERVERLESS_TASK = """
import importlib.util
import os
# The environment's dependencies, and nothing the emulator's own environment has besides.
print("importable:", [n for n in ("yaml", "pydantic", "dagster") if importlib.util.find_spec(n)])
from pyspark.sql import SparkSession
print("connect:", SparkSession.builder.getOrCreate().__class__.__module__)
try:
    spark.sparkContext
except Exception as exc:
    print("sparkContext:", type(exc).__name__, getattr(exc, "getErrorClass", lambda: None)())
spark.sql("CREATE SCHEMA IF NOT EXISTS main.bronze")
spark.range(3).write.format("delta").saveAsTable("main.bronze.serverless_t")
print("uc:", spark.table("main.bronze.serverless_t").count())
print("volume:", spark.read.text("/Volumes/main/raw/landing/in.txt").count())
dbutils.fs.put("dbfs:/serverless/hello.txt", "hi", overwrite=True)
print("dbutils:", dbutils.fs.head("dbfs:/serverless/hello.txt"))
"""


def submit_body(script: str, **task: Any) -> dict[str, Any]:
    return {
        "run_name": "serverless",
        "environments": ENVIRONMENTS,
        "tasks": [
            {
                "task_key": "main",
                "environment_key": "default",
                "spark_python_task": {"python_file": script},
                **task,
            }
        ],
    }


@pytest.mark.slow
def test_serverless_task_runs_on_spark_connect(tmp_path: Path) -> None:
    with run_emulator(
        root=tmp_path / "emu", volumes=["main.raw.landing"], cluster_start_seconds=30.0
    ) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        ws.files.upload("/Volumes/main/raw/landing/in.txt", io.BytesIO(b"a\nb\n"))
        script = upload_script(ws, SERVERLESS_TASK)
        submitted = ws.api_client.do("POST", "/api/2.2/jobs/runs/submit", body=submit_body(script))
        assert isinstance(submitted, dict)
        run_id = submitted["run_id"]
        run, _ = wait_terminal(ws, run_id, timeout=300)
        assert run.tasks and run.tasks[0].run_id is not None and run.state is not None
        output = ws.jobs.get_run_output(run.tasks[0].run_id)
        assert run.state.result_state == jobs.RunResultState.SUCCESS, output.error_trace
        logs = output.logs or ""
        assert "connect: pyspark.sql.connect.session" in logs
        assert "importable: ['yaml']" in logs, logs
        # What pyspark raises for sparkContext on a Connect session, as on Databricks serverless.
        assert "sparkContext: PySparkAttributeError JVM_ATTRIBUTE_NOT_SUPPORTED" in logs, logs
        assert "uc: 3" in logs and "volume: 2" in logs and "dbutils: hi" in logs
        # No cluster: no cluster_instance anywhere, no cluster start latency (30 s configured).
        raw = ws.api_client.do("GET", "/api/2.2/jobs/runs/get", query={"run_id": run_id})
        assert isinstance(raw, dict)
        assert "cluster_instance" not in raw and "cluster_instance" not in raw["tasks"][0]
        assert raw["tasks"][0]["environment_key"] == "default"
        assert raw["environments"] == ENVIRONMENTS
        assert output.metadata is not None
        assert "cluster_instance" not in output.metadata.as_dict()
        assert emu.stats()["cluster_starts"] == 0  # the 30 s cluster start was never paid


def test_serverless_validation_and_a_workspace_without_serverless(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu") as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        script = upload_script(ws, "print('x')")

        def refused(body: dict[str, Any]) -> DatabricksError:
            with pytest.raises(DatabricksError) as err:
                ws.api_client.do("POST", "/api/2.2/jobs/runs/submit", body=body)
            return err.value

        libs = refused(submit_body(script, libraries=[{"pypi": {"package": "requests"}}]))
        assert isinstance(libs, BadRequest) and libs.error_code == "INVALID_PARAMETER_VALUE"
        assert str(libs) == (
            "Libraries field is not supported for serverless task, please specify libraries in "
            "environment."
        )
        unknown = submit_body(script)
        unknown["tasks"][0]["environment_key"] = "other"
        assert "'other'" in str(refused(unknown))
        neither = submit_body(script)
        del neither["tasks"][0]["environment_key"]
        err = refused(neither)
        assert err.error_code == "INVALID_PARAMETER_VALUE"
        assert "requires a cluster or an environment" in str(err)
        assert emu.stats()["runs_submitted"] == 0

    with run_emulator(root=tmp_path / "emu2", serverless=False) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        script = upload_script(ws, "print('x')")
        with pytest.raises(DatabricksError) as off:
            ws.api_client.do("POST", "/api/2.2/jobs/runs/submit", body=submit_body(script))
        assert off.value.error_code == "FEATURE_DISABLED"
        # Classic compute still works there.
        task = {
            "task_key": "t",
            "existing_cluster_id": "c",
            "spark_python_task": {"python_file": script},
        }
        run_id = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)]).bind()["run_id"]
        run, _ = wait_terminal(ws, run_id)
        assert run.state is not None and run.state.result_state == jobs.RunResultState.SUCCESS
