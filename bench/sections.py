"""The sections, in the order they run: main (modes x N, on the warm server where a
mode uses it), dev_loop (what `make dev` gives), server_memory (the server over
many runs), scale (10k configs; bench/scale.py), databricks (the emulator; only
with --databricks). Each adds its records to the runner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import statistics
import sys
import time

from bench import proc
from bench.data import write_scale_configs
from bench.runner import CONTENDED_CORES, REPO_ROOT, Runner, rounded
from bench.targets import (
    CURSOR_TARGET_BYTES,
    DEFS_LOAD_TARGET_S,
    SENSOR_TICK_TARGET_S,
    STEADY_TICK_TARGET_S,
)

STEADY_PACK_SIZE = 100  # objects per run of the steady-state measurement's first tick


def main_section(runner: Runner) -> None:
    args = runner.args
    with contextlib.ExitStack() as stack:
        if any(runner.uses_server(m) for m in args.modes_list):
            runner.start_server(stack)
        main_modes(runner)
        if runner.server is not None:
            runner.server_after_main()
        runner.server = None


def main_modes(runner: Runner) -> None:
    args = runner.args
    caps = {"per_process": args.max_n_per_process, "per_run": args.max_n_per_run}
    for n in args.objects_list:
        configs, data = runner.data_for(n)
        for mode in args.modes_list:
            cap = caps.get(mode, 0)
            if cap and n > cap:
                continue  # extrapolated in finish()
            runner.measure(runner.spec(mode, n, configs, data))
    # A capped mode with no measured N at or below its cap: measure at the cap on a subset.
    for mode, cap in caps.items():
        if mode not in args.modes_list or not cap:
            continue
        over = [n for n in args.objects_list if n > cap]
        if over and not any(r["mode"] == mode and r["objects"] <= cap for r in runner.records):
            configs, data = runner.data_for(max(over))
            runner.measure(runner.spec(mode, cap, configs, data, objects_limit=cap), record_n=cap)
        for n in over:
            extrapolate(runner, mode, n)


def extrapolate(runner: Runner, mode: str, n: int) -> None:
    points = sorted(
        (r["objects"], r["wall_s"], r["cpu_s"])
        for r in runner.records
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
    runner.records.append(
        {
            "section": "main",
            "mode": mode,
            "objects": n,
            "wall_s": rounded(wall),
            "cpu_s": rounded(cpu),
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


def dev_loop_section(runner: Runner) -> None:
    from fanout_dagster.core.objects import load_objects

    configs, data = REPO_ROOT / "configs", REPO_ROOT / "data"
    n = len(load_objects(str(configs)).objects)
    spec = runner.spec(
        "dev_loop",
        n,
        configs,
        data,
        launches=runner.args.launches,
        object=runner.args.dev_object,
        timeout_s=min(runner.args.timeout, 1800),
    )
    runner.measure(spec)


def server_memory_section(runner: Runner) -> None:
    runs = runner.args.server_runs
    spec = runner.spec(
        "server_memory",
        runs,
        REPO_ROOT / "configs",
        REPO_ROOT / "data",
        server_runs=runs,
        sample_every=runner.args.server_sample_every or max(1, runs // 10),
    )
    # Memory is the figure, not time: a contended machine does not call for a second pass.
    runner.measure(spec, retries=0)


def scale_section(runner: Runner) -> None:
    n = runner.args.scale_n
    root = runner.workdir / f"scale-{n}"
    t = time.time()
    configs, data = write_scale_configs(root, n, runner.args.scale_files)
    print(
        f"  generated {n} configs in {runner.args.scale_files} files in {time.time() - t:.1f} s",
        flush=True,
    )
    # (1) definitions load, median of 3 fresh processes.
    spec = runner.spec("scale_definitions_load", n, configs, data)
    env = runner.env_for(spec)
    walls, cpus = [], []
    if runner.args.quiet_wait > 0:
        proc.wait_for_quiet(runner.args.quiet_wait, CONTENDED_CORES)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"> scale_definitions_load N={n} ... ", end="", flush=True)
    background = []
    for _i in range(3):
        m = proc.run_measured(
            # The code location's definitions are built when called (@definitions).
            [sys.executable, "-c", "from fanout_dagster.definitions import defs; defs()"],
            env=env,
            log_path=runner.logs / "scale_definitions_load.log",
            timeout=600,
            cwd=str(REPO_ROOT),
        )
        if m.returncode != 0:
            raise RuntimeError(
                f"importing the definitions failed; see {runner.logs / 'scale_definitions_load.log'}"
            )
        walls.append(m.wall_s)
        cpus.append(m.cpu_s)
        background.append(m.background_cpu_s / max(1e-6, m.reaped - m.started))
    wall = statistics.median(walls)
    record = {
        "mode": "scale_definitions_load",
        "objects": n,
        "wall_s": rounded(wall, 3),
        "cpu_s": rounded(statistics.median(cpus), 3),
        "ratio_to_floor": None,
        "per_object_overhead_s": None,
        "runs": None,
        "started_at": started_at,
        "extrapolated": False,
        "samples_s": [round(w, 3) for w in walls],
        "background_cores": round(max(background), 3),
        "contended": max(background) > CONTENDED_CORES,
        "config_files": runner.args.scale_files,
        "target": f"< {DEFS_LOAD_TARGET_S:.0f} s",
        "target_met": wall < DEFS_LOAD_TARGET_S,
    }
    runner.records.append(record)
    print(f"median {wall:.2f} s (samples {', '.join(f'{w:.2f}' for w in walls)})", flush=True)
    # (2) the sensor's first tick through the real daemon.
    spec = runner.spec("scale_sensor_first_tick", n, configs, data)
    spec["timeout_s"] = min(runner.args.timeout, 1200)
    spec["tick_window_s"] = runner.args.tick_window
    record = runner.measure(spec)
    if record.get("wall_s") is not None:
        record["target"] = f"< {SENSOR_TICK_TARGET_S:.0f} s to add all partitions"
        record["target_met"] = record["wall_s"] < SENSOR_TICK_TARGET_S
    # (3) steady state: ticks with nothing changed, through the real daemon.
    spec = runner.spec(
        "scale_sensor_steady_tick",
        n,
        configs,
        data,
        pack_size=STEADY_PACK_SIZE,
        steady_ticks=runner.args.steady_ticks,
    )
    spec["timeout_s"] = min(runner.args.timeout, 1200)
    record = runner.measure(spec)
    if record.get("wall_s") is not None:
        record["target"] = (
            f"tick <= {STEADY_TICK_TARGET_S:.0f} s, cursor < {CURSOR_TARGET_BYTES // 1000} KB"
        )
        record["target_met"] = (
            record["wall_s"] <= STEADY_TICK_TARGET_S
            and record.get("cursor_bytes", CURSOR_TARGET_BYTES) < CURSOR_TARGET_BYTES
        )


def databricks_section(runner: Runner) -> None:
    from bench.databricks import MODES as DB_MODES
    from bench.databricks import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"--databricks skipped: {reason}", flush=True)
        return
    for n in runner.args.databricks_objects_list:
        configs, data = runner.data_for(n)
        for mode in DB_MODES:
            runner.measure(runner.spec(mode, n, configs, data))


def _linear(xs, ys, x):
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    return my + slope * (x - mx)
