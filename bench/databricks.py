"""`--databricks`: per_run vs packed on the `databricks` target, against the
project's local Databricks workspace emulator.

Same flow as bench.dagster_modes (real daemon, one UI-style backfill over the N
partitions), with FANOUT_TARGET=databricks: every Dagster run submits its step
through the dagster-databricks step launcher over HTTP to the emulator, which
runs it as a local PySpark process writing the bronze Delta tables
`main.bronze.<table>` (Unity Catalog names, as on a workspace). The emulator
runs in this (measured) worker process, so its task processes are part of the
measured CPU and memory.

Reported per mode, from `emu.stats()`: remote runs submitted, API calls per
object (all endpoints; the breakdown is kept), and the simulated cluster-start
time paid. Skipped with one line when the emulator or the databricks target is
not importable.
"""

from __future__ import annotations

import os
from pathlib import Path

MODES = ("databricks_per_run", "databricks_packed")
UC_SCHEMA = "main.bronze"  # the emulator's Unity Catalog: catalog `main` exists by default


def unavailable_reason() -> str | None:
    """None when the emulator and the databricks target can be used, else why not."""
    try:
        from databricks_emulator import run_emulator  # noqa: F401
    except Exception as exc:  # not written yet, or broken mid-edit
        return f"Databricks emulator not available ({type(exc).__name__}: {exc})"
    try:
        from fanout_dagster.databricks.target import databricks_target_resources  # noqa: F401
    except Exception as exc:
        return f"databricks target not available ({type(exc).__name__}: {exc})"
    return None


def run_databricks(spec: dict) -> dict:
    from bench.dagster_modes import run_dagster
    from databricks_emulator import run_emulator

    workdir = Path(spec["workdir"])
    with run_emulator(
        root=workdir / "emulator", cluster_start_seconds=spec["cluster_start_s"]
    ) as emu:
        # The daemon, its code server and the run workers inherit these.
        os.environ.update(
            {
                "FANOUT_TARGET": "databricks",
                "FANOUT_BRONZE_SCHEMA": UC_SCHEMA,
                "DATABRICKS_HOST": emu.host,
                "DATABRICKS_TOKEN": emu.token,
                # The emulator's clusters hold only their runtime's libraries, as
                # Databricks' do: the step launcher attaches Dagster's, and the
                # remote side needs pydantic-settings too (docs/databricks.md).
                "FANOUT_INSTALL_DEFAULT_LIBRARIES": "1",
                "FANOUT_CLUSTER_LIBRARIES": "pydantic-settings",
            }
        )
        if spec.get("databricks_poll_s"):
            os.environ["FANOUT_DATABRICKS_POLL_S"] = str(spec["databricks_poll_s"])
        result = run_dagster(spec)
        stats = emu.stats()
    api_calls = stats.get("api_calls", {})
    total_calls = sum(api_calls.values())
    n = spec["objects"]
    result["extras"].update(
        {
            "remote_runs_submitted": stats.get("runs_submitted"),
            "api_calls_total": total_calls,
            "api_calls_per_object": round(total_calls / n, 2),
            "api_calls_by_endpoint": api_calls,
            "cluster_starts": stats.get("cluster_starts"),
            "cluster_start_s_paid": stats.get("cluster_start_seconds_total"),
            "cluster_start_s_setting": spec["cluster_start_s"],
            "max_concurrent_remote_runs": stats.get("max_concurrent_running"),
            "remote_results": stats.get("runs_by_result_state"),
            "poll_interval_s": os.environ.get("FANOUT_DATABRICKS_POLL_S", "5 (product default)"),
            "bronze_schema": UC_SCHEMA,
        }
    )
    return result
