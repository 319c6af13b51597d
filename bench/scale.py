"""The 10,000-object section: what the fan-out list costs before any data moves.

- `scale_definitions_load`: `fanout_dagster.definitions.defs()` in a
  fresh process with FANOUT_CONFIGS_DIR at the 10k configs (median of 3). Every
  code server, run worker and daemon pays this.
- `scale_sensor_first_tick`: the real `dagster-daemon` against a fresh instance
  (the repo's dagster.yaml, run queue closed with max_concurrent_runs: 0 so no
  run starts), its object sensor's first tick over the 10k configs. `wall_s` is
  tick start -> all 10k partitions present in the instance (polled every 0.5 s).
  The tick then goes on to create one queued run per object; it is watched for
  `tick_window_s` more to measure that rate, and the whole tick's length is
  estimated from it (`tick_total_estimated`) unless it finished in the window.
  Extras also give the sensor function's own time (in-process, on an empty
  instance) and the time to read the configs alone.
- `scale_sensor_steady_tick`: the real `dagster-daemon` again (fresh instance,
  run queue closed) against a long-lived code server (`dagster code-server
  start`, as `dagster dev` and deployments run one), `FANOUT_OBJECTS_PER_RUN=100`
  so that the first tick requests every object (100 runs); then the ticks that
  follow with nothing changed, the state every tick reads being 10,000
  key-value entries. `wall_s` is the slowest of `steady_ticks` such ticks (the
  daemon's own tick record: start -> end, gRPC call to the code server
  included); extras give each tick's time, the sensor's cursor size in bytes,
  the entries in the key-value store, and the sensor function alone in a fresh
  process: its first tick (`cold_process_tick_s`: every config read and hashed,
  what the first tick after a code server restart costs; dagster-daemon
  replaces the code servers it starts itself every 60 s) and the next ones.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.dagster_modes import Daemon, write_instance

SENSOR_NAME = "object_configs_sensor"


def run_sensor_tick(spec: dict) -> dict:
    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    from fanout_dagster.core.objects import load_objects
    from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME

    n = spec["objects"]
    t0 = time.perf_counter()
    load = load_objects(spec["configs"])
    config_load_s = time.perf_counter() - t0
    if len(load.objects) != n or load.errors:
        raise RuntimeError(
            f"expected {n} valid configs, got {len(load.objects)} and {len(load.errors)} errors"
        )
    eval_s, requested = _evaluate_in_process(spec)

    home = Path(os.environ["DAGSTER_HOME"])
    workspace = write_instance(home, 0)  # max_concurrent_runs: 0 - runs stay queued
    workdir = Path(spec["workdir"])
    instance = DagsterInstance.get()
    daemon = Daemon(workspace, dict(os.environ), workdir / "daemon.log", workdir)
    deadline = time.time() + spec["timeout_s"]
    t_partitions = None
    tick = None
    partitions_seen = 0
    run_counts: list[tuple[float, int]] = []
    try:
        while time.time() < deadline:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited; see {daemon.log_path}")
            now = time.time()
            if t_partitions is None:
                partitions_seen = len(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))
                if partitions_seen >= n:
                    t_partitions = now
            run_counts.append((now, instance.get_runs_count()))
            tick = _first_tick(instance, InstigatorType)
            if tick is not None and tick.status != TickStatus.STARTED:
                break
            # The tick goes on creating one queued run per object; a window of it gives the rate.
            if t_partitions is not None and now - t_partitions > spec["tick_window_s"]:
                break
            time.sleep(0.5)
    finally:
        daemon.stop()
    if tick is None:
        raise TimeoutError(f"no sensor tick within {spec['timeout_s']} s; see {daemon.log_path}")
    tick_start = tick.timestamp
    finished = tick.status != TickStatus.STARTED
    created = [(t, c) for t, c in run_counts if c > 0]
    rate = None
    if len(created) >= 2 and created[-1][0] > created[0][0]:
        rate = (created[-1][1] - created[0][1]) / (created[-1][0] - created[0][0])
    tick_total = None
    if finished and tick.end_timestamp:
        tick_total = tick.end_timestamp - tick_start
    elif rate and created:
        # First run created, then the rest at the measured rate.
        tick_total = (created[0][0] - tick_start) + (n - created[0][1]) / rate
    log_text = daemon.log_path.read_text(errors="replace")
    return {
        "t0": tick_start,
        "wall_s": (t_partitions - tick_start) if t_partitions else None,
        "runs": [],
        "timeline": [],
        "extras": {
            "partitions_added": n if t_partitions else partitions_seen,
            "all_partitions_added": t_partitions is not None,
            "tick_status": tick.status.value,
            "tick_error": tick.error.message[:500] if tick.error else None,
            "tick_total_s": round(tick_total, 1) if tick_total else None,
            "tick_total_estimated": bool(tick_total) and not finished,
            "runs_created": run_counts[-1][1] if run_counts else 0,
            "run_creation_per_s": round(rate, 2) if rate else None,
            "first_run_after_tick_start_s": round(created[0][0] - tick_start, 1)
            if created
            else None,
            "daemon_launch_to_tick_s": round(tick_start - daemon.launched, 3),
            "config_load_s": round(config_load_s, 3),
            "sensor_eval_in_process_s": round(eval_s, 3),
            "run_requests_in_tick": requested,
            "code_server_heartbeat_timeouts": log_text.count("No heartbeat received"),
        },
    }


def _evaluate_in_process(spec: dict) -> tuple[float, int]:
    """The sensor function alone, on an empty in-memory instance: reading, hashing, requests."""
    from dagster import DagsterInstance, SensorResult, build_sensor_context

    from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
    from fanout_dagster.orchestration.sensor import build_object_sensor

    with DagsterInstance.ephemeral() as instance:
        catalog = ObjectConfigs(configs_dir=spec["configs"], data_root=spec["data_root"])
        context = build_sensor_context(instance=instance, resources={"object_configs": catalog})
        started = time.perf_counter()
        result = build_object_sensor()(context)
        elapsed = time.perf_counter() - started
    requested = len(result.run_requests or []) if isinstance(result, SensorResult) else 0
    return elapsed, requested


def _first_tick(instance, InstigatorType):
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    for state in states:
        if state.name == SENSOR_NAME:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10)
            return ticks[-1] if ticks else None
    return None


def run_sensor_steady(spec: dict) -> dict:
    """Steady-state ticks over N configs through the real daemon (see the module doc)."""
    import statistics

    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    from fanout_dagster.orchestration.object_state import KV_PREFIX
    from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME

    n, wanted = spec["objects"], spec["steady_ticks"]
    home = Path(os.environ["DAGSTER_HOME"])
    write_instance(home, 0)  # dagster.yaml with max_concurrent_runs: 0 - runs stay queued
    workdir = Path(spec["workdir"])
    instance = DagsterInstance.get()
    # A long-lived code server, as `dagster dev` and deployments run one: the
    # daemon connects to it. (With a python_module workspace, dagster-daemon
    # starts its own code servers and replaces them every 60 s; the first tick
    # in a fresh server reads the configs cold: `cold_process_tick_s` below.)
    server, workspace = _code_server(workdir)
    daemon = Daemon(workspace, dict(os.environ), workdir / "daemon.log", workdir)
    deadline = time.time() + spec["timeout_s"]
    ticks: list = []
    try:
        while time.time() < deadline:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited; see {daemon.log_path}")
            ticks = [t for t in _ticks(instance, InstigatorType) if t.status != TickStatus.STARTED]
            if len(ticks) >= 1 + wanted:
                break
            time.sleep(1.0)
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=60)
    if len(ticks) < 1 + wanted:
        raise TimeoutError(f"{len(ticks)} finished sensor ticks; see {daemon.log_path}")
    first, steady = ticks[0], ticks[1 : 1 + wanted]
    if first.status != TickStatus.SUCCESS or any(t.status != TickStatus.SKIPPED for t in steady):
        raise RuntimeError(
            f"expected one tick with runs, then skipped ones: {[t.status.value for t in ticks]}"
        )
    durations = [t.end_timestamp - t.timestamp for t in steady]
    cursor = _cursor(instance, InstigatorType) or ""
    keys = instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME)
    entries = len(instance.run_storage.get_cursor_values({KV_PREFIX + key for key in keys}))
    cold, warm = _fresh_process_ticks(spec, cursor)
    return {
        "t0": steady[0].timestamp,
        "wall_s": max(durations),
        "runs": [],
        "timeline": None,
        "extras": {
            "steady_tick_s": [round(d, 3) for d in durations],
            "steady_tick_median_s": round(statistics.median(durations), 3),
            "first_tick_s": round(first.end_timestamp - first.timestamp, 1),
            "first_tick_runs": len(first.run_ids),
            "cursor_bytes": len(cursor.encode()),
            "cursor": cursor,
            "state_entries": entries,
            "objects_in_state": n,
            "cold_process_tick_s": cold,
            "sensor_eval_steady_in_process_s": warm,
        },
    }


def _code_server(workdir: Path) -> tuple[subprocess.Popen, Path]:
    """`dagster code-server start` on a free port, and a workspace pointing at it."""
    from dagster._grpc.client import DagsterGrpcClient

    from bench.dagster_modes import LOCATION_NAME

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("dagster"))
    log = open(workdir / "code_server.log", "ab")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(
        [exe, "code-server", "start", "-h", "127.0.0.1", "-p", str(port)]
        + ["-m", "fanout_dagster.definitions", "--location-name", LOCATION_NAME],
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.time() + 180
    while True:
        try:
            client.ping("ready")
            break
        except Exception:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"code server did not start; see {log.name}") from None
            time.sleep(0.5)
    workspace = workdir / "workspace-grpc.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "grpc_server": {
                            "host": "127.0.0.1",
                            "port": port,
                            "location_name": LOCATION_NAME,
                        }
                    }
                ]
            }
        )
    )
    return server, workspace


_FRESH_TICKS = """
import json, sys, time
from dagster import DagsterInstance, build_sensor_context
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.sensor import build_object_sensor
spec, cursor = json.loads(sys.argv[1]), sys.argv[2]
catalog = ObjectConfigs(configs_dir=spec["configs"], data_root=spec["data_root"])
sensor = build_object_sensor(objects_per_run=spec["pack_size"])
times = []
with DagsterInstance.get() as instance:
    for _ in range(4):
        context = build_sensor_context(instance=instance, cursor=cursor, resources={"object_configs": catalog})
        started = time.perf_counter()
        result = sensor(context)
        times.append(time.perf_counter() - started)
        assert not result.run_requests, "a steady tick requested runs"
        cursor = result.cursor or cursor
print(json.dumps(times))
"""


def _fresh_process_ticks(spec: dict, cursor: str) -> tuple[float, float]:
    """(first tick of a fresh process, median of the next three): the sensor function
    alone, in a new Python process against the same instance, as in a code server
    just (re)started: the first one reads every config and hashes every object."""
    import json
    import statistics

    out = subprocess.run(
        [sys.executable, "-c", _FRESH_TICKS, json.dumps(spec), cursor],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = json.loads(out.strip().splitlines()[-1])
    return round(times[0], 3), round(statistics.median(times[1:]), 3)


def _ticks(instance, InstigatorType) -> list:
    """The object sensor's ticks, oldest first."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR_NAME:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=50)
            return sorted(ticks, key=lambda t: t.timestamp)
    return []


def _cursor(instance, InstigatorType) -> str | None:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR_NAME and state.instigator_data:
            return state.instigator_data.cursor
    return None
