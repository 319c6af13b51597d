"""The orchestrator: `python -m bench [options]` (see --help).

Reads the arguments, says which sections run, runs them (bench/sections.py) with
one measurement runner (bench/runner.py), then derives the ratios, targets and
findings (bench/targets.py) and writes the outputs (bench/report.py): also after
Ctrl-C or a failed section, with what was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import proc, report, sections, targets
from bench.machine import machine_info
from bench.runner import REPO_ROOT, Runner, section_of
from bench.targets import MIN_LAUNCHES, TARGET_N

DEFAULT_OBJECTS = (10, 60, 240)
MODES = ("naive", "warm_naive", "floor", "warm_floor", "per_process", "per_run", "packed")
DEFAULT_LAUNCHES = 7
DEFAULT_SERVER_RUNS = 500


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
        help="T threads per SparkSession (naive, floor and their warm twins, packed; default 4)",
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
        default=TARGET_N,
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
    chosen = [
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
        f"sections: {', '.join(chosen)}",
        flush=True,
    )
    runner = Runner(args, workdir, logs, machine)
    t_start = time.time()
    try:
        for name, run in (
            ("main", sections.main_section),
            ("dev_loop", sections.dev_loop_section),
            ("server_memory", sections.server_memory_section),
            ("scale", sections.scale_section),
            ("databricks", sections.databricks_section),
        ):
            if name not in chosen:
                continue
            try:
                run(runner)
            except Exception as exc:  # one broken section does not lose the others
                print(f"\nsection {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                runner.records.append(
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
        notes = targets.finish(runner.records, machine)
        if runner.records:
            paths = report.write_json(runner.records, out_dir, stamp)
            summary = report.write_summary(
                runner.records, out_dir, command=command, machine=machine, notes=notes
            )
            timeline_path = None
            measured_ns = sorted({n for (_, n) in runner.timelines})
            if measured_ns:
                tn = min(measured_ns, key=lambda n: (abs(n - args.timeline_n), -n))
                timeline_path = report.write_timeline(
                    {
                        m: t
                        for (m, n), t in runner.timelines.items()
                        if n == tn and section_of(m) in ("main", "databricks")
                    },
                    tn,
                    out_dir / "timeline.png",
                )
                (logs / "timelines.json").write_text(
                    json.dumps({f"{m}-{n}": t for (m, n), t in runner.timelines.items()})
                )
            print()
            print(report.console_text(runner.records))
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
    return 1 if any(r.get("error") for r in runner.records) else 0
