"""Local Spark as a Databricks workspace has it: Delta Lake tables in a catalog,
under `<schema>.<table>` names.

Used by the embedded session (orchestration/resources/spark.py) and the local Spark Connect
server alike, so both have the same configuration.

The local catalog is Spark's in-memory one: tables live as Delta folders at the
warehouse's default places (`<warehouse>/<schema>.db/<table>`), and each Spark
process registers the ones it finds, when it starts and whenever a table it
does not know is asked for. A Hive metastore would remember them by itself, but
its embedded Derby database admits one Spark process at a time, and several run
at once here (runs, tests, a shell).

No Dagster import.
"""

from __future__ import annotations

import re
import shutil
from importlib.metadata import version
from pathlib import Path

import pyspark
from pyspark.sql import SparkSession

from fanout_dagster.core.tables import quote

DELTA_LOG = "_delta_log"
# A version's commit or checkpoint in `_delta_log`: 00000000000000000000.json, ...
COMMIT_FILE = re.compile(r"^\d{20}\.(json|checkpoint.*\.parquet)$")


def delta_package() -> str:
    """The Delta jar's Maven coordinates for this pyspark and delta-spark, as
    `delta.configure_spark_with_delta_pip` names them (a test checks they agree)."""
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def spark_conf(warehouse: str, *, shuffle_partitions: int = 4) -> dict[str, str]:
    """Spark settings of every local session and of the local Spark Connect server."""
    return {
        # Delta Lake, as on Databricks: its SQL extensions and its catalog.
        "spark.jars.packages": delta_package(),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.warehouse.dir": str(local_path(warehouse).resolve()),
        # A few small loads at a time: 200 shuffle partitions would be 200 tiny
        # tasks, and Delta reads its log with 50 partitions by default.
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        # Pack threads share the driver; FAIR keeps one big load from starving the rest.
        "spark.scheduler.mode": "FAIR",
    }


def local_path(path: str) -> Path:
    """'file:/a/b', 'file:///a/b' or '/a/b' -> Path('/a/b')."""
    if path.startswith("file:"):
        path = "/" + path.removeprefix("file:").lstrip("/")
    return Path(path)


def table_location(warehouse: Path, full_name: str) -> Path:
    """Where the in-memory catalog keeps a managed table `schema.table`."""
    schema, table = full_name.rsplit(".", 1)
    return warehouse / f"{schema}.db" / table


def warehouse_dir(spark: SparkSession) -> Path:
    return local_path(str(spark.conf.get("spark.sql.warehouse.dir")))


def has_commits(location: Path) -> bool:
    """Whether a Delta folder holds a committed version (a first write killed or
    cancelled leaves data files and an empty `_delta_log`, and no table)."""
    log = location / DELTA_LOG
    return log.is_dir() and any(
        COMMIT_FILE.match(entry.name) for entry in log.iterdir() if entry.is_file()
    )


def register_table(spark: SparkSession, full_name: str) -> None:
    """Make a table another Spark process created known to this one's catalog.

    The folder of a first write that never committed is cleared: it is no
    table, and Spark would refuse to create the table over it. (Called for the
    object about to be written; one run per object at a time.)
    """
    if spark.catalog.tableExists(full_name):
        return
    location = table_location(warehouse_dir(spark), full_name)
    if (location / DELTA_LOG).is_dir() and not has_commits(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    if (location / DELTA_LOG).is_dir():
        schema = full_name.rsplit(".", 1)[0]
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        path = str(location).replace("'", "\\'")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {quote(full_name)} USING DELTA LOCATION '{path}'")


def register_tables(spark: SparkSession) -> list[str]:
    """Register every Delta table found in the warehouse; returns their names."""
    warehouse = warehouse_dir(spark)
    names = []
    for log in sorted(warehouse.glob(f"*.db/*/{DELTA_LOG}")):
        if not has_commits(log.parent):
            continue  # a first write in progress, or one that never committed
        schema = log.parent.parent.name.removesuffix(".db")
        name = f"{schema}.{log.parent.name}"
        register_table(spark, name)
        names.append(name)
    return names


def delta_log_dir(spark: SparkSession, full_name: str) -> Path:
    """Where a local table's Delta log is (this process reads its history there)."""
    return table_location(warehouse_dir(spark), full_name) / DELTA_LOG
