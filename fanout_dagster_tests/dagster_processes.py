"""Real Dagster processes for end-to-end tests: a DAGSTER_HOME built from the
repo's dagster.yaml, the daemon (sensors, backfills, run queue) and helpers to
read what happened from run records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunRecord

from fanout_dagster_tests.conftest import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def write_dagster_home(home: Path, *, max_concurrent_runs: int | None = None,
                       cluster_limits: Mapping[str, int] | None = None) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is the repo's, with optional tighter limits."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    runs = config["concurrency"]["runs"]
    if max_concurrent_runs is not None:
        runs["max_concurrent_runs"] = max_concurrent_runs
    if cluster_limits is not None:
        runs["tag_concurrency_limits"] = [
            {"key": "fanout/cluster", "value": name, "limit": limit}
            for name, limit in cluster_limits.items()
        ]
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def configured_limits(home: Path) -> tuple[int, dict[str, int]]:
    runs = yaml.safe_load((home / "dagster.yaml").read_text())["concurrency"]["runs"]
    per_cluster = {entry["value"]: entry["limit"] for entry in runs["tag_concurrency_limits"]}
    return runs["max_concurrent_runs"], per_cluster


@contextmanager
def dagster_daemon(home: Path, env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on the project's workspace, in its own process group."""
    full_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 1.0,
             on_timeout: Callable[[], str] | None = None,
             on_poll: Callable[[], None] | None = None) -> T:
    """Poll until condition() is truthy and return its value; on_poll runs before each try."""
    deadline = time.monotonic() + timeout
    while True:
        if on_poll:
            on_poll()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


def all_runs_finished(instance: DagsterInstance, expected_runs: int) -> bool:
    runs = instance.get_runs()
    return len(runs) >= expected_runs and all(run.status in FINISHED_STATUSES for run in runs)


def max_overlap(records: list[RunRecord], tag: tuple[str, str] | None = None) -> int:
    """The most runs that were executing at the same instant, from run records' start/end times."""
    events: list[tuple[float, int]] = []
    for record in records:
        if tag and record.dagster_run.tags.get(tag[0]) != tag[1]:
            continue
        if record.start_time is None:
            continue
        end = record.end_time if record.end_time is not None else time.time()
        # At equal timestamps an end sorts before a start: touching is not overlapping.
        events.append((record.start_time, 1))
        events.append((end, -1))
    current = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        best = max(best, current)
    return best


def describe_runs(instance: DagsterInstance) -> str:
    lines = []
    for record in instance.get_run_records():
        run = record.dagster_run
        lines.append(
            f"{run.run_id[:8]} {run.status.value:10} {run.tags.get('fanout/cluster', '-'):8} "
            f"{run.tags.get('dagster/partition') or run.tags.get('fanout/objects', '')}"
        )
    return "\n".join(lines)


def failed_runs(instance: DagsterInstance) -> list:
    return [run for run in instance.get_runs() if run.status == DagsterRunStatus.FAILURE]
