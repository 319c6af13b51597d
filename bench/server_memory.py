"""The server-memory section: does the local Spark Connect server grow with the
runs it has served?

A server of its own (the product's `running_server`, free ports, a warehouse in
the work dir), then `runs` real Dagster runs, one after the other, in this
process: `materialize` of the product's bronze asset with the product's local
resources (`fanout_dagster.definitions.local_resources`, FANOUT_SPARK=connect),
one partition per run, rotating over the sample objects. Each run opens its own
Connect session and releases it at its end, as run workers do. Every
`sample_every` runs (and after the first and the last), the server JVM's
resident memory (RSS) and its Java heap right after a full GC (jcmd `GC.run`,
then `GC.heap_info`; needs the JDK's jcmd) are sampled.

Reported: the samples, the growth of both from the first sample to the last,
the mean seconds per run (an in-process run on a warm server: no run worker
process start). No target: the figure is there to be watched.

A worker mode (`python -m bench.worker SPEC`, spec mode `server_memory`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.warm import free_port, heap_after_gc_mb, jvm_pid

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_server_memory(spec: dict) -> dict:
    from dagster import AssetKey, instance_for_test, materialize

    from fanout_dagster.core.objects import load_objects
    from fanout_dagster.definitions import local_resources
    from fanout_dagster.local_spark.connect_server import ServerConfig, running_server
    from fanout_dagster.orchestration.bronze import build_bronze_asset
    from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
    from fanout_dagster.settings import Settings

    workdir = Path(spec["workdir"])
    runs, sample_every = spec["server_runs"], max(1, spec["sample_every"])
    config = ServerConfig(
        port=free_port(),
        ui_port=free_port(),
        master=spec["spark_master"],
        warehouse=str(workdir / "warehouse"),
        state_dir=workdir / "server",
    )
    settings = Settings(
        spark="connect",
        spark_connect_port=config.port,
        spark_warehouse=config.warehouse,
        configs_dir=str(REPO_ROOT / "configs"),
        data_root=str(REPO_ROOT / "data"),
        bronze_schema=spec["bronze_schema"],
    )
    keys = sorted(o.key for o in load_objects(settings.configs_path).objects)
    bronze = build_bronze_asset()
    samples: list[dict] = []
    durations: list[float] = []
    t0 = spec["t_launch"]
    with running_server(config) as server, instance_for_test() as instance:
        server_ready = time.time()
        pid = jvm_pid(server.pid)
        if pid is None:
            raise RuntimeError(f"no java process in the server's process group {server.pid}")
        instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)

        def sample(run: int) -> None:
            row = {
                "runs": run,
                "seconds": round(time.time() - server_ready, 1),
                "rss_mb": round(_rss_mb(pid), 1),
                "heap_after_gc_mb": _round(heap_after_gc_mb(pid)),
            }
            samples.append(row)
            print(row, flush=True)

        sample(0)  # the server as started (after it registered the warehouse's tables)
        for run in range(1, runs + 1):
            key = keys[(run - 1) % len(keys)]
            started = time.time()
            result = materialize(
                [bronze],
                resources=local_resources(settings),
                instance=instance,
                partition_key=key,
                raise_on_error=False,
            )
            durations.append(time.time() - started)
            if not result.success:
                raise RuntimeError(f"run {run} ({key}) failed; see the worker log")
            if run == 1 or run % sample_every == 0 or run == runs:
                sample(run)
        materialized = instance.get_materialized_partitions(AssetKey("bronze"))
        done = time.time()
    first = next(s for s in samples if s["runs"] >= 1)  # after one run: the warmed-up baseline
    last = samples[-1]
    heaps = [s["heap_after_gc_mb"] for s in samples if s["heap_after_gc_mb"] is not None]
    return {
        "t0": t0,
        "wall_s": done - server_ready,
        "runs": [],
        "timeline": None,
        "extras": {
            "server_runs": runs,
            "server_start_s": round(server_ready - t0, 2),
            "objects_rotated": len(keys),
            "objects_materialized": len(materialized),
            "mean_run_s": round(statistics.fmean(durations), 3) if durations else None,
            "median_run_s": round(statistics.median(durations), 3) if durations else None,
            "samples": samples,
            "rss_start_mb": samples[0]["rss_mb"],
            "rss_after_first_run_mb": first["rss_mb"],
            "rss_end_mb": last["rss_mb"],
            "rss_max_mb": max(s["rss_mb"] for s in samples),
            "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
            "heap_after_gc_start_mb": samples[0]["heap_after_gc_mb"],
            "heap_after_gc_after_first_run_mb": first["heap_after_gc_mb"],
            "heap_after_gc_end_mb": last["heap_after_gc_mb"],
            "heap_after_gc_growth_mb": (
                round(last["heap_after_gc_mb"] - first["heap_after_gc_mb"], 1)
                if last["heap_after_gc_mb"] is not None and first["heap_after_gc_mb"] is not None
                else None
            ),
            "heap_measured": bool(heaps),
        },
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
