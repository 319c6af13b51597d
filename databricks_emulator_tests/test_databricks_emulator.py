"""The Databricks emulator against the real clients, over real HTTP, with real task processes.

Clients: ``databricks.sdk.WorkspaceClient`` and ``dagster_databricks.DatabricksClient``
(what the step launcher uses). Tasks are real subprocesses; the Spark tests start real local
PySpark. The end-to-end step-launcher test is in test_databricks_emulator_step_launcher.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster_databricks import DatabricksClient
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError, ResourceDoesNotExist
from databricks.sdk.service import jobs
from databricks.sdk.service.files import DbfsAPI

from databricks_emulator import DatabricksEmulator, run_emulator

TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[DatabricksEmulator]:
    with run_emulator(
        root=tmp_path / "emu", cluster_start_seconds=0.0, cancel_grace_seconds=3.0
    ) as emulator:
        yield emulator


@pytest.fixture
def ws(emu: DatabricksEmulator) -> WorkspaceClient:
    return WorkspaceClient(host=emu.host, token=emu.token)


def upload_script(ws: WorkspaceClient, code: str) -> str:
    path = f"/scripts/{uuid.uuid4().hex}.py"
    ws.dbfs.put(
        path, contents=base64.b64encode(textwrap.dedent(code).encode()).decode(), overwrite=True
    )
    return f"dbfs:{path}"


def submit(
    ws: WorkspaceClient,
    code: str,
    *,
    parameters: list[str] | None = None,
    cluster: dict[str, Any] | None = None,
    libraries: list[dict[str, Any]] | None = None,
    idempotency_token: str | None = None,
) -> int:
    task: dict[str, Any] = {
        "task_key": "main",
        "spark_python_task": {
            "python_file": upload_script(ws, code),
            "parameters": parameters or [],
        },
        **(cluster or {"existing_cluster_id": "test-cluster"}),
    }
    if libraries:
        task["libraries"] = libraries
    waiter = ws.jobs.submit(
        run_name="emulator-test",
        tasks=[jobs.SubmitTask.from_dict(task)],
        idempotency_token=idempotency_token,
    )
    return int(waiter.bind()["run_id"])


def wait_terminal(
    ws: WorkspaceClient, run_id: int, timeout: float = 120.0
) -> tuple[jobs.Run, list[str]]:
    """Poll runs/get quickly (the SDK's own waiter sleeps 1s, 2s, ...); return the run and the
    run-level life cycle states seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        run = ws.jobs.get_run(run_id)
        assert run.state is not None and run.state.life_cycle_state is not None
        state = run.state.life_cycle_state.value
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in TERMINAL:
            return run, seen
        assert time.monotonic() < deadline, f"run {run_id} stuck in {state}"
        time.sleep(0.1)


def task_output(ws: WorkspaceClient, run: jobs.Run) -> jobs.RunOutput:
    assert run.tasks and run.tasks[0].run_id is not None
    return ws.jobs.get_run_output(run.tasks[0].run_id)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- auth ------------------------------------------------------------------------------------------


def test_bearer_token_is_required(emu: DatabricksEmulator) -> None:
    bad = WorkspaceClient(host=emu.host, token="not-the-token")
    with pytest.raises(DatabricksError) as err:
        bad.dbfs.get_status("/")
    assert err.value.error_code == "UNAUTHENTICATED"

    request = urllib.request.Request(
        f"{emu.host}/api/2.2/jobs/runs/list"
    )  # no Authorization header
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(request, timeout=10)
    assert http_err.value.code == 401
    body = json.loads(http_err.value.read())
    assert set(body) == {"error_code", "message"} and body["error_code"] == "UNAUTHENTICATED"
    assert emu.token not in json.dumps(body)

    # The admin API is protected too.
    with pytest.raises(urllib.error.HTTPError) as admin_err:
        urllib.request.urlopen(f"{emu.host}/emulator/stats", timeout=10)
    assert admin_err.value.code == 401

    good = WorkspaceClient(host=emu.host, token=emu.token)
    assert good.current_user.me().user_name == "emulator@localhost"


# -- DBFS ------------------------------------------------------------------------------------------


def test_dbfs_put_read_status_delete(emu: DatabricksEmulator, ws: WorkspaceClient) -> None:
    ws.dbfs.put(
        "/data/hello.txt", contents=base64.b64encode(b"hello dbfs").decode(), overwrite=True
    )
    status = ws.dbfs.get_status("dbfs:/data/hello.txt")
    assert (status.path, status.is_dir, status.file_size) == ("/data/hello.txt", False, 10)
    assert ws.dbfs.get_status("/data").is_dir
    assert (emu.dbfs_root / "data" / "hello.txt").read_bytes() == b"hello dbfs"

    read = ws.dbfs.read("/data/hello.txt", offset=6, length=100)
    assert read.data is not None
    assert (read.bytes_read, base64.b64decode(read.data)) == (4, b"dbfs")
    past_end = ws.dbfs.read("/data/hello.txt", offset=10, length=100)
    assert (past_end.bytes_read, past_end.data) == (0, "")
    assert [f.path for f in ws.dbfs.list("/data")] == ["/data/hello.txt"]

    with pytest.raises(DatabricksError) as exists:
        ws.dbfs.create("/data/hello.txt", overwrite=False)
    assert exists.value.error_code == "RESOURCE_ALREADY_EXISTS"

    ws.dbfs.delete("/data/hello.txt")
    for call in (
        lambda: ws.dbfs.get_status("/data/hello.txt"),
        lambda: ws.dbfs.read("/data/hello.txt"),
    ):
        with pytest.raises(ResourceDoesNotExist) as missing:
            call()
        assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    ws.dbfs.delete("/data/hello.txt")  # deleting a missing path is not an error

    ws.dbfs.mkdirs("/tree/a/b")
    ws.dbfs.put("/tree/a/b/f", contents="", overwrite=True)
    with pytest.raises(DatabricksError) as not_empty:
        DbfsAPI(ws.api_client).delete("/tree")  # the raw API (the SDK mixin refuses client-side)
    assert not_empty.value.error_code == "IO_ERROR"
    ws.dbfs.delete("/tree", recursive=True)
    assert not (emu.dbfs_root / "tree").exists()


def test_dbfs_block_limits_and_the_launchers_client(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    client = DatabricksClient(host=emu.host, token=emu.token)
    payload = os.urandom(
        2 * 1024 * 1024 + 12345
    )  # > 2 blocks: exercises add-block and the read loop
    client.put_file(io.BytesIO(payload), "dbfs:///staging/big.bin", overwrite=True)
    assert client.read_file("dbfs:///staging/big.bin") == payload
    client.put_file(io.BytesIO(b""), "dbfs:///staging/empty.bin", overwrite=True)
    assert client.read_file("dbfs:///staging/empty.bin") == b""

    handle = ws.dbfs.create("/staging/too-big.bin", overwrite=True).handle
    assert handle is not None
    with pytest.raises(DatabricksError) as block:
        ws.dbfs.add_block(handle, base64.b64encode(b"x" * (1024 * 1024 + 1)).decode())
    assert block.value.error_code == "MAX_BLOCK_SIZE_EXCEEDED"
    with pytest.raises(DatabricksError) as read:
        ws.dbfs.read("/staging/big.bin", length=1024 * 1024 + 1)
    assert read.value.error_code == "MAX_READ_SIZE_EXCEEDED"
    with pytest.raises(ResourceDoesNotExist):
        ws.dbfs.close(handle + 1000)
    ws.dbfs.close(handle)  # an upload becomes visible on close (here: empty)
    assert ws.dbfs.get_status("/staging/too-big.bin").file_size == 0


# -- runs ------------------------------------------------------------------------------------------


SPARK_TASK = """
import os, sys
print("argv:", sys.argv[1:])
print("param file:", open(sys.argv[1]).read())
print("env:", os.environ["BRONZE_ROOT"], "conf:", spark.conf.get("spark.fanout.setting"))
print("range:", spark.range(100).count(), "sc sum:", sc.parallelize([1, 2, 3]).sum())
spark.range(5).write.mode("overwrite").parquet("dbfs:/bronze/numbers")  # dbfs:/ URIs work in Spark
print("read back:", spark.read.parquet("dbfs:/bronze/numbers").count())
dbutils.fs.put("dbfs:/notes/hello.txt", "written by dbutils", overwrite=True)
print("ls:", [f.name for f in dbutils.fs.ls("/notes")], "head:", dbutils.fs.head("/notes/hello.txt"))
print("secret ok:", dbutils.secrets.get("test-scope", "password") == "p@ss", dbutils.secrets.get("rest-scope", "k"))
print("scopes:", [s.name for s in dbutils.secrets.listScopes()])
from pyspark.dbutils import DBUtils
print("DBUtils(spark) is dbutils:", DBUtils(spark) is dbutils)
"""


@pytest.mark.slow
def test_spark_python_task_runs_with_spark_sc_dbutils(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    emu.set_secret("test-scope", "password", "p@ss")
    ws.secrets.create_scope("rest-scope")  # the workspace secrets REST API feeds dbutils too
    ws.secrets.put_secret("rest-scope", "k", string_value="from-rest")
    ws.dbfs.put(
        "/inputs/param.txt", contents=base64.b64encode(b"parameter file").decode(), overwrite=True
    )
    # A whl library must exist (it is installed on the task's path); pypi ones are recorded.
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("emulator_test_wheel/__init__.py", "")
    ws.dbfs.put(
        "/wheels/x.whl", contents=base64.b64encode(wheel.getvalue()).decode(), overwrite=True
    )
    libraries: list[dict[str, Any]] = [
        {"pypi": {"package": "requests==2.32.3"}},
        {"whl": "dbfs:/wheels/x.whl"},
    ]
    new_cluster = {
        "spark_version": "15.4.x-scala2.12",
        "node_type_id": "i3.xlarge",
        "num_workers": 0,
        "spark_env_vars": {"BRONZE_ROOT": "/bronze"},
        "spark_conf": {"spark.fanout.setting": "from-cluster-conf"},
    }
    run_id = submit(
        ws,
        SPARK_TASK,
        parameters=["/dbfs/inputs/param.txt"],
        cluster={"new_cluster": new_cluster},
        libraries=libraries,
    )

    run, seen = wait_terminal(ws, run_id)
    output = task_output(ws, run)
    assert run.state is not None
    assert run.state.result_state == jobs.RunResultState.SUCCESS, output.error_trace
    assert emu.run_state_history(run_id) == ["PENDING", "RUNNING", "TERMINATED"]
    assert seen[-1] == "TERMINATED" and set(seen) <= {"PENDING", "RUNNING", "TERMINATED"}

    logs = output.logs
    assert logs is not None
    assert "argv: ['" in logs and "param file: parameter file" in logs
    assert "env: /bronze conf: from-cluster-conf" in logs
    assert "range: 100 sc sum: 6" in logs and "read back: 5" in logs
    assert "ls: ['hello.txt'] head: written by dbutils" in logs
    assert "secret ok: True from-rest" in logs and "DBUtils(spark) is dbutils: True" in logs
    # What Spark wrote under dbfs:/ is visible through the DBFS API.
    assert any((f.path or "").endswith(".parquet") for f in ws.dbfs.list("/bronze/numbers"))

    assert run.tasks
    task = run.tasks[0]
    assert task.state is not None and task.cluster_instance is not None
    assert task.state.result_state == jobs.RunResultState.SUCCESS
    cluster_id = task.cluster_instance.cluster_id
    assert cluster_id and run.run_page_url and run.run_page_url.startswith(emu.host)
    assert run.start_time is not None and run.end_time is not None
    assert task.start_time is not None and task.end_time is not None
    assert run.start_time <= task.start_time <= task.end_time <= run.end_time
    assert [lib.as_dict() for lib in task.libraries or []] == libraries
    assert emu.stats()["libraries_by_run"][str(run_id)] == libraries
    # A new_cluster is a job cluster: gone after the run.
    cluster_state = ws.clusters.get(cluster_id).state
    assert cluster_state is not None and cluster_state.value == "TERMINATED"
    # As on Databricks, output belongs to task runs, not to a multi-task run.
    with pytest.raises(DatabricksError, match="multiple tasks"):
        ws.jobs.get_run_output(run_id)


def test_failing_task_reports_the_exception(ws: WorkspaceClient) -> None:
    run_id = submit(ws, "print('before the error')\nraise ValueError('boom 42')\n")
    run, _ = wait_terminal(ws, run_id)
    assert run.state is not None and run.state.state_message is not None
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "ValueError: boom 42" in run.state.state_message  # what the step launcher raises with
    output = task_output(ws, run)
    assert output.error == "ValueError: boom 42"
    assert output.error_trace is not None and output.logs is not None
    assert "Traceback" in output.error_trace and "raise ValueError('boom 42')" in output.error_trace
    assert "before the error" in output.logs


def test_multi_task_run_dependencies_and_cluster_log_delivery(ws: WorkspaceClient) -> None:
    ok, bad = (
        upload_script(ws, "print('fine')"),
        upload_script(ws, "raise RuntimeError('first failed')"),
    )
    log_cluster = {
        "num_workers": 0,
        "cluster_log_conf": {"dbfs": {"destination": "dbfs:/cluster-logs"}},
    }
    tasks: list[dict[str, Any]] = [
        {
            "task_key": "first",
            "existing_cluster_id": "c",
            "spark_python_task": {"python_file": bad},
        },
        {
            "task_key": "second",
            "depends_on": [{"task_key": "first"}],
            "existing_cluster_id": "c",
            "spark_python_task": {"python_file": ok},
        },
        {
            "task_key": "independent",
            "new_cluster": log_cluster,
            "spark_python_task": {"python_file": ok},
        },
    ]
    run_id = ws.jobs.submit(
        run_name="multi", tasks=[jobs.SubmitTask.from_dict(t) for t in tasks]
    ).bind()["run_id"]
    run, _ = wait_terminal(ws, run_id)
    assert run.tasks is not None
    results = {
        t.task_key: t.state.result_state.value
        for t in run.tasks
        if t.state is not None and t.state.result_state is not None
    }
    assert results == {"first": "FAILED", "second": "UPSTREAM_FAILED", "independent": "SUCCESS"}
    assert run.state is not None and run.state.state_message is not None
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "Task first failed with message: RuntimeError: first failed" in run.state.state_message
    assert len({t.run_id for t in run.tasks} | {run_id}) == 4  # every task run has its own id
    # The job cluster delivered its driver logs where cluster_log_conf points.
    cluster_instance = next(t for t in run.tasks if t.task_key == "independent").cluster_instance
    assert cluster_instance is not None
    delivered = ws.dbfs.read(
        f"/cluster-logs/{cluster_instance.cluster_id}/driver/stdout", length=1024 * 1024
    )
    assert delivered.data is not None
    assert b"fine" in base64.b64decode(delivered.data)


def test_run_timeout_ends_the_run_timedout(ws: WorkspaceClient) -> None:
    script = upload_script(ws, "import time\ntime.sleep(600)\n")
    task = {
        "task_key": "main",
        "existing_cluster_id": "c",
        "spark_python_task": {"python_file": script},
    }
    run_id = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)], timeout_seconds=1).bind()[
        "run_id"
    ]
    run, _ = wait_terminal(ws, run_id, timeout=60)
    assert run.state is not None
    assert (run.state.life_cycle_state, run.state.result_state) == (
        jobs.RunLifeCycleState.TERMINATED,
        jobs.RunResultState.TIMEDOUT,
    )
    assert run.state.user_cancelled_or_timedout


@pytest.mark.slow
def test_cancel_kills_the_task_and_its_spark_jvm(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    code = """
    import os, time
    spark.range(1).count()
    jvm = spark.sparkContext._gateway.proc.pid
    print(f"PIDS {os.getpid()} {jvm}", flush=True)
    time.sleep(600)
    """
    run_id = submit(ws, code)
    deadline = time.monotonic() + 120
    while True:
        run = ws.jobs.get_run(run_id)
        match = (
            re.search(r"PIDS (\d+) (\d+)", task_output(ws, run).logs or "") if run.tasks else None
        )
        if match:
            break
        assert run.state is not None and run.state.life_cycle_state is not None
        assert run.state.life_cycle_state.value not in TERMINAL, task_output(ws, run).error_trace
        assert time.monotonic() < deadline, "task never reported its pids"
        time.sleep(0.2)
    python_pid, jvm_pid = int(match.group(1)), int(match.group(2))
    assert not process_gone(python_pid) and not process_gone(jvm_pid)

    ws.jobs.cancel_run(run_id)
    run, _ = wait_terminal(ws, run_id, timeout=60)
    assert run.state is not None
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert run.state.result_state == jobs.RunResultState.CANCELED
    assert "TERMINATING" in emu.run_state_history(run_id)
    # Neither the task's python nor its JVM survives (not even as a zombie).
    assert process_gone(python_pid)
    deadline = time.monotonic() + 10
    while not process_gone(jvm_pid):
        assert time.monotonic() < deadline, f"Spark JVM {jvm_pid} outlived its cancelled task"
        time.sleep(0.1)


def test_idempotency_token_returns_the_same_run(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    first = submit(ws, "print('once')", idempotency_token="object-42-attempt-1")
    second = submit(ws, "print('twice?')", idempotency_token="object-42-attempt-1")
    assert first == second
    wait_terminal(ws, first)
    stats = emu.stats()
    assert (stats["runs_submitted"], stats["idempotent_replays"], stats["runs_started"]) == (
        1,
        1,
        1,
    )
    assert stats["api_calls"]["jobs/runs/submit"] == 2


def test_dropped_submit_response_and_sdk_retry(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    # The SDK retries a submit whose connection dropped (requests.ConnectionError is retryable).
    # With an idempotency token the retry gets the same run: the object runs once.
    emu.inject_faults(drop_submit_responses=1)
    run_id = submit(ws, "print('exactly once')", idempotency_token="drop-test")
    wait_terminal(ws, run_id)
    stats = emu.stats()
    assert stats["faults_injected"] == {"drop_submit_response": 1}
    assert stats["api_calls"]["jobs/runs/submit"] == 2
    assert (stats["runs_submitted"], stats["runs_started"]) == (1, 1)

    # Without a token the same silent retry starts a duplicate run.
    emu.reset_stats()
    emu.inject_faults(drop_submit_responses=1)
    duplicate = submit(ws, "print('maybe twice')")
    wait_terminal(ws, duplicate)
    assert emu.stats()["runs_submitted"] == 2


def test_throttling_and_unavailability_are_retried_by_the_sdk(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    run_id = submit(ws, "print('hi')")
    wait_terminal(ws, run_id)
    emu.reset_stats()

    emu.inject_faults(
        http_429=2, http_503=1, path_prefix="/api/2.2/jobs/runs/get", retry_after_seconds=0
    )
    state = ws.jobs.get_run(run_id).state
    assert state is not None and state.result_state == jobs.RunResultState.SUCCESS
    emu.inject_faults(http_503=1, path_prefix="/api/2.0/dbfs/", retry_after_seconds=0)
    assert ws.dbfs.get_status("/scripts").is_dir
    stats = emu.stats()
    assert stats["faults_injected"] == {"http_429": 2, "http_503": 2}
    assert stats["api_calls"]["jobs/runs/get"] == 4 and stats["api_calls"]["dbfs/get-status"] == 2

    # The wire format: Databricks error body plus Retry-After.
    emu.inject_faults(http_429=1, retry_after_seconds=7)
    request = urllib.request.Request(
        f"{emu.host}/api/2.2/jobs/runs/list", headers={"Authorization": f"Bearer {emu.token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 429 and err.value.headers["Retry-After"] == "7"
    assert json.loads(err.value.read())["error_code"] == "REQUEST_LIMIT_EXCEEDED"


def raw_get(emu: DatabricksEmulator, path: str) -> urllib.error.HTTPError | None:
    """GET ``path`` with plain urllib (no retries): the HTTP error answered, or None."""
    request = urllib.request.Request(
        f"{emu.host}{path}", headers={"Authorization": f"Bearer {emu.token}"}
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as err:
        return err
    return None


def test_throttling_faults_are_shaped_and_targeted_as_databricks_answers(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    run, _ = wait_terminal(ws, submit(ws, "print('hi')"))
    run_id = run.run_id
    assert run.tasks and run.tasks[0].run_id is not None
    task_run_id = run.tasks[0].run_id
    # 503 without Retry-After; a prefix matches whole path segments (runs/get, not
    # runs/get-output); a method restricts the fault to that method.
    emu.inject_faults(http_503=1, path_prefix="/api/2.2/jobs/runs/get", retry_after_seconds=None)
    emu.inject_faults(http_429=1, path_prefix="/api/2.0/dbfs", method="POST")
    assert raw_get(emu, f"/api/2.2/jobs/runs/get-output?run_id={task_run_id}") is None
    assert raw_get(emu, "/api/2.0/dbfs/get-status?path=/") is None
    err = raw_get(emu, f"/api/2.2/jobs/runs/get?run_id={run_id}")
    assert err is not None and err.code == 503 and "Retry-After" not in err.headers
    assert json.loads(err.read()) == {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": "The service is temporarily unavailable. Please try again later.",
    }
    assert emu.faults.pending()["http_429"] == 1  # still waiting for a POST under dbfs
    post = urllib.request.Request(
        f"{emu.host}/api/2.0/dbfs/mkdirs",
        data=b'{"path": "/x"}',
        headers={"Authorization": f"Bearer {emu.token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(post, timeout=10)
    assert posted.value.code == 429 and posted.value.headers["Retry-After"] == "1"
    assert json.loads(posted.value.read())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    served = emu.faults.served()
    assert [(f["call"], f["method"], f["status"], f["retry_after"]) for f in served] == [
        ("jobs/runs/get", "GET", 503, None),
        ("dbfs/mkdirs", "POST", 429, 1),
    ]


def test_a_submit_answered_503_after_its_work_is_replayed_by_its_token(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    """A gateway that answers 503 after the service started the run: the SDK retries the
    POST; the idempotency token makes the retry return that run, not start a second."""
    emu.inject_faults(unavailable_after_submit=1)
    run_id = submit(ws, "print('once')", idempotency_token="after-work-503")
    wait_terminal(ws, run_id)
    stats = emu.stats()
    assert stats["faults_injected"] == {"unavailable_after_submit": 1}
    assert stats["api_calls"]["jobs/runs/submit"] == 2
    assert (stats["runs_submitted"], stats["idempotent_replays"], stats["runs_started"]) == (
        1,
        1,
        1,
    )


def test_admin_rest_api(emu: DatabricksEmulator, ws: WorkspaceClient) -> None:
    def admin(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{emu.host}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {emu.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    assert (
        admin("POST", "/emulator/faults", {"http_503": 1, "retry_after_seconds": 0})["http_503"]
        == 1
    )
    admin("POST", "/emulator/secrets", {"scope": "s", "key": "k", "value": "v"})
    admin(
        "POST", "/emulator/clusters", {"cluster_id": "admin-cluster", "spark_env_vars": {"X": "1"}}
    )
    assert [s.name for s in ws.secrets.list_scopes()] == ["s"]  # first try got the injected 503
    assert ws.clusters.get("admin-cluster").spark_env_vars == {"X": "1"}
    stats = admin("GET", "/emulator/stats")
    assert (
        stats["faults_injected"] == {"http_503": 1}
        and stats["api_calls"]["secrets/scopes/list"] == 2
    )
    admin("POST", "/emulator/stats/reset", {})
    assert admin("GET", "/emulator/stats")["api_calls"] == {"emulator/stats": 1}


def test_unknown_run_and_cluster_errors(ws: WorkspaceClient) -> None:
    # Real Jobs/Clusters answer 400 INVALID_PARAMETER_VALUE "... does not exist"; the SDK maps it
    # to ResourceDoesNotExist.
    with pytest.raises(ResourceDoesNotExist) as run_err:
        ws.jobs.get_run(987654321)
    assert run_err.value.error_code == "INVALID_PARAMETER_VALUE"
    # (the SDK's re-mapping only covers runs/get*, so cancel surfaces the raw code)
    with pytest.raises(DatabricksError, match="Run 987654321 does not exist") as cancel_err:
        ws.jobs.cancel_run(987654321)
    assert cancel_err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(ResourceDoesNotExist):
        ws.clusters.get("0000-000000-nothere")
    with pytest.raises(DatabricksError) as bad:
        ws.api_client.do("POST", "/api/2.2/jobs/runs/submit", body={"tasks": [{"task_key": "x"}]})
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"


def test_legacy_single_task_submit_and_runs_list(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    script = upload_script(ws, "print('legacy form')")
    body = {
        "run_name": "legacy",
        "existing_cluster_id": "legacy-cluster",
        "libraries": [{"pypi": {"package": "pyyaml"}}],
        "spark_python_task": {"python_file": script},
    }
    response = ws.api_client.do("POST", "/api/2.0/jobs/runs/submit", body=body)
    assert isinstance(response, dict)
    run_id = response["run_id"]
    run, _ = wait_terminal(ws, run_id)
    assert run.state is not None and run.state.result_state == jobs.RunResultState.SUCCESS
    logs = ws.jobs.get_run_output(run_id).logs
    assert logs is not None and "legacy form" in logs  # single-task runs have output
    assert emu.stats()["libraries_by_run"][str(run_id)] == body["libraries"]
    listed = list(ws.jobs.list_runs(completed_only=True))
    assert [r.run_id for r in listed] == [run_id]


def test_cluster_start_latency_is_paid_once_per_existing_cluster_and_per_new_cluster(
    tmp_path: Path,
) -> None:
    with run_emulator(root=tmp_path / "emu", cluster_start_seconds=0.5) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        emu.define_cluster("warm-pool", spark_env_vars={"POOL": "warm"})
        pool_state = ws.clusters.get("warm-pool").state
        assert pool_state is not None and pool_state.value == "TERMINATED"

        # Two runs arriving together share the single start of the stopped cluster...
        code = "import os, time; time.sleep(1.5); print('pool', os.environ['POOL'])"
        both = [submit(ws, code, cluster={"existing_cluster_id": "warm-pool"}) for _ in range(2)]
        runs = [wait_terminal(ws, r)[0] for r in both]
        assert all(r.state and r.state.result_state == jobs.RunResultState.SUCCESS for r in runs)
        # ...and later runs find it warm.
        later = submit(ws, "print('warm')", cluster={"existing_cluster_id": "warm-pool"})
        wait_terminal(ws, later)
        stats = emu.stats()
        assert (stats["cluster_starts"], stats["cluster_start_seconds_total"]) == (1, 0.5)
        assert stats["max_concurrent_running_per_cluster"]["warm-pool"] == 2
        assert "pool warm" in (task_output(ws, runs[0]).logs or "")
        pool_state = ws.clusters.get("warm-pool").state
        assert pool_state is not None and pool_state.value == "RUNNING"

        # Each new_cluster task pays the start again.
        for _ in range(2):
            wait_terminal(
                ws, submit(ws, "print('job cluster')", cluster={"new_cluster": {"num_workers": 0}})
            )
        stats = emu.stats()
        assert (stats["cluster_starts"], stats["cluster_start_seconds_total"]) == (3, 1.5)
        assert stats["runs_started"] == 5


def test_stopping_the_emulator_kills_running_tasks(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu") as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        run_id = submit(
            ws, "import os, time\nprint('PID', os.getpid(), flush=True)\ntime.sleep(600)\n"
        )
        deadline = time.monotonic() + 60
        while not (
            match := re.search(
                r"PID (\d+)", emu.run_page(run_id)["task_logs"]["main"]["stdout_tail"]
            )
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert process_gone(int(match.group(1)))
    assert emu.runs.get({"run_id": str(run_id)})["state"]["life_cycle_state"] == "INTERNAL_ERROR"


def test_cli_prints_what_to_export(tmp_path: Path) -> None:
    config = tmp_path / "clusters.json"
    config.write_text(
        json.dumps({"clusters": {"dev-cluster": {"spark_env_vars": {"A": "1"}, "running": True}}})
    )
    cli = [sys.executable, "-m", "databricks_emulator", "--port", "0"]
    proc = subprocess.Popen(
        [*cli, "--root", str(tmp_path / "root"), "--cluster-config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        exports: dict[str, str] = {}
        while len(exports) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if m := re.match(r"\s*export (DATABRICKS_HOST|DATABRICKS_TOKEN)=(\S+)", line):
                exports[m.group(1)] = m.group(2)
        assert exports["DATABRICKS_HOST"].startswith("http://127.0.0.1:")
        ws = WorkspaceClient(host=exports["DATABRICKS_HOST"], token=exports["DATABRICKS_TOKEN"])
        assert ws.current_user.me().user_name == "emulator@localhost"
        cluster = ws.clusters.get("dev-cluster")
        assert cluster.state is not None
        assert (cluster.state.value, cluster.spark_env_vars) == ("RUNNING", {"A": "1"})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        proc.stderr.close()
