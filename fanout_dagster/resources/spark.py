"""Spark sessions: an embedded local Spark for development, the cluster's own on Databricks.

The asset only calls `spark.get_session()`; which session that is, is decided
in definitions.py. One session per process: getOrCreate hands every caller
(and every thread of a pack) the same one.
"""

from __future__ import annotations

import os
import shutil

from dagster import ConfigurableResource
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from fanout_dagster.local_spark import register_tables, spark_conf


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


class ClusterSparkResource(SparkResource):
    """The session of the cluster the step runs on (Databricks, or the emulator)."""

    def get_session(self) -> SparkSession:
        return SparkSession.builder.getOrCreate()
