"""Documented workspace limits: concurrently active task runs, idempotency token length."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest
from databricks.sdk.service import jobs

from databricks_emulator import DatabricksEmulator, run_emulator
from databricks_emulator_tests.test_databricks_emulator import upload_script, wait_terminal


def post(emu: DatabricksEmulator, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{emu.host}{path}",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {emu.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_active_task_run_limit_answers_429(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu", max_active_task_runs=2) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        sleeper = upload_script(ws, "import time\ntime.sleep(600)\n")
        quick = upload_script(ws, "print('quick')\n")

        def task(key: str, script: str) -> dict[str, Any]:
            return {
                "task_key": key,
                "existing_cluster_id": "c",
                "spark_python_task": {"python_file": script},
            }

        status, first = post(
            emu,
            "/api/2.2/jobs/runs/submit",
            {"tasks": [task("a", sleeper)], "idempotency_token": "first"},
        )
        assert status == 200
        # Two more task runs would make three active ones: refused, nothing is created.
        status, body = post(
            emu, "/api/2.2/jobs/runs/submit", {"tasks": [task("b", quick), task("c", quick)]}
        )
        assert status == 429 and body["error_code"] == "RESOURCE_EXHAUSTED", body
        assert "2 concurrently active task runs" in body["message"]
        assert emu.stats()["runs_submitted"] == 1
        # A retry of the first submit (same token) is not a new run: still answered.
        assert post(
            emu,
            "/api/2.2/jobs/runs/submit",
            {"tasks": [task("a", sleeper)], "idempotency_token": "first"},
        ) == (200, first)
        # One more task fits.
        status, second = post(emu, "/api/2.2/jobs/runs/submit", {"tasks": [task("b", quick)]})
        assert status == 200
        wait_terminal(ws, second["run_id"])
        ws.jobs.cancel_run(first["run_id"])
        wait_terminal(ws, first["run_id"])
        # Finished runs free their places.
        status, third = post(
            emu, "/api/2.2/jobs/runs/submit", {"tasks": [task("b", quick), task("c", quick)]}
        )
        assert status == 200
        run, _ = wait_terminal(ws, third["run_id"])
        assert run.state is not None and run.state.result_state == jobs.RunResultState.SUCCESS


def test_idempotency_token_longer_than_64_characters_is_refused(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu") as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        script = upload_script(ws, "print('x')\n")
        task = jobs.SubmitTask.from_dict(
            {
                "task_key": "t",
                "existing_cluster_id": "c",
                "spark_python_task": {"python_file": script},
            }
        )
        with pytest.raises(BadRequest) as err:
            ws.jobs.submit(tasks=[task], idempotency_token="x" * 65)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "at most 64 characters" in str(err.value)
        run_id = ws.jobs.submit(tasks=[task], idempotency_token="x" * 64).bind()["run_id"]
        wait_terminal(ws, run_id)
