"""One measurement, in a fresh process: `python -m bench.worker SPEC.json`.

The orchestrator (bench.cli) starts this process under `proc.run_measured`, so
its wall and the CPU of its whole process tree are accounted for; this process
writes what only it can see (per-object timeline, mode-specific extras) to the
spec's `out` file.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    # Stopped at the timeout (SIGTERM to the process group): finally blocks still run, so
    # what the mode started (a daemon, `make dev`, a Spark server) is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if argv and argv[0] == "--single":
        from bench.spark_modes import run_single

        run_single(*argv[1:4])
        return 0
    spec = json.loads(Path(argv[0]).read_text())
    mode = spec["mode"]
    try:
        if mode in ("naive", "warm_naive"):
            from bench.naive import run_naive as run
        elif mode in ("floor", "warm_floor"):
            from bench.spark_modes import run_floor as run
        elif mode == "per_process":
            from bench.spark_modes import run_per_process as run
        elif mode in ("per_run", "packed"):
            from bench.dagster_modes import run_dagster as run
        elif mode.startswith("databricks_"):
            from bench.databricks import run_databricks as run
        elif mode == "dev_loop":
            from bench.dev_loop import run_dev_loop as run
        elif mode == "server_memory":
            from bench.server_memory import run_server_memory as run
        elif mode == "scale_sensor_first_tick":
            from bench.scale import run_sensor_tick as run
        elif mode == "scale_sensor_steady_tick":
            from bench.scale import run_sensor_steady as run
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        result = run(spec)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        Path(spec["out"]).write_text(json.dumps(result, default=str))
        print(result["traceback"], file=sys.stderr)
        return 1
    Path(spec["out"]).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
