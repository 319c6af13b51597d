"""The local Spark Connect server: the warm "all-purpose cluster" that local runs attach to.

A run that starts its own Spark spends seconds starting a JVM and warming it up
for a second of work. Databricks' all-purpose clusters and serverless compute
are warm, and increasingly speak Spark Connect only; so does this server. It is
started once (by `make dev`, or `python -m fanout_dagster.local_spark.connect_server`),
has Delta Lake and the local catalog configured exactly like the embedded
session (local_spark/catalog.py), and every run opens its own Connect session on it.

    python -m fanout_dagster.local_spark.connect_server            # foreground; Ctrl-C stops it
    python -m fanout_dagster.local_spark.connect_server -- CMD ...  # run CMD while the server is up

The server's Spark UI is on http://127.0.0.1:4040 (FANOUT_SPARK_UI_PORT), its log
in `.spark/connect-server.log`. Its scheduler is FAIR with a FAIR default pool, so
the jobs of concurrent runs share the cores instead of queueing behind each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyspark

from fanout_dagster.local_spark.catalog import spark_conf
from fanout_dagster.local_spark.retention import BOUNDED_RETENTION
from fanout_dagster.settings import PROJECT_ROOT, Settings, project_path

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
STATE_DIR = PROJECT_ROOT / ".spark"

FAIR_SCHEDULER_XML = """<?xml version="1.0"?>
<!-- Jobs of concurrent runs share the cores (FAIR inside the default pool too). -->
<allocations>
  <pool name="default">
    <schedulingMode>FAIR</schedulingMode>
    <weight>1</weight>
    <minShare>0</minShare>
  </pool>
</allocations>
"""


class SparkServerError(RuntimeError):
    """The local Spark Connect server cannot be started or reached (one clear line)."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 15002
    ui_port: int = 4040
    master: str = "local[2]"
    warehouse: str = "warehouse"
    driver_memory: str = "2g"
    state_dir: Path = STATE_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerConfig:
        return cls(
            port=settings.spark_connect_port,
            ui_port=settings.spark_ui_port,
            master=settings.spark_master,
            warehouse=project_path(settings.spark_warehouse),
            driver_memory=settings.spark_driver_memory,
        )

    @property
    def url(self) -> str:
        return f"sc://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "connect-server.log"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def server_command(config: ServerConfig) -> list[str]:
    spark_home = Path(pyspark.__file__).parent
    conf = {
        **spark_conf(config.warehouse),
        "spark.connect.grpc.binding.address": config.host,
        "spark.connect.grpc.binding.port": str(config.port),
        "spark.ui.enabled": "true",
        "spark.ui.port": str(config.ui_port),
        "spark.scheduler.allocation.file": str(config.state_dir / "fairscheduler.xml"),
        # Sessions of runs whose process died without releasing them.
        "spark.connect.session.manager.defaultSessionTimeout": "15min",
        "spark.log.level": "WARN",
        **BOUNDED_RETENTION,  # a server that runs for days stays bounded
    }
    packages = conf.pop("spark.jars.packages")
    command = [
        str(spark_home / "bin" / "spark-submit"),
        "--class",
        SERVER_CLASS,
        "--name",
        "fanout_dagster-spark-connect",
        "--master",
        config.master,
        "--driver-memory",
        config.driver_memory,
        # Delta's jars, resolved by Spark from Maven Central (cached in ~/.ivy2 afterwards).
        "--packages",
        packages,
    ]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, "spark-internal"]


@contextlib.contextmanager
def running_server(
    config: ServerConfig, *, timeout: float = 180
) -> Iterator[subprocess.Popen[bytes]]:
    """Start the server, wait until it answers, yield its process, stop it on exit."""
    if port_in_use(config.host, config.port):
        raise SparkServerError(
            f"port {config.port} on {config.host} is already taken: another Spark Connect server "
            "(or another program) is listening there. Stop it, or set FANOUT_SPARK_CONNECT_PORT."
        )
    if port_in_use(config.host, config.ui_port):
        raise SparkServerError(
            f"the Spark UI port {config.ui_port} is already taken: set FANOUT_SPARK_UI_PORT."
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "fairscheduler.xml").write_text(FAIR_SCHEDULER_XML)
    env = {
        **os.environ,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": config.host,
        # Spark scratch space beside the log, not in /tmp.
        "SPARK_LOCAL_DIRS": str(config.state_dir / "local"),
    }
    with open(config.log_path, "ab") as log:
        process = subprocess.Popen(
            server_command(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    try:
        wait_until_ready(config, process, timeout)
        register_warehouse_tables(config)
        yield process
    finally:
        stop(process)


def wait_until_ready(
    config: ServerConfig, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SparkServerError(
                f"the Spark Connect server exited with code {process.returncode} while starting; "
                f"see {config.log_path}"
            )
        if port_in_use(config.host, config.port):
            return
        time.sleep(0.25)
    raise SparkServerError(
        f"the Spark Connect server did not answer on port {config.port} within {timeout:.0f} s; "
        f"see {config.log_path}"
    )


def register_warehouse_tables(config: ServerConfig) -> list[str]:
    """Make the warehouse's existing tables known to the server's catalog."""
    from pyspark.sql import SparkSession

    from fanout_dagster.local_spark.catalog import register_tables

    session = SparkSession.builder.remote(config.url).create()
    try:
        return register_tables(session)
    finally:
        session.stop()


def stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout_dagster.local_spark.connect_server",
        description="Run the local Spark Connect server (Delta, the local catalog); with a "
        "command after --, run it while the server is up and stop both when it ends or on Ctrl-C.",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command else []
    config = ServerConfig.from_settings(Settings())
    # A plain `kill` stops the server too (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"Starting the Spark Connect server on {config.url} (log: {config.log_path}) ...",
        flush=True,
    )
    started = time.monotonic()
    try:
        with running_server(config):
            print(
                f"Spark Connect server ready in {time.monotonic() - started:.1f} s: {config.url}; "
                f"Spark UI http://{config.host}:{config.ui_port}",
                flush=True,
            )
            if not command:
                while True:
                    time.sleep(3600)
            child = subprocess.Popen(command)
            try:
                return child.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the child too (same terminal): let it finish its shutdown.
                return child.wait()
    except SparkServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
