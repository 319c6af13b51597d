"""What a new user sees after `make dev`: how long until the sample objects are all
materialized, and how long one object takes from "Materialize" to materialized.

Runs exactly what `make dev` runs (the local Spark Connect server and `dagster dev`
beside it, from the repository root, on the shipped configs and sample data), with
a temporary DAGSTER_HOME and warehouse so the repository's own stay untouched:

1. `first_minutes_s`: from the UI answering to every sample partition
   materialized (the object sensor is on by default and launches them).
2. `launch_to_materialized_s`: then, `--launches` times, one partition launched
   the way the UI's "Materialize" button does it (GraphQL `launchRun` with the
   partition tag), timed from the mutation to the run's end (its step has
   materialized the object by then); median reported.

    python -m bench.dev_loop --launches 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fanout_dagster.settings import PROJECT_ROOT

LAUNCH_RUN = """
mutation($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

RUN_STATUS = """
query($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status startTime endTime } }
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


def wait(predicate, timeout: float, interval: float = 0.25) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout} s")


def launch_one(port: int, key: str) -> float:
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
        raise RuntimeError(result)
    run_id = result["run"]["runId"]
    ends: list[float] = []

    def finished() -> bool:
        run = graphql(port, RUN_STATUS, {"runId": run_id})["runOrError"]
        if run["status"] in ("FAILURE", "CANCELED"):
            raise RuntimeError(f"run {run_id} {run['status']}")
        if run["status"] == "SUCCESS":
            ends.append(run["endTime"])
            return True
        return False

    wait(finished, 120, 0.1)
    return ends[0] - launched


def measure(port: int, launches: int, key: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fanout-dev-loop-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DAGSTER_"))},
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "FANOUT_SPARK_WAREHOUSE": str(workdir / "warehouse"),
    }
    (workdir / "dagster_home").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", workdir / "dagster_home" / "dagster.yaml")
    venv_bin = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "fanout_dagster.spark_connect_server",
        "--",
        str(venv_bin / "dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    started = time.monotonic()
    with open(workdir / "dev.log", "ab") as log:
        dev = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait(lambda: ui_up(port), 300)
        ui_at = time.monotonic()

        def all_materialized() -> bool:
            node = graphql(port, PARTITIONS)["assetNodeOrError"]
            stats = node.get("partitionStats") or {}
            return (
                bool(stats.get("numPartitions"))
                and stats["numMaterialized"] == stats["numPartitions"]
            )

        wait(all_materialized, 600, 0.5)
        first_minutes = time.monotonic() - ui_at
        times = [round(launch_one(port, key), 2) for _ in range(launches)]
        return {
            "ui_up_s": round(ui_at - started, 1),
            "first_minutes_s": round(first_minutes, 1),
            "launch_to_materialized_s": times,
            "launch_to_materialized_median_s": statistics.median(times),
        }
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dev_loop")
    parser.add_argument("--launches", type=int, default=7)
    parser.add_argument("--port", type=int, default=3099)
    parser.add_argument("--object", default="erp-stores")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results" / "dev_loop.json"))
    args = parser.parse_args(argv)
    result = measure(args.port, args.launches, args.object)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
