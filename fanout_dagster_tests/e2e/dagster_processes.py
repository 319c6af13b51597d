"""Real Dagster processes for end-to-end tests: a DAGSTER_HOME built from the
repo's dagster.yaml (SQLite storage under it, or PostgreSQL), the daemon (sensors, backfills, run queue) and helpers to
read what happened from run records."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunRecord
from dagster._core.storage.tags import BACKFILL_ID_TAG, SENSOR_NAME_TAG

from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.helpers import CONNECT_MODE_FLAG, REPO_ROOT

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def write_dagster_home(
    home: Path,
    *,
    max_concurrent_runs: int | None = None,
    cluster_limits: Mapping[str, int] | None = None,
    storage: Mapping | None = None,
) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is the repo's, with optional tighter limits,
    and `storage` (the `dagster_storage` fixture: None for SQLite under the home)."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    # The run limits are the run coordinator's (see dagster.yaml).
    runs = config["run_coordinator"]["config"]
    if max_concurrent_runs is not None:
        runs["max_concurrent_runs"] = max_concurrent_runs
    if cluster_limits is not None:
        runs["tag_concurrency_limits"] = [
            {"key": "fanout/cluster", "value": name, "limit": limit}
            for name, limit in cluster_limits.items()
        ]
    if storage:
        config["storage"] = dict(storage)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def configured_limits(home: Path) -> tuple[int, dict[str, int]]:
    runs = yaml.safe_load((home / "dagster.yaml").read_text())["run_coordinator"]["config"]
    per_cluster = {entry["value"]: entry["limit"] for entry in runs["tag_concurrency_limits"]}
    return runs["max_concurrent_runs"], per_cluster


def start_in_own_group(
    command: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen:
    """A child leading its own process group, output appended to log_path.

    Everything it starts (code servers, run workers, Spark JVMs) stays in the
    group, so stop_process_group stops all of it. pyspark's process-wide
    Connect flag of this test process is not passed on: each Dagster process
    decides its Spark mode from its own settings, as in a deployment.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={k: v for k, v in env.items() if k != CONNECT_MODE_FLAG},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A pytest started in the background inherits SIGINT ignored, and
            # Dagster's CLIs handle SIGTERM like SIGINT: restore both.
            preexec_fn=_default_stop_signals,
        )


def _default_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole group, SIGKILL what is left of it after `grace` seconds.

    A leader that already died on its own is left alone with what survives it:
    the fault tests kill a daemon and then watch its orphaned run workers.
    """
    if process.poll() is not None:
        return
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        process.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            break
        time.sleep(0.2)
    process.wait(timeout=10)


@contextmanager
def dagster_daemon(
    home: Path, env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on the project's workspace, in its own process group."""
    process = start_in_own_group(
        [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        cwd=REPO_ROOT,
        log_path=log_path,
    )
    try:
        yield process
    finally:
        stop_process_group(process)


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 1.0,
    on_timeout: Callable[[], str] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> T:
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


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t sorts before a start at t:
    touching is not overlapping)."""
    intervals = list(intervals)  # read twice below; may be a generator
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def max_overlap(records: Sequence[RunRecord], tag: tuple[str, str] | None = None) -> int:
    """The most runs that were executing at the same instant, from run records' start/end times."""
    return peak_overlap(
        (record.start_time, record.end_time if record.end_time is not None else time.time())
        for record in records
        if record.start_time is not None
        and (tag is None or record.dagster_run.tags.get(tag[0]) == tag[1])
    )


def backfill_runs(instance: DagsterInstance, backfill_id: str) -> list[RunRecord]:
    records = instance.get_run_records(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
    return sorted(records, key=lambda rec: rec.create_timestamp)


def run_keys(record: RunRecord) -> list[str]:
    """The objects a run loads (the run coordinator's `fanout/objects` tag)."""
    return record.dagster_run.tags[OBJECTS_TAG].split(",")


def assert_packed(
    runs: list[RunRecord],
    keys: list[str],
    clusters: Mapping[str, str],
    objects_per_run: int,
    detail: str,
) -> None:
    """At most objects_per_run objects a run, each object in exactly one run, each
    run a contiguous range of `keys` (the partition order) on its objects' cluster."""
    assert len(runs) == math.ceil(len(keys) / objects_per_run), detail
    packed = [key for rec in runs for key in run_keys(rec)]
    assert sorted(packed) == sorted(keys), detail
    for rec in runs:
        pack = run_keys(rec)
        assert 1 <= len(pack) <= objects_per_run, detail
        first = keys.index(pack[0])
        assert pack == keys[first : first + len(pack)], detail
        assert {clusters[key] for key in pack} == {rec.dagster_run.tags[CLUSTER_TAG]}, detail


def describe_runs(instance: DagsterInstance) -> str:
    """One line per run, oldest first: for assertion messages."""
    lines = []
    for rec in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp):
        run = rec.dagster_run
        span = (
            f"{rec.start_time:.1f}-{rec.end_time:.1f}" if rec.start_time and rec.end_time else "-"
        )
        launcher = (
            f"backfill={run.tags[BACKFILL_ID_TAG]}"
            if BACKFILL_ID_TAG in run.tags
            else f"sensor={run.tags.get(SENSOR_NAME_TAG, '-')}"
        )
        lines.append(
            f"{run.run_id[:8]} {run.status.value:9} cluster={run.tags.get(CLUSTER_TAG, '-')} {launcher} "
            f"{span} objects={run.tags.get(OBJECTS_TAG) or run.tags.get('dagster/partition', '')}"
        )
    return "\n".join(lines)


def failed_runs(instance: DagsterInstance) -> list:
    return [run for run in instance.get_runs() if run.status == DagsterRunStatus.FAILURE]
