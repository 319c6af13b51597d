"""Spark sessions: a session on the local Spark Connect server, an embedded local
Spark, or the cluster's own on Databricks.

The asset only calls `spark.get_session()`; which session that is, is decided in
definitions.py. Every thread of a pack shares its run's session.
"""

from __future__ import annotations

import os
import shutil

from dagster import ConfigurableResource, InitResourceContext
from delta import configure_spark_with_delta_pip
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from fanout_dagster.core.connect_sessions import run_session_id
from fanout_dagster.local_spark.catalog import register_tables, spark_conf
from fanout_dagster.local_spark.connect_server import (
    SparkServerError,
    authenticated_session,
    port_in_use,
)


class JavaNotFound(RuntimeError):
    pass


class SparkResource(ConfigurableResource):
    """What the bronze asset needs: a SparkSession."""

    def get_session(self) -> SparkSession:
        raise NotImplementedError


class LocalSparkResource(SparkResource):
    """An embedded Spark in the current process, with Delta Lake: no cluster, no credentials."""

    master: str = "local[2]"
    app_name: str = "fanout_dagster"
    warehouse_dir: str = "warehouse"
    log_level: str = "ERROR"

    def get_session(self) -> SparkSession:
        if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
            raise JavaNotFound(
                "Java was not found: local Spark needs a Java 17 runtime on PATH or JAVA_HOME "
                "(e.g. `apt-get install openjdk-17-jre-headless`)."
            )
        existing = SparkSession.getActiveSession()
        builder = SparkSession.builder.master(self.master).appName(self.app_name)
        for key, value in spark_conf(self.warehouse_dir).items():
            builder = builder.config(key, value)
        builder = builder.config("spark.ui.enabled", "false").config(
            "spark.log.level", self.log_level
        )
        # The Delta jars come the way delta-spark's own helper gets them: Spark
        # resolves its Maven coordinates (cached in ~/.ivy2 after the first time).
        session = configure_spark_with_delta_pip(builder).getOrCreate()
        if existing is None:
            register_tables(session)
        return session


class SparkConnectResource(SparkResource):
    """A session of its own on the local Spark Connect server, for one run.

    The server is warm: no JVM starts with the run. Each run's session is
    isolated from other runs' (temp views, confs) and released when the run
    ends, so the server does not grow with the runs it has served. Its id is
    derived from the run's (connect_sessions.py): when the run's worker dies,
    the health check finds the session and stops what it left running.

    The server's token is looked up when the session opens (FANOUT_SPARK_CONNECT_TOKEN,
    else the file the server keeps for its user), not held in a field: Dagster shows
    resource fields in its UI.
    """

    host: str = "127.0.0.1"
    port: int = 15002
    _session: SparkSession | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    @property
    def url(self) -> str:
        """Where the server listens (no token: this one may be shown)."""
        return f"sc://{self.host}:{self.port}"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._run_id = context.run_id

    def get_session(self) -> SparkSession:
        if self._session is None:
            if not port_in_use(self.host, self.port):
                raise SparkServerError(
                    f"the local Spark Connect server at {self.url} is not running: start it with "
                    "`make dev` (or `make spark-server`), or set FANOUT_SPARK=embedded"
                )
            # A run's session id is derived from the run's; outside a run (a shell,
            # a test) the server names a new one.
            session_id = None if self._run_id is None else run_session_id(self._run_id)
            self._session = authenticated_session(self.host, self.port, session_id)
        return self._session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()  # releases the run's session on the server
            self._session = None


class ClusterSparkResource(SparkResource):
    """The session of the cluster the step runs on (Databricks, or the emulator)."""

    def get_session(self) -> SparkSession:
        return SparkSession.builder.getOrCreate()
