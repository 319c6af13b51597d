"""Serverless compute: one Spark Connect server for the workspace, started on first use.

On Databricks serverless, a task's ``spark`` is a Spark Connect session (``spark.sparkContext``
raises), with no cluster to wait for. Here the emulator runs one Spark Connect server
(``SparkConnectServer`` from the pyspark wheel, through ``spark-submit``) configured like every
emulated cluster (Delta, the Unity Catalog catalogs, dbfs:/ and /Volumes) and serverless task
processes connect to it with ``SPARK_REMOTE=sc://127.0.0.1:<port>``. It is started lazily by the
first serverless task, on loopback only, in the tasks' mount namespace, and stopped with the
emulator.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from .process import TaskProcess
from .task_python import HIDDEN_PATHS_ENV, SITE_ENV
from .task_setup import LOG4J2_PROPERTIES, PACKAGE_ROOT, TaskHost, callers_only, cluster_spark_conf

START_TIMEOUT_SECONDS = 180.0


class ServerlessStartError(OSError):
    """The Spark Connect server of serverless compute did not come up."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ConnectServer:
    def __init__(self, host: TaskHost, folder: Path):
        self._host = host
        self._dir = folder
        self._lock = threading.Lock()
        self._process: TaskProcess | None = None
        self._url: str | None = None
        self._stopped = False

    def url(self) -> str:
        """``sc://127.0.0.1:<port>``, starting the server first if needed (blocks until up)."""
        with self._lock:
            if self._stopped:
                raise ServerlessStartError("The emulator is shutting down.")
            if self._url is not None and self._process is not None and self._alive():
                return self._url
            self._start()
            assert self._url is not None
            return self._url

    def _alive(self) -> bool:
        assert self._process is not None
        return self._process.poll() is None

    def _start(self) -> None:
        import pyspark

        self._dir.mkdir(parents=True, exist_ok=True)
        conf_dir = self._dir / "spark-conf"
        conf_dir.mkdir(exist_ok=True)
        port = _free_port()
        settings = self._host.settings
        conf = {
            "spark.app.name": "emulator-serverless",
            "spark.ui.enabled": "false",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            "spark.sql.warehouse.dir": f"{self._host.dbfs.root.as_uri()}/user/hive/warehouse",
            **cluster_spark_conf(self._host),
            **settings.extra_spark_conf,
            "spark.master": settings.spark_master,
        }
        (conf_dir / "spark-defaults.conf").write_text(
            "".join(f"{k} {v}\n" for k, v in conf.items())
        )
        (conf_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        spark_home = Path(pyspark.__file__).resolve().parent
        # The server's Python workers (UDFs) get the runtime's libraries, as tasks do.
        runtime_site, _notes = self._host.site_folders.for_task([])
        env = {k: v for k, v in os.environ.items() if not callers_only(k)}
        env.update(
            {
                "SPARK_HOME": str(spark_home),
                "SPARK_CONF_DIR": str(conf_dir),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOCAL_DIRS": str(self._dir / "spark-local"),
                "PYSPARK_PYTHON": self._host.python,
                HIDDEN_PATHS_ENV: str(PACKAGE_ROOT),
                SITE_ENV: str(runtime_site),
                "PYTHONPATH": "",
            }
        )
        argv = [
            str(spark_home / "bin" / "spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--name",
            "emulator-serverless",
            "spark-internal",
        ]
        process = TaskProcess(
            self._host.mounts.wrap(argv),
            env=env,
            cwd=self._dir,
            stdout=self._dir / "stdout.log",
            stderr=self._dir / "stderr.log",
        )
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                process.wait()
                raise ServerlessStartError(
                    "The serverless Spark Connect server exited at start; see "
                    f"{self._dir / 'stderr.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    self._url = f"sc://127.0.0.1:{port}"
                    return
            except OSError:
                time.sleep(0.25)
        process.terminate(2.0)
        process.wait()
        raise ServerlessStartError(
            f"The serverless Spark Connect server did not listen within {START_TIMEOUT_SECONDS}s"
        )

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            process, self._process, self._url = self._process, None, None
        if process is not None:
            process.terminate(5.0)
            process.wait()
