"""Spark sessions: a session on the local Spark Connect server, an embedded local
Spark, or the cluster's own on Databricks.

The asset only calls `spark.get_session()`; which session that is, is decided in
definitions.py. Every thread of a pack shares its run's session.
"""

from __future__ import annotations

import os
import shutil

import grpc
from dagster import ConfigurableResource, InitResourceContext
from delta import configure_spark_with_delta_pip
from pydantic import PrivateAttr
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import DefaultPolicy

from fanout_dagster.local_spark import register_tables, spark_conf
from fanout_dagster.spark_connect_server import (
    TOKEN_VARIABLE,
    SparkServerError,
    client_token,
    connect_url,
    port_in_use,
    token_file,
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
    ends, so the server does not grow with the runs it has served.

    The server's token is looked up when the session opens (FANOUT_SPARK_CONNECT_TOKEN,
    else the file the server keeps for its user), not held in a field: Dagster shows
    resource fields in its UI.
    """

    host: str = "127.0.0.1"
    port: int = 15002
    _session: SparkSession | None = PrivateAttr(default=None)

    @property
    def url(self) -> str:
        """Where the server listens (no token: this one may be shown)."""
        return f"sc://{self.host}:{self.port}"

    def get_session(self) -> SparkSession:
        if self._session is None:
            if not port_in_use(self.host, self.port):
                raise SparkServerError(
                    f"the local Spark Connect server at {self.url} is not running: start it with "
                    "`make dev` (or `make spark-server`), or set FANOUT_SPARK=embedded"
                )
            self._session = self._authenticated_session()
        return self._session

    def _authenticated_session(self) -> SparkSession:
        token = client_token(self.port)
        if token is None:
            raise SparkServerError(
                f"no token for the local Spark Connect server at {self.url}: set "
                f"{TOKEN_VARIABLE} to its token, or run as the user who started it (the server "
                f"keeps it for that user in {token_file(self.port)})"
            )
        session = SparkSession.builder.remote(connect_url(self.host, self.port, token)).create()
        # pyspark's default retries ride out ten minutes of an unreachable
        # server, per call; a local server that is gone is gone: give up
        # after ~15 s, so the run fails in seconds and says why.
        session.client.set_retry_policies(
            [
                DefaultPolicy(
                    max_retries=5, initial_backoff=200, backoff_multiplier=3, max_backoff=5000
                )
            ]
        )
        try:
            session.version  # noqa: B018 - the first call: is the token the server's?
        except SparkConnectGrpcException as exc:
            session.stop()
            if exc.getGrpcStatusCode() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            raise SparkServerError(
                f"the local Spark Connect server at {self.url} refused this client's token "
                f"({TOKEN_VARIABLE}, or {token_file(self.port)}): it is another server's, or "
                "from an earlier start; use the token of the server running now"
            ) from None
        return session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()  # releases the run's session on the server
            self._session = None


class ClusterSparkResource(SparkResource):
    """The session of the cluster the step runs on (Databricks, or the emulator)."""

    def get_session(self) -> SparkSession:
        return SparkSession.builder.getOrCreate()
