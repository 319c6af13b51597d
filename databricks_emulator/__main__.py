"""``python -m databricks_emulator``: run the emulator in the foreground.

Prints the ``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN`` to export (the only place the token is
ever shown), then serves until Ctrl-C / SIGTERM, which also kills any running task.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .emulator import (
    DatabricksEmulator,
    EmulatorConfig,
    generate_token,
    load_cluster_config,
    load_volume_config,
)
from .task_libraries import RUNTIME_LIBRARIES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m databricks_emulator",
        description=(
            "Local Databricks workspace emulator on 127.0.0.1: jobs runs (classic clusters and "
            "serverless), DBFS, Unity Catalog volumes (Files API), clusters, secrets."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port; default 8765)"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(".databricks_emulator"),
        help="state folder: DBFS in ROOT/dbfs, run logs in ROOT/runs (default ./.databricks_emulator)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("DATABRICKS_EMULATOR_TOKEN"),
        help="bearer token clients must send (default: $DATABRICKS_EMULATOR_TOKEN, else a random one)",
    )
    parser.add_argument(
        "--cluster-start-seconds",
        type=float,
        default=0.0,
        help="simulated cluster start latency: per new_cluster run, once per existing cluster",
    )
    parser.add_argument(
        "--cluster-config",
        type=Path,
        default=None,
        help='JSON file {"clusters": {id: {spark_conf, spark_env_vars, ...}}, "secrets": {scope: {key: value}}, '
        '"volumes": ["catalog.schema.volume", ...]}',
    )
    parser.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="CATALOG.SCHEMA.VOLUME",
        help="declare a Unity Catalog volume (repeatable): Files API and /Volumes/... in tasks",
    )
    parser.add_argument(
        "--catalog",
        action="append",
        default=None,
        metavar="NAME",
        help="a Unity Catalog catalog tasks can use with three-level names (repeatable; "
        "default: main; catalogs of --volume are added)",
    )
    parser.add_argument(
        "--no-serverless",
        action="store_true",
        help="a workspace without serverless compute: serverless task submits are refused",
    )
    parser.add_argument(
        "--no-dbfs-root",
        action="store_true",
        help='a workspace with "DBFS root and mounts" disabled: DBFS API and /dbfs/ are denied',
    )
    parser.add_argument(
        "--runtime-library",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="a library every task has, as its runtime ships it (repeatable; added to "
        f"{' '.join(RUNTIME_LIBRARIES)}; e.g. pydantic and pyyaml to mirror a runtime that has "
        "them): tasks see these, the standard library and what their run names, nothing else",
    )
    parser.add_argument(
        "--max-active-task-runs",
        type=int,
        default=1000,
        help="concurrently active task runs per workspace before runs/submit answers 429 "
        "(default 1000, the documented limit)",
    )
    parser.add_argument(
        "--spark-master", default="local[2]", help="Spark master for every task (default local[2])"
    )
    parser.add_argument(
        "--eager-spark", action="store_true", help="create `spark` before each script runs"
    )
    parser.add_argument(
        "--no-jvm-quick-start",
        action="store_true",
        help="keep the JVM's default JIT/GC (default: C1 JIT + serial GC for faster Spark start)",
    )
    parser.add_argument(
        "--strict-clusters",
        action="store_true",
        help="reject unknown existing_cluster_id like Databricks (default: create it on first use)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log every request (never the token)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    clusters, secrets = (
        load_cluster_config(args.cluster_config) if args.cluster_config else ({}, {})
    )
    volumes = [
        *(load_volume_config(args.cluster_config) if args.cluster_config else []),
        *args.volume,
    ]
    emu = DatabricksEmulator(
        EmulatorConfig(
            root=args.root,
            token=args.token or generate_token(),
            port=args.port,
            cluster_start_seconds=args.cluster_start_seconds,
            spark_master=args.spark_master,
            eager_spark=args.eager_spark,
            auto_create_clusters=not args.strict_clusters,
            jvm_quick_start=not args.no_jvm_quick_start,
            clusters=clusters,
            volumes=volumes,
            catalogs=args.catalog or ["main"],
            serverless=not args.no_serverless,
            dbfs_root=not args.no_dbfs_root,
            max_active_task_runs=args.max_active_task_runs,
            runtime_libraries=[*RUNTIME_LIBRARIES, *args.runtime_library],
        )
    )
    for scope, values in secrets.items():
        for key, value in values.items():
            emu.set_secret(scope, key, value)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emu.start()
    print(f"Databricks emulator on {emu.host} (DBFS: {emu.dbfs_root}, runs: {emu.root / 'runs'})")
    if emu.volumes.names():
        print(f"Volumes ({emu.volumes.root}): {', '.join(emu.volumes.names())}")
    print("Point clients at it with:")
    print(f"  export DATABRICKS_HOST={emu.host}")
    print(f"  export DATABRICKS_TOKEN={emu.token}")
    print("Ctrl-C to stop (running tasks are killed).", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("Stopping the Databricks emulator...", file=sys.stderr, flush=True)
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
