"""Databricks throttling (429) and unavailability (503), per call kind and launch mode.

The real clients each mode builds (the step launcher's dagster-databricks client, the Pipes
mode's databricks-sdk client) over real HTTP to the workspace emulator, which answers as
Databricks does: `429 REQUEST_LIMIT_EXCEEDED` with and without `Retry-After`,
`503 TEMPORARILY_UNAVAILABLE`. Every call kind either mode makes is retried with backoff and
succeeds; a call refused for longer than its budget fails with an error that names it; a
retried submit never starts a second run. Whole runs under throttling: e2e/test_faults.py.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import jobs

from databricks_emulator import DatabricksEmulator, run_emulator
from fanout_dagster.databricks.api import (
    DatabricksUnavailable,
    ThrottlePolicy,
    ThrottleRetryAdapter,
    ride_out_throttling,
)
from fanout_dagster.databricks.pipes import workspace_client
from fanout_dagster.databricks.step_launcher import IdempotentStepLauncher
from fanout_dagster.databricks.submission import idempotency_token
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster.settings import Settings
from fanout_dagster_tests.databricks.test_databricks_launch import DATABRICKS, step_launcher_for

VOLUME = "/Volumes/main/ops/fanout"
# Quick backoff for the per-call tests (the default starts at 1 s); Retry-After still rules.
QUICK = ThrottlePolicy(budget_s=60, first_delay_s=0.1, max_delay_s=1)


@dataclass
class Clients:
    """What each launch mode calls Databricks through, against one emulator."""

    emu: DatabricksEmulator
    launcher: IdempotentStepLauncher  # the step launcher (dagster-databricks' client inside)
    pipes: WorkspaceClient  # the Pipes mode's client
    run_id: int  # a finished run to read, and a task run of it
    task_run_id: int

    @property
    def launcher_ws(self) -> WorkspaceClient:
        return self.launcher.databricks_runner.client.workspace_client


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> Iterator[Clients]:
    root = tmp_path_factory.mktemp("throttling")
    with (
        run_emulator(root=root / "emu", volumes=["main.ops.fanout"]) as emu,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("DATABRICKS_HOST", emu.host)
        env.setenv("DATABRICKS_TOKEN", emu.token)
        launcher = step_launcher_for(
            Settings(**DATABRICKS), {CLUSTER_TAG: "default", OBJECTS_TAG: "erp-customers"}
        )
        pipes = workspace_client()
        for ws in (launcher.databricks_runner.client.workspace_client, pipes):
            # Both modes' clients carry the policy (the default one: 300 s, from 1 s)...
            adapter = ws.api_client._api_client._session.get_adapter(emu.host)
            assert isinstance(adapter, ThrottleRetryAdapter)
            assert adapter.policy == ThrottlePolicy()
            # ...which the per-call tests shorten, to keep them quick.
            ride_out_throttling(ws, QUICK)
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        ws.dbfs.put("/scripts/hello.py", contents=b64("print('hello')"), overwrite=True)
        run_id = submit(ws, "/scripts/hello.py")
        run = wait_done(ws, run_id)
        assert run.tasks and run.tasks[0].run_id is not None
        emu.reset_stats()
        yield Clients(emu, launcher, pipes, run_id, run.tasks[0].run_id)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def submit(ws: WorkspaceClient, script: str, token: str | None = None) -> int:
    task = {
        "task_key": "t",
        "existing_cluster_id": "c",
        "spark_python_task": {"python_file": f"dbfs:{script}"},
    }
    waiter = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)], idempotency_token=token)
    return int(waiter.bind()["run_id"])


def wait_done(ws: WorkspaceClient, run_id: int) -> jobs.Run:
    deadline = time.monotonic() + 120
    while True:
        run = ws.jobs.get_run(run_id)
        state = run.state.life_cycle_state if run.state else None
        if state in (jobs.RunLifeCycleState.TERMINATED, jobs.RunLifeCycleState.INTERNAL_ERROR):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(0.2)


# --------------------------------------------------------------------------- every call kind


@dataclass(frozen=True)
class CallKind:
    mode: str
    call: str  # the emulator's route name
    method: str
    path: str  # a path prefix of the route (whole segments)
    make: Callable[[Clients], Any]  # makes the call, returns what to check
    check: Callable[[Clients, Any], bool] = lambda _clients, _result: True


def dbfs_put(c: Clients) -> None:
    c.launcher.databricks_runner.client.put_file(
        io.BytesIO(b"x" * 10), "/dagster_staging/put.bin", overwrite=True
    )


def dbfs_delete(c: Clients) -> None:
    dbfs_put(c)
    c.launcher_ws.dbfs.delete("/dagster_staging", recursive=True)


def files_upload(c: Clients) -> None:
    c.pipes.files.upload(f"{VOLUME}/up/a.txt", io.BytesIO(b"uploaded"), overwrite=True)


def files_download(c: Clients) -> Any:
    files_upload(c)
    return c.pipes.files.download(f"{VOLUME}/up/a.txt")


def directory_listing(c: Clients) -> list[str | None]:
    # Each call kind sets up what it reads (its own calls of other methods are not
    # faulted): the tests of one module may run on different pytest workers.
    c.pipes.files.create_directory(f"{VOLUME}/listed/dir")
    return [e.name for e in c.pipes.files.list_directory_contents(f"{VOLUME}/listed")]


def directory_delete(c: Clients) -> None:
    c.pipes.files.create_directory(f"{VOLUME}/deleted/dir")
    c.pipes.files.delete_directory(f"{VOLUME}/deleted/dir")


def files_delete(c: Clients) -> None:
    files_upload(c)
    c.pipes.files.delete(f"{VOLUME}/up/a.txt")


CALLS = [
    # The step launcher: DBFS staging, the run, its events and logs, cleanup.
    CallKind("step_launcher", "dbfs/create", "POST", "/api/2.0/dbfs/create", dbfs_put),
    CallKind("step_launcher", "dbfs/add-block", "POST", "/api/2.0/dbfs/add-block", dbfs_put),
    CallKind("step_launcher", "dbfs/close", "POST", "/api/2.0/dbfs/close", dbfs_put),
    CallKind(
        "step_launcher",
        "dbfs/read",
        "GET",
        "/api/2.0/dbfs/read",
        lambda c: c.launcher.databricks_runner.client.read_file("/scripts/hello.py"),
        lambda _c, data: data == b"print('hello')",
    ),
    CallKind(
        "step_launcher",
        "dbfs/get-status",
        "GET",
        "/api/2.0/dbfs/get-status",
        lambda c: c.launcher_ws.dbfs.get_status("/scripts"),
        lambda _c, status: status.is_dir,
    ),
    CallKind(
        "step_launcher",
        "dbfs/list",
        "GET",
        "/api/2.0/dbfs/list",
        lambda c: [f.path for f in c.launcher_ws.dbfs.list("/scripts")],
        lambda _c, paths: "/scripts/hello.py" in paths,
    ),
    CallKind(
        "step_launcher",
        "dbfs/mkdirs",
        "POST",
        "/api/2.0/dbfs/mkdirs",
        lambda c: c.launcher_ws.dbfs.mkdirs("/dagster_staging/dir"),
    ),
    CallKind(
        "step_launcher",
        "dbfs/delete",
        "POST",
        "/api/2.0/dbfs/delete",
        dbfs_delete,
    ),
    CallKind(
        "step_launcher",
        "jobs/runs/get",
        "GET",
        "/api/2.2/jobs/runs/get",
        lambda c: c.launcher.databricks_runner.client.get_run_state(c.run_id),
        lambda _c, state: state.is_successful(),
    ),
    CallKind(
        "step_launcher",
        "jobs/runs/cancel",
        "POST",
        "/api/2.2/jobs/runs/cancel",
        lambda c: c.launcher_ws.jobs.cancel_run(c.run_id),
    ),
    # The Pipes mode: the volume staging, the context and messages, the run, its output.
    CallKind(
        "pipes",
        "fs/directories/put",
        "PUT",
        "/api/2.0/fs/directories",
        lambda c: c.pipes.files.create_directory(f"{VOLUME}/staging/dir"),
    ),
    CallKind("pipes", "fs/files/put", "PUT", "/api/2.0/fs/files", files_upload),
    CallKind(
        "pipes",
        "fs/files/get",
        "GET",
        "/api/2.0/fs/files",
        files_download,
        lambda _c, response: response.contents.read() == b"uploaded",
    ),
    CallKind(
        "pipes",
        "fs/directories/get",
        "GET",
        "/api/2.0/fs/directories",
        directory_listing,
        lambda _c, names: names == ["dir"],
    ),
    CallKind(
        "pipes",
        "fs/files/delete",
        "DELETE",
        "/api/2.0/fs/files",
        files_delete,
    ),
    CallKind(
        "pipes",
        "fs/directories/delete",
        "DELETE",
        "/api/2.0/fs/directories",
        directory_delete,
    ),
    CallKind(
        "pipes",
        "jobs/runs/get",
        "GET",
        "/api/2.2/jobs/runs/get",
        lambda c: c.pipes.jobs.get_run(c.run_id),
        lambda c, run: run.run_id == c.run_id,
    ),
    CallKind(
        "pipes",
        "jobs/runs/get-output",
        "GET",
        "/api/2.2/jobs/runs/get-output",
        lambda c: c.pipes.jobs.get_run_output(c.task_run_id),
        lambda _c, output: "hello" in (output.logs or ""),
    ),
    CallKind(
        "pipes",
        "jobs/runs/cancel",
        "POST",
        "/api/2.2/jobs/runs/cancel",
        lambda c: c.pipes.jobs.cancel_run(c.run_id),
    ),
]


@pytest.mark.parametrize("kind", CALLS, ids=lambda k: f"{k.mode}:{k.call}")
def test_every_call_kind_rides_out_throttling_and_unavailability(
    clients: Clients, kind: CallKind
) -> None:
    """429 with Retry-After, 429 without, 503 without, in a row on one call: it succeeds,
    waiting at least what Databricks asked and, without Retry-After, ever longer."""
    emu = clients.emu
    emu.clear_faults()
    for status, retry_after in ((429, 1), (429, None), (503, None)):
        emu.inject_faults(
            http_429=int(status == 429),
            http_503=int(status == 503),
            retry_after_seconds=retry_after,
            path_prefix=kind.path,
            method=kind.method,
        )
    before = len(emu.faults.served())

    result = kind.make(clients)
    done = time.monotonic()

    served = emu.faults.served()[before:]
    assert [(f["call"], f["status"], f["retry_after"]) for f in served] == [
        (kind.call, 429, 1),
        (kind.call, 429, None),
        (kind.call, 503, None),
    ], served
    assert kind.check(clients, result), result
    # Waits between the attempts: never sooner than Retry-After, then the backoff doubling.
    times = [f["at"] for f in served] + [done]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    least = [1.0, QUICK.first_delay_s * 2, QUICK.first_delay_s * 4]
    assert all(gap >= floor for gap, floor in zip(gaps, least, strict=True)), gaps


def test_a_submit_retried_through_throttling_and_a_lost_answer_starts_one_run(
    clients: Clients,
) -> None:
    """The step launcher's own submit (dagster-databricks' `submit_run`, with our token):
    throttled, then answered 503 after Databricks had started the run. The retry carries the
    same idempotency token, so Databricks answers with that run: one run."""
    emu = clients.emu
    emu.clear_faults()
    emu.reset_stats()
    path = "/api/2.2/jobs/runs/submit"
    emu.inject_faults(http_429=1, retry_after_seconds=None, path_prefix=path, method="POST")
    emu.inject_faults(http_503=1, retry_after_seconds=1, path_prefix=path, method="POST")
    emu.inject_faults(unavailable_after_submit=1)
    launcher = clients.launcher
    run_config = {**launcher.run_config, "idempotency_token": idempotency_token("r", "s", 0)}
    task = {"spark_python_task": {"python_file": "dbfs:/scripts/hello.py", "parameters": []}}

    run_id = launcher.databricks_runner.submit_run(run_config, task)

    stats = emu.stats()
    assert stats["faults_injected"] == {
        "http_429": 1,
        "http_503": 1,
        "unavailable_after_submit": 1,
    }
    assert stats["api_calls"]["jobs/runs/submit"] == 4
    assert (stats["runs_submitted"], stats["idempotent_replays"]) == (1, 1), stats
    assert wait_done(clients.pipes, run_id).run_id == run_id
    assert emu.stats()["runs_started"] == 1


# --------------------------------------------------------------------------- backoff and budget


@pytest.fixture
def emulator(tmp_path, monkeypatch) -> Iterator[DatabricksEmulator]:
    with run_emulator(root=tmp_path / "emu") as emu:
        monkeypatch.setenv("DATABRICKS_HOST", emu.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", emu.token)
        yield emu


@pytest.mark.timeout(120)
def test_without_retry_after_the_waits_double(emulator: DatabricksEmulator) -> None:
    """The Pipes mode's client as the loader builds it (default policy). databricks-sdk
    alone waits 1-2 s between attempts however long Databricks keeps refusing."""
    emulator.inject_faults(
        http_429=3, retry_after_seconds=None, path_prefix="/api/2.2/jobs/runs/list"
    )
    emulator.inject_faults(
        http_503=1, retry_after_seconds=None, path_prefix="/api/2.2/jobs/runs/list"
    )
    assert list(workspace_client().jobs.list_runs()) == []
    done = time.monotonic()
    times = [f["at"] for f in emulator.faults.served()] + [done]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    for attempt, gap in enumerate(gaps):
        assert gap >= ThrottlePolicy().first_delay_s * 2**attempt, gaps  # 1, 2, 4, 8 s


@pytest.mark.timeout(120)
def test_a_call_refused_beyond_its_budget_fails_naming_the_call(
    emulator: DatabricksEmulator,
) -> None:
    """Bounded: after its budget a call fails with an error that says which call, what
    Databricks answered and for how long; a Retry-After beyond the budget fails at once
    (databricks-sdk alone would sleep it out)."""
    ws = workspace_client(ThrottlePolicy(budget_s=6, first_delay_s=0.5))
    emulator.inject_faults(http_429=1000, retry_after_seconds=None)
    with pytest.raises(DatabricksUnavailable) as refused:
        ws.jobs.get_run(1001)
    message = str(refused.value)
    assert "GET /api/2.2/jobs/runs/get?run_id=1001" in message, message
    assert "429 REQUEST_LIMIT_EXCEEDED: Too many requests" in message, message
    assert "retry budget" in message and "6s" in message, message
    # Waits of 0.5, 1 and 2 s fit in 6 s; one of 4 s more would not: 4 attempts at most.
    tries = len(emulator.faults.served())
    assert 2 <= tries <= 4, emulator.faults.served()

    emulator.clear_faults()
    emulator.inject_faults(http_503=1, retry_after_seconds=3600)
    with pytest.raises(DatabricksUnavailable) as unavailable:
        ws.files.create_directory("/Volumes/main/ops/x")
    assert "503 TEMPORARILY_UNAVAILABLE" in str(unavailable.value)
    assert "Retry-After: 3600" in str(unavailable.value)
    assert len(emulator.faults.served()) == tries + 1  # one attempt, no hour-long sleep


# --------------------------------------------------------------------------- the Pipes messages


def pipes_message(method: str, params: dict[str, Any] | None = None) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


@pytest.mark.timeout(180)
def test_every_pipes_message_written_before_the_run_ended_is_read_through_throttling(
    emulator: DatabricksEmulator,
) -> None:
    """The remote side had written 15 message chunks (an object report each, then `closed`)
    when its run ended; reading them is throttled. dagster-databricks' reader read one chunk
    per poll and gave up 10 s after the session closed: reports were lost, and their objects
    reported failed although they had loaded. Every one must arrive."""
    from dagster import build_asset_context
    from dagster._core.pipes.context import PipesMessageHandler

    from fanout_dagster.databricks.pipes import VolumeMessageReader

    emulator.create_volume("main.ops.fanout")
    ws = workspace_client(QUICK)
    reader = VolumeMessageReader(client=ws, volume_path=VOLUME, interval=5)
    handler = PipesMessageHandler(build_asset_context(), reader)
    with handler.handle_messages() as params:
        for index in range(1, 16):
            lines = [pipes_message("report_custom_message", {"payload": index})]
            if index == 15:
                lines.append(pipes_message("closed", {}))
            ws.files.upload(f"{params['path']}/{index}.json", io.BytesIO("\n".join(lines).encode()))
        emulator.inject_faults(
            http_429=5,
            retry_after_seconds=None,
            path_prefix=f"/api/2.0/fs/files{params['path']}",
            method="GET",
        )
    # Leaving the block is the run's end: the session closes, the reader drains.
    assert handler.get_custom_messages() == tuple(range(1, 16))
    assert handler.received_closed_message
    assert emulator.faults.pending()["http_429"] == 0
