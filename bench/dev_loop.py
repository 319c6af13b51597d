"""The dev-loop section: what `make dev` gives a new user.

Runs exactly what `make dev` runs - `python -m fanout_dagster.local_spark.connect_server
-- dagster dev`, from the repository root, on the shipped configs and sample data
- with a temporary DAGSTER_HOME (the repo's dagster.yaml), warehouse and free
ports, so the repository's own state and a developer's running `make dev` stay
untouched. (The server's log still goes to the repo's `.spark/`, as `make dev`'s
does; the part written meanwhile is copied to the measurement's logs.)

1. `first_minutes_s`: from the UI answering (`/server_info`) to every sample
   partition materialized (`partitionStats` over GraphQL, as the asset page
   shows it). The object sensor is on by default and launches them.
2. `launch_to_materialized_s`: then, `launches` times one after the other, one
   partition launched the way the UI's "Materialize" button does it (GraphQL
   `launchRun` of the asset job with the partition tag), timed from the
   mutation to the object's materialization event; the median is the figure.
   `launch_phases` says where each launch's time went (bench.dagster_modes.PHASES).

A worker mode (`python -m bench.worker SPEC`, spec mode `dev_loop`): the
orchestrator measures the whole session's CPU and peak memory (the server, the
webserver, the daemon, the code server, the run workers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.dagster_modes import PHASES, phases, run_events
from bench.warm import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OBJECT = "erp-stores"

LAUNCH_RUN = """
mutation($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

PARTITIONS = """
query {
  assetNodeOrError(assetKey: {path: ["bronze"]}) {
    __typename
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
  }
}
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


def ui_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def launch_one(port: int, instance, key: str, timeout: float) -> dict:
    """The UI's "Materialize" on one partition; times to its materialization and run end."""
    params = {
        "selector": {
            "repositoryLocationName": "fanout_dagster",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["bronze"]}],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    launched = time.time()
    result = graphql(port, LAUNCH_RUN, {"executionParams": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchRun failed: {result}")
    run_id = result["run"]["runId"]

    def finished() -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.is_finished

    wait(finished, timeout, f"run {run_id}", 0.1)
    record = instance.get_run_record_by_id(run_id)
    if record.dagster_run.status.value != "SUCCESS":
        raise RuntimeError(f"run {run_id} {record.dagster_run.status.value}")
    marks, objects = run_events(instance, run_id)
    marks.update({"created": record.create_timestamp.timestamp(), "ended": record.end_time})
    materialized = [o["event"] for o in objects if o["ok"]]
    if not materialized:
        raise RuntimeError(f"run {run_id} succeeded without materializing {key}")
    return {
        "run": run_id[:8],
        "launch_to_materialized_s": round(materialized[0] - launched, 3),
        "launch_to_run_end_s": round(record.end_time - launched, 3),
        "phases": {"launch_to_created_s": round(marks["created"] - launched, 3), **phases(marks)},
    }


def _dev_env(workdir: Path, ui_port: int) -> dict[str, str]:
    """`make dev`'s environment: the user's, with state in the work dir and free ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FANOUT_", "DAGSTER_")) and k != "SPARK_CONNECT_MODE_ENABLED"
    }
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "FANOUT_SPARK_WAREHOUSE": str(workdir / "warehouse"),
            "FANOUT_SPARK_CONNECT_PORT": str(free_port()),
            "FANOUT_SPARK_UI_PORT": str(free_port()),
        }
    )
    return env


def run_dev_loop(spec: dict) -> dict:
    from dagster import DagsterInstance

    workdir = Path(spec["workdir"])
    port = free_port()
    env = _dev_env(workdir, port)
    server_log = REPO_ROOT / ".spark" / "connect-server.log"
    log_offset = server_log.stat().st_size if server_log.exists() else 0
    venv_bin = Path(sys.executable).parent
    # What `make dev` runs.
    command = [
        sys.executable,
        "-m",
        "fanout_dagster.local_spark.connect_server",
        "--",
        str(venv_bin / "dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    t0 = spec["t_launch"]
    started = time.time()
    dev_log = workdir / "dev.log"
    with open(dev_log, "ab") as log:
        dev = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait(lambda: ui_up(port), 300, "the UI")
        ui_at = time.time()
        server_ready_s = _server_ready_s(dev_log)
        instance = DagsterInstance.from_config(env["DAGSTER_HOME"])

        def all_materialized() -> bool:
            if dev.poll() is not None:
                raise RuntimeError(f"make dev exited ({dev.returncode}); see {dev_log}")
            node = graphql(port, PARTITIONS)["assetNodeOrError"]
            stats = node.get("partitionStats") or {}
            if stats.get("numFailed"):
                raise RuntimeError(f"sample partitions failed: {stats}")
            return (
                bool(stats.get("numPartitions"))
                and stats["numMaterialized"] == stats["numPartitions"]
            )

        wait(all_materialized, spec.get("first_minutes_timeout_s", 600), "sample partitions", 0.25)
        all_at = time.time()
        partitions = graphql(port, PARTITIONS)["assetNodeOrError"]["partitionStats"]
        # One launch at a time, on an idle deployment: the sensor's runs have ended.
        wait(
            lambda: all(r.dagster_run.is_finished for r in instance.get_run_records()),
            120,
            "the sensor's runs to end",
        )
        first_runs = [_run_summary(instance, r) for r in instance.get_run_records()]
        launches = [
            launch_one(port, instance, spec["object"], spec.get("launch_timeout_s", 180))
            for _ in range(spec["launches"])
        ]
        done = time.time()
    finally:
        _stop(dev)
        if server_log.exists():
            with open(server_log, "rb") as handle:
                handle.seek(log_offset)
                (workdir / "connect-server.log").write_bytes(handle.read())
    times = [launch["launch_to_materialized_s"] for launch in launches]
    mean_first_phases = _mean([r["phases"] for r in first_runs])
    return {
        "t0": t0,
        "wall_s": done - t0,
        "runs": [],
        "timeline": None,
        "extras": {
            "make_dev_to_ui_s": round(ui_at - started, 2),
            "server_ready_s": server_ready_s,
            "first_minutes_s": round(all_at - ui_at, 2),
            "sample_partitions": partitions["numPartitions"],
            "first_minutes_runs": len(first_runs),
            "first_minutes_mean_run_phases_s": mean_first_phases,
            "launches": len(launches),
            "launch_object": spec["object"],
            "launch_to_materialized_s": times,
            "launch_to_materialized_median_s": round(statistics.median(times), 3)
            if times
            else None,
            "launch_to_run_end_median_s": round(
                statistics.median(launch["launch_to_run_end_s"] for launch in launches), 3
            )
            if launches
            else None,
            "launch_median_phases_s": _median([launch["phases"] for launch in launches]),
            "launch_details": launches,
        },
    }


def _run_summary(instance, record) -> dict:
    marks, _objects = run_events(instance, record.dagster_run.run_id)
    marks.update({"created": record.create_timestamp.timestamp(), "ended": record.end_time})
    return {"run": record.dagster_run.run_id[:8], "phases": phases(marks)}


def _ordered_keys(rows: list[dict[str, float]]) -> list[str]:
    """The phases in the order they happen."""
    order = ["launch_to_created_s", *(name for name, _, _ in PHASES)]
    keys = {k for row in rows for k in row}
    return [k for k in order if k in keys] + sorted(keys - set(order))


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        k: round(statistics.fmean(r[k] for r in rows if k in r), 3) for k in _ordered_keys(rows)
    }


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in _ordered_keys(rows)
    }


def _server_ready_s(dev_log: Path) -> float | None:
    """The server wrapper's own "ready in X s" line."""
    for line in dev_log.read_text(errors="replace").splitlines():
        if line.startswith("Spark Connect server ready in "):
            try:
                return float(line.split(" in ", 1)[1].split(" s", 1)[0])
            except ValueError:
                return None
    return None


def _stop(dev: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops `make dev` (both the server and dagster dev shut down)."""
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
