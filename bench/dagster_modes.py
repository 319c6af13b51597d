"""The product modes: `per_run` (one Dagster run per object) and `packed` (K per run).

What happens, in a fresh process with DAGSTER_HOME and FANOUT_* set by the
orchestrator (with `--spark connect`, the default: FANOUT_SPARK=connect and the
warm server's port, so every run opens a session on the warm Spark Connect
server; FANOUT_BRONZE_SCHEMA=bench_<mode>_n<N>, tables of its own):

1. A temporary instance: the repo's dagster.yaml (the project's run
   coordinator, its tag limits) with the run limits set to the benchmark's
   concurrency; a workspace.yaml loading `fanout_dagster.definitions`.
2. The N objects' partitions are added to the instance and their clusters
   recorded, as the object sensor would; the sensor itself is stopped through
   the UI's GraphQL `stopSensor` mutation, so the backfill is the only launcher.
3. `dagster-daemon run` starts (it spawns the code server, which spawns one run
   worker process per run). Once it is healthy, one asset backfill over all N
   partitions is submitted through the UI's GraphQL `launchPartitionBackfill`
   mutation, with the same parameters the UI sends.
4. Wait for every run of the backfill to end, then for the backfill to be
   marked complete; stop the daemon.

Timing: `wall_s` = submit -> last run end; `total_s` = daemon launch -> last
run end. The backfill daemon wakes every 30 s (not configurable in Dagster), so
when a backfill is picked up depends on when it was submitted. The backfill is
submitted half a loop (15 s) before the backfill daemon's next iteration, read
from the daemon's debug log: the mean wait of a backfill submitted at a random
moment. `pickup_s` (submit -> first run created) reports what it was.

Where a run's time goes: `mean_run_phases_s` (and `phases` per run), from the
run's own events - queued, run worker launch, step start, resources (the Spark
session), the objects, the end.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKFILL_LOOP_S = 30.0  # dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS
SENSOR_NAME = "object_configs_sensor"
LOCATION_NAME = "fanout_dagster"

STOP_SENSOR = """
mutation($jobOriginId: String, $jobSelectorId: String) {
  stopSensor(jobOriginId: $jobOriginId, jobSelectorId: $jobSelectorId) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message stack }
  }
}
"""

LAUNCH_BACKFILL = """
mutation($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def write_instance(home: Path, concurrency: int) -> Path:
    """dagster.yaml (the repo's, run limits set to `concurrency`) and workspace.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    # The run limits are the run coordinator's config (see dagster.yaml).
    runs = config["run_coordinator"].setdefault("config", {})
    runs["max_concurrent_runs"] = concurrency
    limits = runs.setdefault("tag_concurrency_limits", [])
    for limit in limits:
        if limit.get("key") == "fanout/cluster" and limit.get("value") == "default":
            limit["limit"] = concurrency
    if not any(
        lim.get("key") == "fanout/cluster" and lim.get("value") == "default" for lim in limits
    ):
        limits.append({"key": "fanout/cluster", "value": "default", "limit": concurrency})
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    # As the repository's workspace.yaml: no working_directory (the venv
                    # imports the package). With one, Dagster puts the repository first on
                    # sys.path wherever it loads the code - also on a Databricks cluster,
                    # where the step launcher's code bundle (with the configs) must win.
                    {
                        "python_module": {
                            "module_name": "fanout_dagster.definitions",
                            "location_name": LOCATION_NAME,
                        }
                    }
                ]
            }
        )
    )
    return workspace


def register_objects(instance, configs_dir: str) -> list[str]:
    """Partitions and cluster records for every object, in the sensor's order."""
    from fanout_dagster.core.objects import load_objects
    from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
    from fanout_dagster.orchestration.placement import record_clusters

    objects = sorted(load_objects(configs_dir).objects, key=lambda o: (o.cluster, o.key))
    keys = [o.key for o in objects]
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
    record_clusters(instance, {o.key: o.cluster for o in objects})
    return keys


def _gql(context, query: str, variables: dict) -> dict:
    from dagster_graphql.test.utils import execute_dagster_graphql

    return dict(execute_dagster_graphql(context, query, variables).data)


def stop_sensor(request_context) -> str:
    """Stop the object sensor the way the UI's toggle does (GraphQL stopSensor)."""
    location = request_context.get_code_location(LOCATION_NAME)
    for repository in location.get_repositories().values():
        if repository.has_sensor(SENSOR_NAME):
            sensor = repository.get_sensor(SENSOR_NAME)
            data = _gql(
                request_context,
                STOP_SENSOR,
                {"jobOriginId": sensor.get_remote_origin_id(), "jobSelectorId": sensor.selector_id},
            )["stopSensor"]
            if data["__typename"] != "StopSensorMutationResult":
                raise RuntimeError(f"stopSensor failed: {data}")
            return data["instigationState"]["status"]
    raise RuntimeError(f"sensor {SENSOR_NAME} not found in code location {LOCATION_NAME}")


def launch_backfill(request_context, keys: list[str]) -> str:
    """The UI's 'Materialize' -> partitions dialog -> 'Launch backfill' for the bronze asset."""
    params = {
        "tags": [],
        "assetSelection": [{"path": ["bronze"]}],
        "partitionNames": keys,
        "fromFailure": False,
    }
    data = _gql(request_context, LAUNCH_BACKFILL, {"backfillParams": params})[
        "launchPartitionBackfill"
    ]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill failed: {data}")
    return data["backfillId"]


class Daemon:
    """`dagster-daemon run` as a child process, its log tailed for the backfill loop."""

    # 2026-11-21 05:30:01 +0000 - dagster.daemon.BackfillDaemon - DEBUG - No backfill jobs ...
    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _LINE = re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}) - dagster\.daemon\.BackfillDaemon - "
    )

    def __init__(self, workspace: Path, env: dict, log_path: Path, cwd: Path):
        self.log_path = log_path
        self.launched = time.time()
        self._log = open(log_path, "ab")  # noqa: SIM115 - held for the daemon's lifetime
        exe = str(Path(sys.executable).with_name("dagster-daemon"))
        self.proc = subprocess.Popen(
            [exe, "run", "-w", str(workspace), "--log-level", "debug"],
            env=env,
            cwd=str(cwd),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def backfill_iterations(self) -> list[float]:
        """Times (s since epoch, 1 s resolution) the backfill daemon logged an iteration."""
        times = []
        text = self._ANSI.sub("", self.log_path.read_text(errors="replace"))
        for line in text.splitlines():
            match = self._LINE.match(line)
            if match:
                times.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S %z").timestamp())
        return sorted(set(times))

    def wait_ready(self, instance, timeout: float = 180) -> float:
        """Until every required daemon heartbeats and the backfill loop has logged once."""
        from dagster._daemon.controller import all_daemons_healthy

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dagster-daemon exited ({self.proc.returncode}); see {self.log_path}"
                )
            if self.backfill_iterations() and all_daemons_healthy(instance):
                return time.time()
            time.sleep(0.25)
        raise TimeoutError(f"dagster-daemon not ready after {timeout} s; see {self.log_path}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _wait_submit_phase(daemon: Daemon) -> float:
    """Sleep until half a backfill loop before the backfill daemon's next iteration."""
    last = daemon.backfill_iterations()[-1]
    # Log times have 1 s resolution: +0.5 s is the expected truncation.
    target = last + 0.5 + BACKFILL_LOOP_S / 2
    while target < time.time():
        target += BACKFILL_LOOP_S
    time.sleep(max(0.0, target - time.time()))
    return last


def run_dagster(spec: dict) -> dict:
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    home = Path(os.environ["DAGSTER_HOME"])
    workspace = write_instance(home, spec["concurrency"])
    workdir = Path(spec["workdir"])
    t_launch = spec["t_launch"]
    instance = DagsterInstance.get()
    keys = register_objects(instance, spec["configs"])
    t_setup = time.time()
    with WorkspaceProcessContext(
        instance, WorkspaceFileTarget(paths=[str(workspace)])
    ) as process_context:
        request_context = process_context.create_request_context()
        sensor_status = stop_sensor(request_context)
        daemon = Daemon(workspace, dict(os.environ), workdir / "daemon.log", workdir)
        try:
            t_ready = daemon.wait_ready(instance)
            last_iteration = _wait_submit_phase(daemon)
            t_submit = time.time()
            backfill_id = launch_backfill(process_context.create_request_context(), keys)
        except BaseException:
            daemon.stop()
            raise
    try:
        runs, t_all_ended = _wait_runs(instance, backfill_id, len(keys), spec["timeout_s"])
        t_backfill_done, backfill_status = _wait_backfill(
            instance, backfill_id, timeout=BACKFILL_LOOP_S + 15
        )
    finally:
        daemon.stop()
    return _result(
        instance,
        spec,
        keys,
        runs,
        backfill_id=backfill_id,
        backfill_status=backfill_status,
        times={
            "t_launch": t_launch,
            "t_setup": t_setup,
            "t_daemon": daemon.launched,
            "t_ready": t_ready,
            "t_last_iteration": last_iteration,
            "t_submit": t_submit,
            "t_all_ended": t_all_ended,
            "t_backfill_done": t_backfill_done,
        },
        sensor_status=sensor_status,
    )


def _backfill_runs(instance, backfill_id: str):
    from dagster import RunsFilter
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    return instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))


def _wait_runs(instance, backfill_id: str, n_keys: int, timeout: float):
    """Until the backfill's runs cover every key and all of them have ended."""
    from fanout_dagster.single_host.run_coordinator import run_partition_keys

    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = _backfill_runs(instance, backfill_id)
        if runs and all(r.is_finished for r in runs):
            covered = set()
            for run in runs:
                covered.update(run_partition_keys(instance, run))
            if len(covered) >= n_keys:
                return runs, time.time()
        time.sleep(0.5)
    raise TimeoutError(f"backfill {backfill_id} not finished after {timeout} s")


def _wait_backfill(instance, backfill_id: str, timeout: float) -> tuple[float | None, str]:
    from dagster._core.execution.backfill import BulkActionStatus

    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        status = instance.get_backfill(backfill_id).status
        if status not in (
            BulkActionStatus.REQUESTED,
            BulkActionStatus.CANCELING,
            BulkActionStatus.FAILING,
        ):
            return time.time(), status.value
        time.sleep(0.5)
    return None, status.value if status else "unknown"


PHASES = (
    ("queue_s", "created", "starting"),  # in the run queue (limits, the 1 s dequeue loop)
    ("launch_s", "starting", "started"),  # run worker process: Python, imports, code load
    ("to_step_s", "started", "step_start"),  # execution plan, the step's start
    ("step_to_objects_s", "step_start", "first_object"),  # resources: the Spark session
    ("objects_s", "first_object", "last_object"),  # the loads themselves
    ("after_objects_s", "last_object", "ended"),  # events, step and run end, session release
)


def run_events(instance, run_id: str) -> tuple[dict[str, float], list[dict]]:
    """A run's milestones (event times) and its objects (start/end from their metadata)."""
    from dagster import DagsterEventType

    marks: dict[str, float] = {}
    objects: list[dict] = []
    names = {
        # The queued run coordinator's daemon logs RUN_STARTING as it launches a run from
        # the queue (this Dagster logs no RUN_DEQUEUED).
        DagsterEventType.RUN_STARTING: "starting",
        DagsterEventType.RUN_START: "started",
        DagsterEventType.STEP_START: "step_start",
    }
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        name = names.get(event.event_type)
        if name and name not in marks:
            marks[name] = entry.timestamp
        if event.event_type in (
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.ASSET_OBSERVATION,
        ):
            ok = event.event_type == DagsterEventType.ASSET_MATERIALIZATION
            data = entry.asset_materialization if ok else entry.asset_observation
            if data is None:
                continue
            metadata = data.metadata
            if "duration_s" not in metadata:
                continue
            end = metadata["finished_at"].value if "finished_at" in metadata else entry.timestamp
            start = (
                metadata["started_at"].value
                if "started_at" in metadata
                else end - metadata["duration_s"].value
            )
            objects.append(
                {
                    "object": data.partition,
                    "start": start,
                    "end": end,
                    "ok": ok,
                    "event": entry.timestamp,
                }
            )
    if objects:
        marks["first_object"] = min(o["start"] for o in objects)
        marks["last_object"] = max(o["end"] for o in objects)
    return marks, objects


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds between a run's milestones (PHASES), where both ends are known."""
    return {
        name: round(marks[b] - marks[a], 3)
        for name, a, b in PHASES
        if marks.get(a) is not None and marks.get(b) is not None
    }


def _result(
    instance, spec, keys, runs, *, backfill_id, backfill_status, times, sensor_status
) -> dict:
    from fanout_dagster.orchestration.tags import OBJECTS_TAG

    records = {
        r.dagster_run.run_id: r for r in instance.get_run_records(filters=_run_filter(backfill_id))
    }
    run_rows: list[dict] = []
    timeline: list[dict] = []
    run_phases: list[dict[str, float]] = []
    for run in sorted(runs, key=lambda r: records[r.run_id].create_timestamp.timestamp()):
        record = records[run.run_id]
        created = record.create_timestamp.timestamp()
        marks, objects = run_events(instance, run.run_id)
        marks.update({"created": created, "ended": record.end_time})
        run_phases.append(phases(marks))
        run_rows.append(
            {
                "run": run.run_id[:8],
                "created": created,
                "starting": marks.get("starting"),  # launched from the queue
                "start": record.start_time,
                "end": record.end_time,
                "ok": run.status.value == "SUCCESS",
                "status": run.status.value,
                "objects": len(run.tags.get(OBJECTS_TAG, "").split(","))
                if run.tags.get(OBJECTS_TAG)
                else None,
                "phases": run_phases[-1],
            }
        )
        timeline.extend(
            {k: o[k] for k in ("object", "start", "end", "ok")} | {"run": run.run_id[:8]}
            for o in objects
        )
    t_submit, t_launch = times["t_submit"], times["t_launch"]
    last_end = max(r["end"] for r in run_rows if r["end"])
    first_created = min(r["created"] for r in run_rows)
    materialized = {t["object"] for t in timeline if t["ok"]}
    run_durations = [r["end"] - r["start"] for r in run_rows if r["start"] and r["end"]]
    queue_waits = [r["start"] - r["created"] for r in run_rows if r["start"]]
    mean_phases = {
        name: round(statistics.fmean(values), 3)
        for name, _, _ in PHASES
        if (values := [p[name] for p in run_phases if name in p])
    }
    return {
        "t0": t_submit,
        "wall_s": last_end - t_submit,
        "runs": run_rows,
        "timeline": timeline,
        "extras": {
            "total_s": round(
                last_end - t_launch, 3
            ),  # incl. process start, instance, daemon start-up
            "daemon_start_s": round(times["t_ready"] - times["t_daemon"], 3),
            "pickup_s": round(first_created - t_submit, 3),
            "wall_after_pickup_s": round(last_end - first_created, 3),
            "backfill_marked_done_s": (
                round(times["t_backfill_done"] - t_submit, 3) if times["t_backfill_done"] else None
            ),
            "backfill_status": backfill_status,
            "backfill_id": backfill_id,
            "runs": len(run_rows),
            "failed_runs": sum(not r["ok"] for r in run_rows),
            "objects_materialized": len(materialized),
            "objects_expected": len(keys),
            "mean_run_s": round(sum(run_durations) / len(run_durations), 3)
            if run_durations
            else None,
            "mean_queue_wait_s": round(sum(queue_waits) / len(queue_waits), 3)
            if queue_waits
            else None,
            "mean_run_phases_s": mean_phases,
            "objects_per_run": spec["pack_size"],
            "threads_per_run": spec["threads"],
            "sensor_status_before_daemon": sensor_status,
        },
    }


def _run_filter(backfill_id: str):
    from dagster import RunsFilter
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    return RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})
