"""The orchestrator: `python -m bench [options]` (see --help).

Every (mode, N) measurement runs in a fresh `python -m bench.worker` process
under bench.proc.run_measured: wall and CPU time of its whole process tree,
plus the CPU everything else on the machine used meanwhile. Modes at the same
N read the same generated data; each writes to its own warehouse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import proc, report
from bench.data import write_objects, write_scale_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OBJECTS = (10, 60, 240)
MODES = ("floor", "per_process", "per_run", "packed")
DAGSTER_MODES = ("per_run", "packed", "databricks_per_run", "databricks_packed")
CONTENDED_CORES = 0.25  # background CPU (cores) above which a measurement is flagged
PACKED_TARGET_RATIO = 1.5
PACKED_TARGET_N = 60
DEFS_LOAD_TARGET_S = 5.0
SENSOR_TICK_TARGET_S = 30.0
STEADY_TICK_TARGET_S = 2.0
CURSOR_TARGET_BYTES = 10_000
STEADY_PACK_SIZE = 100  # objects per run of the steady-state measurement's first tick


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Orchestration overhead of many small objects: bare Spark vs a process per object "
        "vs the product (a Dagster run per object, or packed runs).",
    )
    p.add_argument("--objects", help="comma-separated N values (default: 10,60,240)")
    p.add_argument(
        "--modes",
        help=f"comma-separated, from {','.join(MODES)} (default: all); "
        "`none` with --scale: the scale section only",
    )
    p.add_argument("--rows", type=int, default=2000, help="rows per object CSV (default 2000)")
    p.add_argument(
        "--pack-size",
        type=int,
        default=0,
        help="K objects per packed run (default: ceil(N / concurrency), at most 60)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=4,
        help="T threads per SparkSession (floor, packed; default 4)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="processes / Dagster runs at once (per_process, max_concurrent_runs; default 2)",
    )
    p.add_argument(
        "--spark-master",
        default="local[2]",
        help="Spark master of every session (default local[2])",
    )
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"), help="results folder")
    p.add_argument(
        "--max-n-per-process",
        type=int,
        default=60,
        help="measure per_process up to this N and extrapolate (linear fit) above it; "
        "0 = measure every N (default 60)",
    )
    p.add_argument(
        "--max-n-per-run",
        type=int,
        default=60,
        help="same for per_run: a run per object at N=240 takes most "
        "of an hour on 2 cores (default 60; 0 = measure every N)",
    )
    p.add_argument(
        "--timeline-n",
        type=int,
        default=PACKED_TARGET_N,
        help="N whose per-object timeline is drawn (default 60, else the nearest measured)",
    )
    p.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=10_000,
        default=None,
        help="the config-scale section with this many configs (default 10000); "
        "alone it runs only that section; included in the full default run",
    )
    p.add_argument(
        "--no-scale", action="store_true", help="skip the scale section of the full default run"
    )
    p.add_argument(
        "--scale-files", type=int, default=100, help="YAML files the scale configs are spread over"
    )
    p.add_argument(
        "--tick-window",
        type=float,
        default=90.0,
        help="seconds to watch the sensor's first tick creating runs after the partitions "
        "are in, to measure its rate (default 90)",
    )
    p.add_argument(
        "--steady-ticks",
        type=int,
        default=3,
        help="steady-state sensor ticks (nothing changed) measured in the scale section (default 3)",
    )
    p.add_argument(
        "--databricks",
        action="store_true",
        help="per_run vs packed on the databricks target against the local emulator",
    )
    p.add_argument(
        "--databricks-objects", help="N values for --databricks (default: --objects, else 10)"
    )
    p.add_argument(
        "--cluster-start-s",
        type=float,
        default=10.0,
        help="the emulator's simulated cluster start (default 10 s)",
    )
    p.add_argument(
        "--databricks-poll-s",
        type=float,
        default=0.0,
        help="FANOUT_DATABRICKS_POLL_S for the step launcher (default: the product's)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each measurement, wait up to this many seconds for other processes "
        "to use < 0.25 cores (default 120; 0 = don't wait)",
    )
    p.add_argument(
        "--retry-contended",
        type=int,
        default=1,
        help="re-run a measurement during which other processes used > 0.25 cores, up to this "
        "many times, keeping the least contended attempt (default 1)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="per measurement (default 3600 s)")
    p.add_argument(
        "--workdir", help="where data, instances and warehouses go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)

    no_modes = args.modes is not None and args.modes.strip() == "none"
    explicit = args.objects is not None or (args.modes is not None and not no_modes)
    args.run_main = not no_modes and not (
        (args.scale is not None or args.databricks) and not explicit
    )
    if no_modes:
        args.modes = None
    args.run_scale = args.scale is not None or (
        not explicit and not args.databricks and not args.no_scale
    )
    args.scale_n = args.scale or 10_000
    args.objects_list = _ints(args.objects) if args.objects else list(DEFAULT_OBJECTS)
    args.modes_list = [m.strip() for m in args.modes.split(",")] if args.modes else list(MODES)
    for mode in args.modes_list:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    args.databricks_objects_list = (
        _ints(args.databricks_objects)
        if args.databricks_objects
        else (args.objects_list if args.objects else [10])
    )
    return args


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def pack_size(args, n: int) -> int:
    return args.pack_size or min(60, math.ceil(n / args.concurrency))


# -- machine --------------------------------------------------------------------------------------


def machine_info() -> dict:
    def run(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
            return (out.stdout + out.stderr).strip()
        except Exception:
            return ""

    import dagster
    import pyspark

    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    java = run(["java", "-version"]).splitlines()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "java": java[0].split('"')[1] if java and '"' in java[0] else (java[0] if java else ""),
        "dagster": dagster.__version__,
        "pyspark": pyspark.__version__,
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- one measurement ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, workdir: Path, logs: Path, machine: dict):
        self.args = args
        self.workdir = workdir
        self.logs = logs
        self.machine = machine
        self.records: list[dict] = []
        self.timelines: dict[tuple[str, int], dict] = {}

    def data_for(self, n: int) -> tuple[Path, Path]:
        t = time.time()
        configs, data = write_objects(self.workdir / f"n{n}", n, self.args.rows)
        if time.time() - t > 1:
            print(
                f"  generated {n} objects x {self.args.rows} rows in {time.time() - t:.1f} s",
                flush=True,
            )
        return configs, data

    def env_for(self, spec: dict) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FANOUT_", "DAGSTER_", "DATABRICKS_"))
        }
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
                "FANOUT_TARGET": "local",
                "FANOUT_CONFIGS_DIR": spec["configs"],
                "FANOUT_DATA_ROOT": spec["data_root"],
                "FANOUT_SPARK_WAREHOUSE": spec["spark_warehouse"],
                "FANOUT_OBJECTS_PER_RUN": str(spec["pack_size"]),
                "FANOUT_THREADS_PER_RUN": str(spec["threads"]),
                "FANOUT_SPARK_MASTER": spec["spark_master"],
                "DAGSTER_HOME": str(Path(spec["workdir"]) / "dagster_home"),
            }
        )
        return env

    def spec(
        self, mode: str, n: int, configs: Path, data: Path, *, label: str | None = None, **extra
    ) -> dict:
        run_dir = self.workdir / f"n{n}" / "runs" / (label or mode)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        packed = mode in ("packed", "databricks_packed")
        spec = {
            "mode": mode,
            "objects": n,
            "configs": str(configs),
            "data_root": str(data),
            "spark_warehouse": str(run_dir / "spark-warehouse"),
            "spark_master": self.args.spark_master,
            "threads": self.args.threads,
            "concurrency": self.args.concurrency,
            "pack_size": pack_size(self.args, n) if packed else 1,
            "objects_limit": 0,
            "workdir": str(run_dir),
            "out": str(run_dir / "result.json"),
            "timeout_s": self.args.timeout,
            "cluster_start_s": self.args.cluster_start_s,
            "databricks_poll_s": self.args.databricks_poll_s,
        }
        spec.update(extra)
        return spec

    def measure(self, spec: dict, *, record_n: int | None = None) -> dict:
        """Run one measurement (again while it was contended); keep the least contended attempt."""
        attempts = []
        for attempt in range(1 + max(0, self.args.retry_contended)):
            if attempt:
                print(
                    f"  contended ({attempts[-1][0]['background_cores']} cores used by other processes): "
                    "measuring again",
                    flush=True,
                )
                spec = {**spec}
                run_dir = Path(spec["workdir"])
                shutil.rmtree(run_dir)
                run_dir.mkdir(parents=True)
            record, timeline = self._measure_once(spec, record_n=record_n)
            attempts.append((record, timeline))
            if not record.get("contended") or record.get("error"):
                break
        record, timeline = min(
            attempts, key=lambda a: (bool(a[0].get("error")), a[0]["background_cores"])
        )
        record["attempts"] = len(attempts)
        if len(attempts) > 1:
            record["other_attempts"] = [
                {k: a[0].get(k) for k in ("wall_s", "cpu_s", "background_cores", "started_at")}
                for a in attempts
                if a[0] is not record
            ]
        if timeline is not None:
            self.timelines[(record["mode"], record["objects"])] = timeline
        self.records.append(record)
        return record

    def _measure_once(self, spec: dict, *, record_n: int | None = None) -> tuple[dict, dict | None]:
        mode, n = spec["mode"], record_n or spec["objects"]
        waited, background_before = (0.0, None)
        if self.args.quiet_wait > 0:
            waited, background_before = proc.wait_for_quiet(self.args.quiet_wait, CONTENDED_CORES)
        log = self.logs / f"{mode}-n{n}.log"
        started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(
            f"> {mode} N={spec['objects']}"
            + (f" (waited {waited:.0f} s for a quiet machine)" if waited > 6 else "")
            + " ... ",
            end="",
            flush=True,
        )
        spec["t_launch"] = time.time()
        spec_path = Path(spec["workdir"]) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        m = proc.run_measured(
            [sys.executable, "-m", "bench.worker", str(spec_path)],
            env=self.env_for(spec),
            log_path=log,
            timeout=spec["timeout_s"] + 300,
            cwd=str(REPO_ROOT),
        )
        out = Path(spec["out"])
        result = (
            json.loads(out.read_text())
            if out.exists()
            else {"error": f"no result (exit {m.returncode})"}
        )
        for name in ("daemon.log",):
            if (Path(spec["workdir"]) / name).exists():
                shutil.copy(Path(spec["workdir"]) / name, self.logs / f"{mode}-n{n}-{name}")
        measured_s = m.reaped - m.started
        background = m.background_cpu_s / measured_s if measured_s > 0 else 0.0
        record = {
            "mode": mode,
            "objects": n,
            "wall_s": _round(result.get("wall_s")),
            "cpu_s": _round(m.cpu_s),
            "ratio_to_floor": None,
            "per_object_overhead_s": None,
            "runs": len(result.get("runs", [])) or None,
            "started_at": started_at,
            "extrapolated": False,
            "process_tree_s": _round(m.wall_s),  # worker launch -> worker exit
            "background_cores": round(background, 3),
            "contended": background > CONTENDED_CORES,
            "quiet_wait_s": round(waited, 1),
            "threads": spec["threads"],
            "concurrency": spec["concurrency"],
            "rows_per_object": self.args.rows,
            **{k: v for k, v in (result.get("extras") or {}).items()},
        }
        if result.get("error") or m.returncode != 0:
            record["error"] = result.get("error") or f"worker exit {m.returncode}"
            record["log"] = str(log)
        if m.killed:
            record["leftover_processes_killed"] = len(m.killed)
        timeline = None
        if result.get("timeline") is not None:
            timeline = {
                "t0": result.get("t0"),
                "wall_s": result.get("wall_s"),
                "timeline": result.get("timeline"),
                "runs": result.get("runs", []),
            }
        status = (
            "ERROR " + record["error"][:200]
            if record.get("error")
            else (f"wall {record['wall_s']} s, CPU {record['cpu_s']} s, bg {background:.2f} cores")
        )
        print(status, flush=True)
        return record, timeline

    # -- sections -------------------------------------------------------------------------------

    def main_section(self) -> None:
        args = self.args
        caps = {"per_process": args.max_n_per_process, "per_run": args.max_n_per_run}
        for n in args.objects_list:
            configs, data = self.data_for(n)
            for mode in args.modes_list:
                cap = caps.get(mode, 0)
                if cap and n > cap:
                    continue  # extrapolated in finish()
                self.measure(self.spec(mode, n, configs, data))
        # A capped mode with no measured N at or below its cap: measure at the cap on a subset.
        for mode, cap in caps.items():
            if mode not in args.modes_list or not cap:
                continue
            over = [n for n in args.objects_list if n > cap]
            if over and not any(r["mode"] == mode and r["objects"] <= cap for r in self.records):
                configs, data = self.data_for(max(over))
                self.measure(self.spec(mode, cap, configs, data, objects_limit=cap), record_n=cap)
            for n in over:
                self.extrapolate(mode, n)

    def extrapolate(self, mode: str, n: int) -> None:
        points = sorted(
            (r["objects"], r["wall_s"], r["cpu_s"])
            for r in self.records
            if r["mode"] == mode
            and not r.get("extrapolated")
            and r.get("wall_s")
            and not r.get("error")
        )
        if not points:
            return
        xs = [p[0] for p in points]
        if len(points) >= 2:
            wall = _linear(xs, [p[1] for p in points], n)
            cpu = _linear(xs, [p[2] for p in points], n)
        else:
            wall, cpu = points[0][1] * n / xs[0], points[0][2] * n / xs[0]
        self.records.append(
            {
                "mode": mode,
                "objects": n,
                "wall_s": _round(wall),
                "cpu_s": _round(cpu),
                "ratio_to_floor": None,
                "per_object_overhead_s": None,
                "runs": n if mode in ("per_process", "per_run") else None,
                "started_at": None,
                "extrapolated": True,
                "extrapolated_from": xs,
                "extrapolation": "least-squares line through the measured N"
                if len(xs) > 1
                else "proportional",
            }
        )

    def scale_section(self) -> None:
        n = self.args.scale_n
        root = self.workdir / f"scale-{n}"
        t = time.time()
        configs, data = write_scale_configs(root, n, self.args.scale_files)
        print(
            f"  generated {n} configs in {self.args.scale_files} files in {time.time() - t:.1f} s",
            flush=True,
        )
        # (1) definitions load, median of 3 fresh processes.
        spec = self.spec("scale_definitions_load", n, configs, data)
        env = self.env_for(spec)
        walls, cpus = [], []
        if self.args.quiet_wait > 0:
            proc.wait_for_quiet(self.args.quiet_wait, CONTENDED_CORES)
        started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(f"> scale_definitions_load N={n} ... ", end="", flush=True)
        background = []
        for _i in range(3):
            m = proc.run_measured(
                [sys.executable, "-c", "import fanout_dagster.definitions"],
                env=env,
                log_path=self.logs / "scale_definitions_load.log",
                timeout=600,
                cwd=str(REPO_ROOT),
            )
            if m.returncode != 0:
                raise RuntimeError(
                    f"importing the definitions failed; see {self.logs / 'scale_definitions_load.log'}"
                )
            walls.append(m.wall_s)
            cpus.append(m.cpu_s)
            background.append(m.background_cpu_s / max(1e-6, m.reaped - m.started))
        wall = statistics.median(walls)
        record = {
            "mode": "scale_definitions_load",
            "objects": n,
            "wall_s": _round(wall, 3),
            "cpu_s": _round(statistics.median(cpus), 3),
            "ratio_to_floor": None,
            "per_object_overhead_s": None,
            "runs": None,
            "started_at": started_at,
            "extrapolated": False,
            "samples_s": [round(w, 3) for w in walls],
            "background_cores": round(max(background), 3),
            "contended": max(background) > CONTENDED_CORES,
            "config_files": self.args.scale_files,
            "target": f"< {DEFS_LOAD_TARGET_S:.0f} s",
            "target_met": wall < DEFS_LOAD_TARGET_S,
        }
        self.records.append(record)
        print(f"median {wall:.2f} s (samples {', '.join(f'{w:.2f}' for w in walls)})", flush=True)
        # (2) the sensor's first tick through the real daemon.
        spec = self.spec("scale_sensor_first_tick", n, configs, data)
        spec["timeout_s"] = min(self.args.timeout, 1200)
        spec["tick_window_s"] = self.args.tick_window
        record = self.measure(spec)
        if record.get("wall_s") is not None:
            record["target"] = f"< {SENSOR_TICK_TARGET_S:.0f} s to add all partitions"
            record["target_met"] = record["wall_s"] < SENSOR_TICK_TARGET_S
        # (3) steady state: ticks with nothing changed, through the real daemon.
        spec = self.spec(
            "scale_sensor_steady_tick",
            n,
            configs,
            data,
            pack_size=STEADY_PACK_SIZE,
            steady_ticks=self.args.steady_ticks,
        )
        spec["timeout_s"] = min(self.args.timeout, 1200)
        record = self.measure(spec)
        if record.get("wall_s") is not None:
            record["target"] = (
                f"tick <= {STEADY_TICK_TARGET_S:.0f} s, cursor < {CURSOR_TARGET_BYTES // 1000} KB"
            )
            record["target_met"] = (
                record["wall_s"] <= STEADY_TICK_TARGET_S
                and record.get("cursor_bytes", CURSOR_TARGET_BYTES) < CURSOR_TARGET_BYTES
            )

    def databricks_section(self) -> None:
        from bench.databricks import MODES as DB_MODES
        from bench.databricks import unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"--databricks skipped: {reason}", flush=True)
            return
        for n in self.args.databricks_objects_list:
            configs, data = self.data_for(n)
            for mode in DB_MODES:
                self.measure(self.spec(mode, n, configs, data))

    # -- derived fields and targets -------------------------------------------------------------

    def finish(self) -> list[str]:
        notes = []
        floors = {
            r["objects"]: r["wall_s"]
            for r in self.records
            if r["mode"] == "floor" and r.get("wall_s")
        }
        for r in self.records:
            floor = floors.get(r["objects"])
            if floor and r.get("wall_s") is not None and not r["mode"].startswith("scale_"):
                r["ratio_to_floor"] = round(r["wall_s"] / floor, 3)
                r["per_object_overhead_s"] = round((r["wall_s"] - floor) / r["objects"], 3)
                if r.get("pickup_s") is not None:
                    # Without the wait for the backfill daemon's next 30 s loop.
                    r["ratio_to_floor_excl_pickup"] = round(
                        (r["wall_s"] - r["pickup_s"]) / floor, 3
                    )
            r.setdefault("machine", self.machine)
        by = {(r["mode"], r["objects"]): r for r in self.records}
        packed = by.get(("packed", PACKED_TARGET_N))
        if packed and packed.get("ratio_to_floor") is not None:
            packed["target"] = f"<= {PACKED_TARGET_RATIO}x floor at N={PACKED_TARGET_N}"
            packed["target_met"] = packed["ratio_to_floor"] <= PACKED_TARGET_RATIO
        for r in self.records:
            if r["mode"] == "per_run" and r.get("wall_s") is not None:
                pp = by.get(("per_process", r["objects"]))
                if pp and pp.get("wall_s") is not None:
                    r["target"] = "<= per_process wall" + (
                        " (extrapolated)" if pp.get("extrapolated") else ""
                    )
                    r["target_met"] = r["wall_s"] <= pp["wall_s"]
        # Where the time goes, from the records themselves.
        for r in sorted(self.records, key=lambda r: (r["objects"], r["mode"])):
            if r["mode"] in DAGSTER_MODES and r.get("mean_run_s") is not None:
                notes.append(
                    f"{r['mode']} N={r['objects']}: {r.get('runs')} runs, mean run {r['mean_run_s']} s "
                    f"(run worker start + Spark start + objects), backfill pickup {r.get('pickup_s')} s, "
                    f"mean queue wait {r.get('mean_queue_wait_s')} s, daemon-included total {r.get('total_s')} s"
                    + (
                        f"; x floor without the pickup {r['ratio_to_floor_excl_pickup']}"
                        if r.get("ratio_to_floor_excl_pickup") is not None
                        else ""
                    )
                )
            if r["mode"] == "per_process" and r.get("mean_process_s") is not None:
                notes.append(
                    f"per_process N={r['objects']}: mean process {r['mean_process_s']} s "
                    f"(Python + JVM start {r.get('mean_session_start_s')} s)"
                )
            if r["mode"] == "floor" and r.get("session_start_s") is not None:
                notes.append(
                    f"floor N={r['objects']}: SparkSession ready {r['session_start_s']} s after launch"
                )
            if r["mode"] == "scale_sensor_first_tick":
                notes.append(
                    f"sensor first tick over {r['objects']} configs: reading the configs alone "
                    f"{r.get('config_load_s')} s, the sensor function alone {r.get('sensor_eval_in_process_s')} s "
                    f"({r.get('run_requests_in_tick')} run requests); all partitions in after {r.get('wall_s')} s; "
                    f"then queued runs created at {r.get('run_creation_per_s')}/s, so the whole tick takes "
                    f"{'~' if r.get('tick_total_estimated') else ''}{r.get('tick_total_s')} s; "
                    f"code server heartbeat timeouts during it: {r.get('code_server_heartbeat_timeouts')}"
                )
            if r["mode"] == "scale_sensor_steady_tick":
                notes.append(
                    f"sensor steady ticks over {r['objects']} configs (nothing changed): "
                    f"{r.get('steady_tick_s')} s each through the daemon and a long-lived code "
                    f"server (median {r.get('steady_tick_median_s')} s); the sensor function alone "
                    f"{r.get('sensor_eval_steady_in_process_s')} s, its first tick in a fresh "
                    f"process {r.get('cold_process_tick_s')} s; cursor {r.get('cursor_bytes')} "
                    f"bytes; {r.get('state_entries')} per-object entries in the key-value store; "
                    f"first tick (every object requested, {r.get('first_tick_runs')} runs) "
                    f"{r.get('first_tick_s')} s"
                )
            if r.get("contended"):
                notes.append(
                    f"{r['mode']} N={r['objects']}: other processes used {r['background_cores']} cores on average "
                    "during this measurement; its times are inflated"
                )
        return notes


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def _linear(xs, ys, x):
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    return my + slope * (x - mx)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not proc.become_subreaper():
        print(
            "warning: cannot become a child subreaper; CPU of orphaned processes (JVMs) may be missed",
            file=sys.stderr,
        )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out)
    logs = out_dir / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"{command}\nwork dir {workdir}, logs {logs}\n"
        f"{machine['cpus']} CPUs, load {' '.join(machine['loadavg_at_start'])}",
        flush=True,
    )
    bench = Bench(args, workdir, logs, machine)
    t_start = time.time()
    try:
        if args.run_main:
            bench.main_section()
        if args.run_scale:
            bench.scale_section()
        if args.databricks:
            bench.databricks_section()
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured so far", file=sys.stderr)
    finally:
        notes = bench.finish()
        if bench.records:
            paths = report.write_json(bench.records, out_dir, stamp)
            summary = report.write_summary(
                bench.records, out_dir, command=command, machine=machine, notes=notes
            )
            timeline_path = None
            measured_ns = sorted({n for (_, n) in bench.timelines})
            if measured_ns:
                tn = min(measured_ns, key=lambda n: (abs(n - args.timeline_n), -n))
                timeline_path = report.write_timeline(
                    {
                        m: t
                        for (m, n), t in bench.timelines.items()
                        if n == tn and not m.startswith("scale_")
                    },
                    tn,
                    out_dir / "timeline.png",
                )
                (logs / "timelines.json").write_text(
                    json.dumps({f"{m}-{n}": t for (m, n), t in bench.timelines.items()})
                )
            print()
            print(report.console_table(bench.records))
            print()
            for note in notes:
                print(f"- {note}")
            print(
                f"\nwrote {', '.join(str(p) for p in paths)}, {summary}"
                + (f", {timeline_path}" if timeline_path else "")
                + f"\ntotal {time.time() - t_start:.0f} s"
            )
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.get("error") for r in bench.records) else 0
