"""Does the local Spark Connect server grow with the runs it has served?

Starts a server of its own, then materializes one sample object N times as N
real Dagster runs (in-process `materialize`, each opening and releasing its own
Connect session, as run workers do), and samples the server JVM's resident
memory and its heap after a full GC (jcmd) along the way.

    python -m bench.server_memory --runs 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fanout_dagster.settings import PROJECT_ROOT as REPO_ROOT


def jvm_pid(leader: int) -> int:
    """The java process in the server's process group (spark-submit execs it)."""
    out = subprocess.run(["pgrep", "-g", str(leader), "java"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def heap_after_gc_mb(pid: int) -> float:
    subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60)
    out = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True).stdout
    used = re.search(r"used (\d+)K", out)
    return int(used.group(1)) / 1024 if used else float("nan")


def measure(runs: int, sample_every: int, workdir: Path) -> dict:
    from dagster import AssetKey, ResourceDefinition, instance_for_test, materialize

    from fanout_dagster.assets.bronze import build_bronze_asset
    from fanout_dagster.partitions import OBJECTS_PARTITIONS_NAME
    from fanout_dagster.resources.bronze_tables import BronzeTables
    from fanout_dagster.resources.object_configs import ObjectConfigs
    from fanout_dagster.resources.spark import SparkConnectResource
    from fanout_dagster.spark_connect_server import ServerConfig, running_server
    from fanout_dagster_tests.helpers import free_port

    config = ServerConfig(
        port=free_port(),
        ui_port=free_port(),
        warehouse=str(workdir / "warehouse"),
        state_dir=workdir / "server",
    )
    resources = {
        "spark": SparkConnectResource(port=config.port),
        "bronze_tables": BronzeTables(),
        "object_configs": ObjectConfigs(
            configs_dir=str(REPO_ROOT / "configs"), data_root=str(REPO_ROOT / "data")
        ),
        "pyspark_step_launcher": ResourceDefinition.none_resource(),
    }
    key = "erp-stores"
    samples = []
    with running_server(config) as server, instance_for_test() as instance:
        pid = jvm_pid(server.pid)
        instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, [key])
        bronze = build_bronze_asset()
        started = time.time()
        for run in range(1, runs + 1):
            result = materialize(
                [bronze], resources=resources, instance=instance, partition_key=key
            )
            assert result.success
            if run == 1 or run % sample_every == 0 or run == runs:
                sample = {
                    "runs": run,
                    "seconds": round(time.time() - started, 1),
                    "rss_mb": round(rss_mb(pid), 1),
                    "heap_after_gc_mb": round(heap_after_gc_mb(pid), 1),
                }
                samples.append(sample)
                print(json.dumps(sample), flush=True)
        assert instance.get_materialized_partitions(AssetKey("bronze")) == {key}
    first, last = samples[0], samples[-1]
    return {
        "runs": runs,
        "samples": samples,
        "heap_after_gc_growth_mb": round(last["heap_after_gc_mb"] - first["heap_after_gc_mb"], 1),
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_memory")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "bench" / "results" / "server_memory.json")
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-server-memory-"))
    try:
        result = measure(args.runs, args.sample_every, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="fanout-server-memory-home-"))
    raise SystemExit(main())
