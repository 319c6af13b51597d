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
from typing import NamedTuple, TypeVar

import yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunRecord
from dagster._core.storage.tags import BACKFILL_ID_TAG, SENSOR_NAME_TAG

from fanout_dagster.orchestration.claims import CLAIMS_METADATA, CLUSTER_POOL_PREFIX, cluster_pool
from fanout_dagster.orchestration.partitions import run_partition_keys
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.helpers import CONNECT_MODE_FLAG, REPO_ROOT

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


# The two configurations of the instance (docs/operations.md, "Stock or accelerated"):
# the repo's dagster.yaml (the single-host accelerators) and Dagster's stock run
# queue and launcher (deploy/dagster.stock.yaml, whose PostgreSQL storage the
# tests replace with their own).
DEPLOYMENTS = ["accelerated", "stock"]
CONFIG_FILES = {
    "accelerated": REPO_ROOT / "dagster.yaml",
    "stock": REPO_ROOT / "deploy" / "dagster.stock.yaml",
}


def queue_section(config: dict) -> dict:
    """Where a dagster.yaml keeps its run limits: `concurrency: runs:` (stock), or the
    run coordinator's config (accelerated)."""
    if "concurrency" in config:
        return config["concurrency"]["runs"]
    return config["run_coordinator"]["config"]


def write_dagster_home(
    home: Path,
    *,
    max_concurrent_runs: int | None = None,
    cluster_limits: Mapping[str, int] | None = None,
    storage: Mapping | None = None,
    deployment: str = "accelerated",
) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is the deployment's (the repo's, or the stock
    one), with optional tighter limits, and `storage` (the `dagster_storage` fixture:
    None for SQLite under the home)."""
    config = yaml.safe_load(CONFIG_FILES[deployment].read_text())
    config.pop("storage", None)
    runs = queue_section(config)
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
    runs = queue_section(yaml.safe_load((home / "dagster.yaml").read_text()))
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


class ClaimHold(NamedTuple):
    """A step's claims held from `start` to `end` (orchestration/claims.py)."""

    run_id: str
    pools: tuple[str, ...]
    start: float
    end: float


def claim_holds(instance: DagsterInstance) -> list[ClaimHold]:
    """Every claim hold of every run, from the claim events of the runs' event logs:
    from "Claims held" to "Claims released" (the run's end, or now, when a run never
    released them: its worker died). The logged interval lies within the real one."""
    holds = []
    for record in instance.get_run_records():
        run_id = record.dagster_run.run_id
        held: tuple[float, tuple[str, ...]] | None = None
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            event = entry.dagster_event
            metadata = event.engine_event_data.metadata if event else {}
            if event is None or CLAIMS_METADATA not in (metadata or {}):
                continue
            message = event.message or ""
            if message.startswith("Claims held"):
                held = (entry.timestamp, tuple(metadata[CLAIMS_METADATA].value))  # type: ignore[arg-type]
            elif message == "Claims released" and held is not None:
                holds.append(ClaimHold(run_id, held[1], held[0], entry.timestamp))
                held = None
        if held is not None:
            holds.append(ClaimHold(run_id, held[1], held[0], record.end_time or time.time()))
    return holds


def claim_peaks(holds: Sequence[ClaimHold]) -> dict[str, int]:
    """Per pool, the most steps that held it at one instant."""
    pools = {pool for hold in holds for pool in hold.pools}
    return {
        pool: peak_overlap((h.start, h.end) for h in holds if pool in h.pools) for pool in pools
    }


def assert_claims_within(
    holds: list[ClaimHold], cluster_limits: dict[str, int], detail: str
) -> dict[str, int]:
    """Per cluster at most its limit of steps held a slot at once; per object and per
    table, one step at a time (from the claims the steps logged)."""
    peaks = claim_peaks(holds)
    for cluster, limit in cluster_limits.items():
        assert peaks.get(cluster_pool(cluster), 0) <= limit, (cluster, peaks, detail)
    locks = {pool: peak for pool, peak in peaks.items() if not pool.startswith(CLUSTER_POOL_PREFIX)}
    assert locks and set(locks.values()) == {1}, (locks, detail)
    return peaks


def waited_for(instance: DagsterInstance, run_id: str) -> list[str]:
    """What a run's step logged waiting for (its "Waiting for ..." claim events)."""
    messages = [
        entry.dagster_event.message or ""
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if entry.dagster_event is not None
    ]
    return [message for message in messages if message.startswith("Waiting for")]


def load_intervals(instance: DagsterInstance, key: str) -> list[tuple[float, float]]:
    """(started, finished) of every load of one object, from its materializations'
    `started_at`/`finished_at` metadata (the load's own clock)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("bronze"), asset_partitions=[key]), limit=1000
    ).records
    intervals = []
    for record in records:
        assert record.asset_materialization is not None
        metadata = record.asset_materialization.metadata
        intervals.append((metadata["started_at"].value, metadata["finished_at"].value))
    return intervals  # type: ignore[return-value]


def run_objects(instance: DagsterInstance, record: RunRecord) -> list[str]:
    """The objects a run loads: its `fanout/objects` tag (the sensor's runs, and every run
    under the accelerated coordinator), else its partition tags (a stock UI backfill)."""
    if OBJECTS_TAG in record.dagster_run.tags:
        return run_keys(record)
    return run_partition_keys(instance, record.dagster_run)


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
    instance: DagsterInstance | None = None,
) -> None:
    """At most objects_per_run objects a run, each object in exactly one run, each
    run a contiguous range of `keys` (the partition order) on one cluster, which its
    cluster tag names where it has one (a stock UI backfill's runs have none: pass
    `instance` to read their objects from their partition tags)."""

    def objects_of(rec: RunRecord) -> list[str]:
        return run_objects(instance, rec) if instance is not None else run_keys(rec)

    assert len(runs) == math.ceil(len(keys) / objects_per_run), detail
    packed = [key for rec in runs for key in objects_of(rec)]
    assert sorted(packed) == sorted(keys), detail
    for rec in runs:
        pack = objects_of(rec)
        assert 1 <= len(pack) <= objects_per_run, detail
        first = keys.index(pack[0])
        assert pack == keys[first : first + len(pack)], detail
        pack_clusters = {clusters[key] for key in pack}
        assert len(pack_clusters) == 1, detail
        if instance is None or CLUSTER_TAG in rec.dagster_run.tags:
            assert pack_clusters == {rec.dagster_run.tags[CLUSTER_TAG]}, detail


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
