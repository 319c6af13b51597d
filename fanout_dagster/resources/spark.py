"""Spark sessions: an embedded local Spark for development, the cluster's own on Databricks.

The asset only calls `spark.get_session()`; which session that is, is decided
in definitions.py. One session per process: getOrCreate hands every caller
(and every thread of a pack) the same one.
"""

from __future__ import annotations

import os
import shutil

from dagster import ConfigurableResource
from pyspark.sql import SparkSession


class JavaNotFound(RuntimeError):
    pass


class SparkResource(ConfigurableResource):
    """What the bronze asset needs: a SparkSession."""

    def get_session(self) -> SparkSession:
        raise NotImplementedError


class LocalSparkResource(SparkResource):
    """An embedded Spark in the current process: no cluster, no credentials."""

    master: str = "local[2]"
    app_name: str = "fanout_dagster"
    warehouse_dir: str = "warehouse"
    # A few small loads at a time: 200 shuffle partitions would be 200 tiny tasks.
    shuffle_partitions: int = 4
    log_level: str = "ERROR"

    def get_session(self) -> SparkSession:
        if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
            raise JavaNotFound(
                "Java was not found: local Spark needs a Java 17 runtime on PATH or JAVA_HOME "
                "(e.g. `apt-get install openjdk-17-jre-headless`)."
            )
        session = (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.sql.warehouse.dir", os.path.abspath(self.warehouse_dir))
            .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
            .config("spark.ui.enabled", "false")
            .config("spark.sql.session.timeZone", "UTC")
            # Pack threads share the driver; FAIR keeps one big load from starving the rest.
            .config("spark.scheduler.mode", "FAIR")
            .config("spark.log.level", self.log_level)
            .getOrCreate()
        )
        session.sparkContext.setLogLevel(self.log_level)
        return session


class ClusterSparkResource(SparkResource):
    """The session of the cluster the step runs on (Databricks, or the emulator)."""

    def get_session(self) -> SparkSession:
        return SparkSession.builder.getOrCreate()
