"""The orchestrator: `python -m bench [options]` (see --help).

Every measurement runs in a fresh `python -m bench.worker` process under
bench.proc.run_measured: wall time, CPU and peak resident memory of its whole
process tree, plus the CPU everything else on the machine used meanwhile.
Modes at the same N read the same generated data; each writes tables of its
own (a warehouse of its own, or on the warm server a bronze schema
`bench_<mode>_n<N>` of its own).

The main section's `warm_floor` and (with `--spark connect`, the default) its
Dagster modes use one warm local Spark Connect server that the orchestrator
starts before the section and stops after it (bench/warm.py): its start-up is
in no measurement; its CPU during a measurement is added to that measurement's
`cpu_s`, and its memory to the measurement's peak.

Sections, in this order: main (modes x N), dev_loop (what `make dev` gives),
server_memory (the server over many runs), scale (10k configs; bench/scale.py),
databricks (the emulator; only with --databricks).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import proc, report
from bench.data import write_objects, write_scale_configs
from bench.warm import WarmServer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OBJECTS = (10, 60, 240)
MODES = ("floor", "warm_floor", "per_process", "per_run", "packed")
DAGSTER_MODES = ("per_run", "packed", "databricks_per_run", "databricks_packed")
CONTENDED_CORES = 0.25  # background CPU (cores) above which a measurement is flagged
PACKED_TARGET_RATIO = 1.5
PACKED_TARGET_N = 60
PER_RUN_TARGET_RATIO = 3.0
PER_RUN_TARGET_N = 60
LAUNCH_TARGET_S = 3.0
MIN_LAUNCHES = 5
FIRST_MINUTES_TARGET_S = 30.0
DEFAULT_LAUNCHES = 7
DEFAULT_SERVER_RUNS = 500
DEFS_LOAD_TARGET_S = 5.0
SENSOR_TICK_TARGET_S = 30.0
STEADY_TICK_TARGET_S = 2.0
CURSOR_TARGET_BYTES = 10_000
STEADY_PACK_SIZE = 100  # objects per run of the steady-state measurement's first tick
SECTIONS = ("main", "warm_server", "dev_loop", "server_memory", "scale", "databricks")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Orchestration overhead of many small objects: bare Spark (cold and on a warm "
        "Spark Connect server) vs a process per object vs the product (a Dagster run per object, "
        "or packed runs); what `make dev` gives; the server's memory over many runs. Without "
        "--objects/--modes/--scale/--databricks/--launches N/--server-runs N: every section.",
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
        help="T threads per SparkSession (floor, warm_floor, packed; default 4)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="processes / Dagster runs at once (per_process, max_concurrent_runs; default 2)",
    )
    p.add_argument(
        "--spark",
        choices=("connect", "embedded"),
        default="connect",
        help="how per_run and packed get Spark: `connect` (default, the product's default): "
        "a session on the warm Spark Connect server; `embedded`: a JVM per run (the old way)",
    )
    p.add_argument(
        "--spark-master",
        default="local[2]",
        help="Spark master of every session and of the warm server (default local[2])",
    )
    p.add_argument(
        "--warmup-objects",
        type=int,
        default=8,
        help="objects loaded on the warm server right after it starts, unmeasured, so that no "
        "mode pays its first-use costs (default 8; 0 = none)",
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
        help="same for per_run: a run per object at N=240 takes long on 2 cores "
        "(default 60; 0 = measure every N)",
    )
    p.add_argument(
        "--timeline-n",
        type=int,
        default=PACKED_TARGET_N,
        help="N whose per-object timeline is drawn (default 60, else the nearest measured)",
    )
    p.add_argument(
        "--launches",
        type=int,
        default=None,
        help=f"dev-loop section: single-partition launches after `make dev`'s first minutes "
        f"(default {DEFAULT_LAUNCHES}; the target needs >= {MIN_LAUNCHES}); given alone, only "
        "that section; 0 = skip it",
    )
    p.add_argument(
        "--dev-object",
        default="erp-stores",
        help="the sample object the dev loop launches (default erp-stores)",
    )
    p.add_argument(
        "--server-runs",
        type=int,
        default=None,
        help=f"server-memory section: Dagster runs on one Spark Connect server (default "
        f"{DEFAULT_SERVER_RUNS}); given alone, only that section; 0 = skip it",
    )
    p.add_argument(
        "--server-sample-every",
        type=int,
        default=0,
        help="sample the server's memory every this many runs (default: runs / 10)",
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

    # `--modes none` with --scale: the scale section only, said explicitly.
    no_modes = args.modes is not None and args.modes.strip() == "none"
    if no_modes:
        args.modes = None
    explicit_main = not no_modes and (args.objects is not None or args.modes is not None)
    # Sections asked for by name; a 0 for --launches / --server-runs skips instead.
    selected = (
        args.scale is not None or args.databricks or bool(args.launches) or bool(args.server_runs)
    )
    full = not explicit_main and not selected
    args.run_main = explicit_main or full
    args.run_scale = args.scale is not None or (full and not args.no_scale)
    args.run_dev_loop = bool(args.launches) or (full and args.launches is None)
    args.run_server_memory = bool(args.server_runs) or (full and args.server_runs is None)
    args.launches = DEFAULT_LAUNCHES if args.launches is None else args.launches
    args.server_runs = DEFAULT_SERVER_RUNS if args.server_runs is None else args.server_runs
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


def section_of(mode: str) -> str:
    if mode.startswith("scale_"):
        return "scale"
    if mode.startswith("databricks_"):
        return "databricks"
    if mode in ("dev_loop", "server_memory", "warm_server"):
        return mode
    return "main"


# -- machine --------------------------------------------------------------------------------------


def machine_info() -> dict:
    def run(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
            return (out.stdout + out.stderr).strip()
        except Exception:
            return ""

    from importlib.metadata import version

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
        "jcmd": bool(shutil.which("jcmd")),
        "dagster": dagster.__version__,
        "pyspark": pyspark.__version__,
        "delta_spark": version("delta-spark"),
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
        self.server: WarmServer | None = None  # up during the main section, when a mode uses it
        self.server_record: dict = {}

    def uses_server(self, mode: str) -> bool:
        return mode == "warm_floor" or (
            mode in ("per_run", "packed") and self.args.spark == "connect"
        )

    def kept(self) -> list[int]:
        return [self.server.pid] if self.server is not None else []

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
            # pyspark's process-wide Connect flag (the orchestrator has had a Connect session)
            and k != "SPARK_CONNECT_MODE_ENABLED"
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
                "FANOUT_SPARK": "connect" if spec.get("spark") == "connect" else "embedded",
                "FANOUT_SPARK_WAREHOUSE": spec["spark_warehouse"],
                "FANOUT_BRONZE_SCHEMA": spec.get("bronze_schema", "bronze"),
                "FANOUT_OBJECTS_PER_RUN": str(spec["pack_size"]),
                "FANOUT_THREADS_PER_RUN": str(spec["threads"]),
                "FANOUT_SPARK_MASTER": spec["spark_master"],
                "DAGSTER_HOME": str(Path(spec["workdir"]) / "dagster_home"),
            }
        )
        if spec.get("spark_connect_port"):
            env["FANOUT_SPARK_CONNECT_PORT"] = str(spec["spark_connect_port"])
        return env

    def spec(
        self, mode: str, n: int, configs: Path, data: Path, *, label: str | None = None, **extra
    ) -> dict:
        run_dir = self.workdir / f"n{n}" / "runs" / (label or mode)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        packed = mode in ("packed", "databricks_packed")
        uses_server = self.uses_server(mode)
        if uses_server and self.server is None:
            raise RuntimeError(f"{mode} needs the warm Spark Connect server, which is not up")
        spec = {
            "mode": mode,
            "label": label or mode,
            "section": section_of(mode),
            "objects": n,
            "configs": str(configs),
            "data_root": str(data),
            # connect: on the warm server; embedded: a Spark in the process; databricks: the
            # emulated cluster's.
            "spark": "connect"
            if uses_server
            else ("databricks" if mode.startswith("databricks_") else "embedded"),
            "uses_server": uses_server,
            "spark_connect_port": self.server.port if uses_server and self.server else None,
            # On the server, its warehouse (a schema of their own keeps measurements apart).
            "spark_warehouse": self.server.warehouse
            if uses_server and self.server
            else str(run_dir / "spark-warehouse"),
            "bronze_schema": f"bench_{label or mode}_n{n}",
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

    def measure(
        self, spec: dict, *, record_n: int | None = None, retries: int | None = None
    ) -> dict:
        """Run one measurement (again while it was contended); keep the least contended attempt."""
        attempts: list[tuple[dict, dict | None]] = []
        retries = self.args.retry_contended if retries is None else retries
        for attempt in range(1 + max(0, retries)):
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
                # Tables of its own on the server too: the attempt before left its tables.
                base = spec.setdefault("bronze_schema_base", spec["bronze_schema"])
                spec["bronze_schema"] = f"{base}_a{attempt + 1}"
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

    def _measure_once(
        self, spec: dict, *, record_n: int | None = None, quiet_wait: bool = True
    ) -> tuple[dict, dict | None]:
        mode, n = spec["mode"], record_n or spec["objects"]
        uses_server = bool(spec.get("uses_server"))
        waited, background_before = (0.0, None)
        if quiet_wait and self.args.quiet_wait > 0:
            waited, background_before = proc.wait_for_quiet(
                self.args.quiet_wait, CONTENDED_CORES, keep=self.kept()
            )
        label = spec.get("label") or mode
        log = self.logs / f"{label}-n{n}.log"
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
            keep=self.kept(),
            count_kept_rss=uses_server,
        )
        out = Path(spec["out"])
        result: dict = (
            json.loads(out.read_text())
            if out.exists()
            else {"error": f"no result (exit {m.returncode})"}
        )
        for name in ("daemon.log", "dev.log", "connect-server.log"):
            if (Path(spec["workdir"]) / name).exists():
                shutil.copy(Path(spec["workdir"]) / name, self.logs / f"{label}-n{n}-{name}")
        measured_s = m.reaped - m.started
        background = m.background_cpu_s / measured_s if measured_s > 0 else 0.0
        record: dict = {
            "section": spec.get("section") or section_of(mode),
            "mode": mode,
            "objects": n,
            "wall_s": _round(result.get("wall_s")),
            # The measurement's process tree, plus the warm server's CPU meanwhile when it used it.
            "cpu_s": _round(m.cpu_s + (m.kept_cpu_s if uses_server else 0.0)),
            "ratio_to_floor": None,
            "ratio_to_warm_floor": None,
            "per_object_overhead_s": None,
            "runs": len(result.get("runs", [])) or None,
            "peak_rss_mb": _round(m.peak_rss_mb, 0),
            "started_at": started_at,
            "extrapolated": False,
            "process_tree_s": _round(m.wall_s),  # worker launch -> worker exit
            "tree_cpu_s": _round(m.cpu_s),
            "tree_peak_rss_mb": _round(m.tree_peak_rss_mb, 0),
            "rss_samples": m.rss_samples,
            "spark": spec.get("spark"),
            "bronze_schema": spec.get("bronze_schema"),
            "uses_warm_server": uses_server,
            "background_cores": round(background, 3),
            "contended": background > CONTENDED_CORES,
            "quiet_wait_s": round(waited, 1),
            "threads": spec["threads"],
            "concurrency": spec["concurrency"],
            "rows_per_object": self.args.rows,
        }
        if self.server is not None:
            if uses_server:
                record["server_cpu_s"] = _round(m.kept_cpu_s)
                record["server_rss_at_peak_mb"] = _round(m.kept_rss_at_peak_mb, 0)
                record["server_peak_rss_mb"] = _round(m.kept_peak_rss_mb, 0)
            else:  # up but unused: neither in its CPU nor in its memory, nor in the background
                record["server_idle_cpu_s"] = _round(m.kept_cpu_s)
        extras = result.get("extras") or {}
        record.update(extras)
        unloaded = extras.get("failed_objects") or max(
            0, (extras.get("objects_expected") or 0) - (extras.get("objects_materialized") or 0)
        )
        if result.get("error") or m.returncode != 0:
            record["error"] = result.get("error") or f"worker exit {m.returncode}"
        elif unloaded:  # a measurement of work not done is no measurement
            record["error"] = f"{unloaded} object(s) not loaded; see the logs"
        if record.get("error"):
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
            else (
                f"wall {record['wall_s']} s, CPU {record['cpu_s']} s"
                + (f" (server {record['server_cpu_s']})" if "server_cpu_s" in record else "")
                + f", peak RSS {record['peak_rss_mb']:.0f} MB, bg {background:.2f} cores"
            )
        )
        print(status, flush=True)
        return record, timeline

    # -- sections -------------------------------------------------------------------------------

    def main_section(self) -> None:
        args = self.args
        with contextlib.ExitStack() as stack:
            if any(self.uses_server(m) for m in args.modes_list):
                self.start_server(stack)
            self._main_modes()
            if self.server is not None:
                self.server_after_main()
            self.server = None

    def start_server(self, stack: contextlib.ExitStack) -> None:
        """The warm "all-purpose cluster": started (and warmed up) outside any measurement."""
        print("  starting the warm Spark Connect server ... ", end="", flush=True)
        server = WarmServer(
            self.workdir / "warm-server",
            master=self.args.spark_master,
            log_copy=self.logs / "warm-server.log",
        )
        stack.enter_context(server)
        stack.callback(self._clear_server)
        self.server = server
        print(f"up in {server.startup_s:.1f} s on port {server.port}", flush=True)
        record = {
            "section": "warm_server",
            "mode": "warm_server",
            "objects": self.args.warmup_objects,
            "wall_s": None,
            "cpu_s": None,
            "startup_s": round(server.startup_s, 2),
            "port": server.port,
            "master": self.args.spark_master,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rss_after_start_mb": round(server.rss_mb()),
        }
        if self.args.warmup_objects > 0:
            configs, data = write_objects(
                self.workdir / "warmup", self.args.warmup_objects, self.args.rows
            )
            spec = self.spec("warm_floor", self.args.warmup_objects, configs, data, label="warmup")
            print("  warm-up (not a measurement): ", end="", flush=True)
            warm, _ = self._measure_once(spec, quiet_wait=False)
            record["warmup_wall_s"] = warm.get("wall_s")
            record["warmup_server_cpu_s"] = warm.get("server_cpu_s")
            if warm.get("error"):
                raise RuntimeError(f"warming up the Spark Connect server failed: {warm['error']}")
        record["rss_after_warmup_mb"] = round(server.rss_mb())
        record["heap_after_gc_after_warmup_mb"] = _round(server.heap_after_gc_mb(), 1)
        self.server_record = record
        self.records.append(record)

    def _clear_server(self) -> None:
        self.server = None

    def server_after_main(self) -> None:
        """The warm server once every main measurement is done (it stops right after)."""
        assert self.server is not None
        record = self.server_record
        record["cpu_total_s"] = round(self.server.cpu_s(), 1)
        record["rss_end_mb"] = round(self.server.rss_mb())
        record["heap_after_gc_end_mb"] = _round(self.server.heap_after_gc_mb(), 1)
        record["spark_jobs"] = self.server.spark_jobs()

    def _main_modes(self) -> None:
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
                "section": "main",
                "mode": mode,
                "objects": n,
                "wall_s": _round(wall),
                "cpu_s": _round(cpu),
                "ratio_to_floor": None,
                "ratio_to_warm_floor": None,
                "per_object_overhead_s": None,
                "runs": n if mode in ("per_process", "per_run") else None,
                "peak_rss_mb": None,
                "started_at": None,
                "extrapolated": True,
                "extrapolated_from": xs,
                "extrapolation": "least-squares line through the measured N"
                if len(xs) > 1
                else "proportional",
            }
        )

    def dev_loop_section(self) -> None:
        from fanout_dagster.core.objects import load_objects

        configs, data = REPO_ROOT / "configs", REPO_ROOT / "data"
        n = len(load_objects(str(configs)).objects)
        spec = self.spec(
            "dev_loop",
            n,
            configs,
            data,
            launches=self.args.launches,
            object=self.args.dev_object,
            timeout_s=min(self.args.timeout, 1800),
        )
        self.measure(spec)

    def server_memory_section(self) -> None:
        runs = self.args.server_runs
        spec = self.spec(
            "server_memory",
            runs,
            REPO_ROOT / "configs",
            REPO_ROOT / "data",
            server_runs=runs,
            sample_every=self.args.server_sample_every or max(1, runs // 10),
        )
        # Memory is the figure, not time: a contended machine does not call for a second pass.
        self.measure(spec, retries=0)

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
                # The code location's definitions are built when called (@definitions).
                [sys.executable, "-c", "from fanout_dagster.definitions import defs; defs()"],
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
            if r["mode"] == "floor" and r.get("wall_s") and not r.get("error")
        }
        warm_floors = {
            r["objects"]: r["wall_s"]
            for r in self.records
            if r["mode"] == "warm_floor" and r.get("wall_s") and not r.get("error")
        }
        for r in self.records:
            r.setdefault("section", section_of(r["mode"]))
            comparable = r["section"] in ("main", "databricks") and r.get("wall_s") is not None
            floor = floors.get(r["objects"])
            if comparable and floor:
                r["ratio_to_floor"] = round(r["wall_s"] / floor, 3)
                r["per_object_overhead_s"] = round((r["wall_s"] - floor) / r["objects"], 3)
                if r.get("pickup_s") is not None:
                    # Without the wait for the backfill daemon's next 30 s loop.
                    r["ratio_to_floor_excl_pickup"] = round(
                        (r["wall_s"] - r["pickup_s"]) / floor, 3
                    )
            warm = warm_floors.get(r["objects"])
            if comparable and warm:
                r["ratio_to_warm_floor"] = round(r["wall_s"] / warm, 3)
            r.setdefault("machine", self.machine)
        self.set_targets()
        # Where the time goes, from the records themselves.
        for r in sorted(self.records, key=lambda r: (r["objects"] or 0, r["mode"])):
            if r["mode"] in DAGSTER_MODES and r.get("mean_run_s") is not None:
                notes.append(
                    f"{r['mode']} N={r['objects']} ({r.get('spark')} Spark): {r.get('runs')} runs, "
                    f"mean run {r['mean_run_s']} s, backfill pickup {r.get('pickup_s')} s, "
                    f"mean queue wait {r.get('mean_queue_wait_s')} s, daemon-included total "
                    f"{r.get('total_s')} s"
                    + (
                        f"; x floor without the pickup {r['ratio_to_floor_excl_pickup']}"
                        if r.get("ratio_to_floor_excl_pickup") is not None
                        else ""
                    )
                    + (
                        "; mean run phases: " + _phases_text(r["mean_run_phases_s"])
                        if r.get("mean_run_phases_s")
                        else ""
                    )
                )
            if r["mode"] == "per_process" and r.get("mean_process_s") is not None:
                notes.append(
                    f"per_process N={r['objects']}: mean process {r['mean_process_s']} s "
                    f"(Python + JVM start {r.get('mean_session_start_s')} s)"
                )
            if r["mode"] in ("floor", "warm_floor") and r.get("session_start_s") is not None:
                notes.append(
                    f"{r['mode']} N={r['objects']}: session ready {r['session_start_s']} s after "
                    f"launch, objects {r.get('objects_s')} s"
                )
            if r["mode"] == "warm_server":
                jobs = r.get("spark_jobs") or {}
                parts = [
                    f"warm server: up in {r.get('startup_s')} s (outside every measurement)",
                    f"warm-up of {r['objects']} objects {r.get('warmup_wall_s')} s"
                    if r.get("warmup_wall_s") is not None
                    else "no warm-up",
                    f"RSS {r.get('rss_after_start_mb')} MB started, {r.get('rss_after_warmup_mb')} "
                    "MB warmed up"
                    + (
                        f", {r['rss_end_mb']} MB after the main section"
                        if r.get("rss_end_mb") is not None
                        else ""
                    ),
                    f"heap after GC {r.get('heap_after_gc_after_warmup_mb')} -> "
                    f"{r.get('heap_after_gc_end_mb')} MB"
                    if r.get("heap_after_gc_end_mb") is not None
                    else "",
                    f"Spark jobs per object load {jobs['jobs_per_object']} ({jobs['job_s_per_object']}"
                    f" s of jobs per load, median job {jobs['median_job_s']} s; over the last "
                    f"{jobs['loads_seen']} loads)"
                    if jobs.get("jobs_per_object")
                    else "",
                ]
                notes.append("; ".join(p for p in parts if p))
            if r["mode"] == "dev_loop" and not r.get("error"):
                notes.append(
                    f"make dev: UI up {r.get('make_dev_to_ui_s')} s after the command (Spark Connect "
                    f"server ready in {r.get('server_ready_s')} s), all {r.get('sample_partitions')} "
                    f"sample objects materialized {r.get('first_minutes_s')} s after the UI "
                    f"({r.get('first_minutes_runs')} runs; mean run phases: "
                    f"{_phases_text(r.get('first_minutes_mean_run_phases_s') or {})}); one launch "
                    f"-> materialized {r.get('launch_to_materialized_s')} s (median phases: "
                    f"{_phases_text(r.get('launch_median_phases_s') or {})})"
                )
            if r["mode"] == "server_memory" and not r.get("error"):
                notes.append(
                    f"server memory over {r.get('server_runs')} runs ({r.get('mean_run_s')} s each, "
                    f"in-process): RSS {r.get('rss_after_first_run_mb')} -> {r.get('rss_end_mb')} MB, "
                    f"heap after GC {r.get('heap_after_gc_after_first_run_mb')} -> "
                    f"{r.get('heap_after_gc_end_mb')} MB"
                )
            if r["mode"] == "scale_sensor_first_tick" and not r.get("error"):
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

    def set_targets(self) -> None:
        """The targets, each on the record it is measured on (`targets`: name, measured, unit,
        bar, met - None where there is no bar or too little to judge)."""
        by = {
            (r["mode"], r["objects"]): r
            for r in self.records
            if not r.get("error") and r["section"] in ("main", "databricks")
        }

        def add(record, name, measured, unit, bar, met, note=""):
            entry = {"name": name, "measured": measured, "unit": unit, "bar": bar, "met": met}
            if note:
                entry["note"] = note
            record.setdefault("targets", []).append(entry)

        for r in self.records:
            r.pop("targets", None)
            if r.get("error"):
                continue
            if r["mode"] == "dev_loop":
                median = r.get("launch_to_materialized_median_s")
                enough = (r.get("launches") or 0) >= MIN_LAUNCHES
                add(
                    r,
                    "launch -> materialized, one object (median)",
                    median,
                    "s",
                    f"<= {LAUNCH_TARGET_S:g} s, median of >= {MIN_LAUNCHES}",
                    (median <= LAUNCH_TARGET_S) if median is not None and enough else None,
                    f"median of {r.get('launches')}"
                    + ("" if enough else f": fewer than {MIN_LAUNCHES}, not judged"),
                )
                first = r.get("first_minutes_s")
                add(
                    r,
                    "all sample objects materialized after the UI is up (make dev)",
                    first,
                    "s",
                    f"<= {FIRST_MINUTES_TARGET_S:g} s",
                    None if first is None else first <= FIRST_MINUTES_TARGET_S,
                    f"{r.get('sample_partitions')} objects",
                )
            if r["mode"] == "server_memory":
                runs = r.get("server_runs")
                add(
                    r,
                    f"server memory after {runs} runs: heap after GC, growth",
                    r.get("heap_after_gc_growth_mb"),
                    "MB",
                    "reported",
                    None,
                    f"{r.get('heap_after_gc_after_first_run_mb')} -> "
                    f"{r.get('heap_after_gc_end_mb')} MB from run 1 to run {runs}"
                    if r.get("heap_measured")
                    else "no jcmd (JDK) on this machine",
                )
                add(
                    r,
                    f"server memory after {runs} runs: RSS",
                    r.get("rss_end_mb"),
                    "MB",
                    "reported",
                    None,
                    f"{r['rss_growth_mb']:+.1f} MB since run 1"
                    if r.get("rss_growth_mb") is not None
                    else "",
                )
            if r.get("target") and r["mode"].startswith("scale_"):  # set by scale_section
                add(r, r["mode"], r.get("wall_s"), "s", r["target"], r.get("target_met"))
        for mode, n, bar in (
            ("per_run", PER_RUN_TARGET_N, PER_RUN_TARGET_RATIO),
            ("packed", PACKED_TARGET_N, PACKED_TARGET_RATIO),
        ):
            found = by.get((mode, n))
            if found is None or found.get("ratio_to_floor") is None:
                continue
            r = found
            note = "; ".join(
                x
                for x in (
                    "extrapolated" if r.get("extrapolated") else "",
                    f"{r['spark']} Spark" if r.get("spark") else "",
                    f"pickup {r['pickup_s']:.1f} s" if r.get("pickup_s") is not None else "",
                )
                if x
            )
            add(
                r,
                f"{mode} at N={n} vs floor"
                + (" (backfill pickup included)" if mode == "packed" else ""),
                r["ratio_to_floor"],
                "x",
                f"<= {bar:g}x floor",
                r["ratio_to_floor"] <= bar,
                note,
            )
            r["target"] = f"<= {bar:g}x floor at N={n}"
            r["target_met"] = r["ratio_to_floor"] <= bar
            if r.get("peak_rss_mb") is not None:
                add(
                    r,
                    f"{mode} at N={n}: peak RSS of the process tree",
                    r["peak_rss_mb"],
                    "MB",
                    "reported",
                    None,
                    f"warm server's share {r['server_rss_at_peak_mb']:.0f} MB"
                    if r.get("server_rss_at_peak_mb")
                    else "no warm server",
                )


def _phases_text(phases: dict) -> str:
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v}" for k, v in phases.items())


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def _linear(xs, ys, x):
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    return my + slope * (x - mx)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C, and a plain `kill` (or SIGINT where a background shell ignored it): stop the
    # measurement, its processes and the warm server, then write what was measured.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
    sections = [
        name
        for name, on in (
            ("main", args.run_main),
            ("dev_loop", args.run_dev_loop),
            ("server_memory", args.run_server_memory),
            ("scale", args.run_scale),
            ("databricks", args.databricks),
        )
        if on
    ]
    print(
        f"{command}\nwork dir {workdir}, logs {logs}\n"
        f"{machine['cpus']} CPUs, load {' '.join(machine['loadavg_at_start'])}; "
        f"sections: {', '.join(sections)}",
        flush=True,
    )
    bench = Bench(args, workdir, logs, machine)
    t_start = time.time()
    try:
        for name, run in (
            ("main", bench.main_section),
            ("dev_loop", bench.dev_loop_section),
            ("server_memory", bench.server_memory_section),
            ("scale", bench.scale_section),
            ("databricks", bench.databricks_section),
        ):
            if name not in sections:
                continue
            try:
                run()
            except Exception as exc:  # one broken section does not lose the others
                print(f"\nsection {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                bench.records.append(
                    {
                        "section": name,
                        "mode": name,
                        "objects": None,
                        "wall_s": None,
                        "cpu_s": None,
                        "error": f"section failed: {type(exc).__name__}: {exc}",
                    }
                )
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
                        if n == tn and section_of(m) in ("main", "databricks")
                    },
                    tn,
                    out_dir / "timeline.png",
                )
                (logs / "timelines.json").write_text(
                    json.dumps({f"{m}-{n}": t for (m, n), t in bench.timelines.items()})
                )
            print()
            print(report.console_text(bench.records))
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
