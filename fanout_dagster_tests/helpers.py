"""Helpers shared by the tests: the repository's sample paths, a throwaway
project, and independent ways to read sources (conftest.py holds the fixtures)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml
from dagster import ResourceDefinition

from fanout_dagster.core.objects import ObjectConfig, load_objects
from fanout_dagster.local_spark.connect_server import ServerConfig
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.object_loader import LocalObjectLoader
from fanout_dagster.orchestration.resources.spark import SparkResource

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIGS = REPO_ROOT / "configs"
SAMPLE_DATA = REPO_ROOT / "data"


# pyspark marks the whole process "Connect mode" once a Connect session exists.
CONNECT_MODE_FLAG = "SPARK_CONNECT_MODE_ENABLED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process of a test (without pyspark's
    process-wide Connect flag, so an embedded Spark there stays embedded)."""
    env = {k: v for k, v in os.environ.items() if k != CONNECT_MODE_FLAG}
    env.update(extra)
    return env


def sample_object(configs_dir: Path, key: str) -> ObjectConfig:
    return load_objects(configs_dir).by_key()[key]


def expected_source_files(data_root: Path, obj: ObjectConfig) -> list[str]:
    """The object's files, found with pathlib (not with the product's resolver)."""
    return sorted(str(p.resolve()) for p in Path(data_root).glob(obj.source.path) if p.is_file())


def _spark_read(spark, obj: ObjectConfig, files: list[str]):
    # Spark expands glob characters in the paths it is given; these are files.
    files = [re.sub(r"([\\\[\]{}*?])", r"\\\1", f) for f in files]
    if obj.source.format == "csv":
        header = str(obj.source.options.get("header", False)).lower() == "true"
        return spark.read.csv(files, header=header)
    if obj.source.format == "json":
        return spark.read.json(files)
    return spark.read.parquet(*files)


def spark_source_counts(spark, obj: ObjectConfig, files: list[str]) -> dict[str, int]:
    """Rows per source file, read with Spark's own reader calls (one Spark job)."""
    from pyspark.sql import functions as F

    rows = _spark_read(spark, obj, files).groupBy(F.input_file_name().alias("f")).count().collect()
    counts = {local_path(row["f"]): row["count"] for row in rows}
    return {f: counts.get(f, 0) for f in files}


def spark_source_count(spark, obj: ObjectConfig, files: list[str]) -> int:
    return _spark_read(spark, obj, files).count()


def spark_source_columns(spark, obj: ObjectConfig, files: list[str]) -> list[str]:
    return _spark_read(spark, obj, files).columns


def local_path(uri: str) -> str:
    """'file:/a/b%3Dc' (Spark's _metadata.file_path) -> '/a/b=c'."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") else uri


def keep_objects(project: Project, keys: list[str]) -> None:
    """Rewrite the project's configs to hold only these sample objects (as declared)."""
    entries = []
    for path in sorted(project.configs.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        items = document if isinstance(document, list) else [document]
        entries += [e for e in items if f"{e['code']}-{e['name']}" in keys]
        path.unlink()
    assert sorted(f"{e['code']}-{e['name']}" for e in entries) == sorted(keys)
    (project.configs / "objects.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))


def table_state(spark, full_name: str) -> tuple[int, list[tuple]] | None:
    """A Delta table's current version and its rows (sorted), or None if it does not exist.

    Equal states before and after a refused load prove nothing was committed."""
    if not spark.catalog.tableExists(full_name):
        return None
    version = spark.sql(f"DESCRIBE HISTORY {full_name} LIMIT 1").first().version
    rows = sorted(tuple(str(v) for v in row) for row in spark.table(full_name).collect())
    return version, rows


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256 of its bytes)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def replace_once(path: Path, old: str, new: str) -> None:
    text = Path(path).read_text()
    assert text.count(old) == 1, f"{old!r} should occur exactly once in {path}"
    Path(path).write_text(text.replace(old, new))


class ListHandler(logging.Handler):
    """Collects log records (e.g. attached to a sensor context's logger)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


class Project:
    """A throwaway copy of the sample configs and data, with bronze tables of its own.

    Tests share one Spark Connect server (and its warehouse), in-process and in
    the Dagster processes they start, so each project writes to a schema of its
    own.
    """

    def __init__(self, root: Path, spark_server: Callable[[], ServerConfig] | None = None):
        self.root = root
        self.configs = root / "configs"
        self.data = root / "data"
        self.schema = "bronze_" + uuid.uuid4().hex[:12]
        self._spark_server = spark_server

    def table(self, table: str) -> str:
        """The full name of one of this project's bronze tables."""
        return f"{self.schema}.{table}"

    @property
    def keys(self) -> list[str]:
        # as the Dagster side loads them (Dagster's own cron check included)
        return sorted(obj.key for obj in self.object_configs().load().objects)

    def object_configs(self) -> ObjectConfigs:
        return ObjectConfigs(configs_dir=str(self.configs), data_root=str(self.data))

    def bronze_tables(self) -> BronzeTables:
        return BronzeTables(schema_name=self.schema)

    def resources(self, spark_resource: SparkResource) -> dict:
        """The local target's resources, pointed at this project."""
        return {
            "spark": spark_resource,
            "bronze_tables": self.bronze_tables(),
            "object_configs": self.object_configs(),
            "object_loader": LocalObjectLoader(
                spark=spark_resource,
                bronze_tables=self.bronze_tables(),
                object_configs=self.object_configs(),
            ),
            "pyspark_step_launcher": ResourceDefinition.none_resource(),
        }

    @property
    def spark_server(self) -> ServerConfig:
        assert self._spark_server is not None, "this project has no Spark Connect server"
        return self._spark_server()

    def env(self) -> dict[str, str]:
        """Environment for a Dagster process (daemon, dagster dev) using this project:
        its runs attach to the shared Spark Connect server and write to its schema."""
        return {
            "FANOUT_CONFIGS_DIR": str(self.configs),
            "FANOUT_DATA_ROOT": str(self.data),
            "FANOUT_SPARK": "connect",
            "FANOUT_SPARK_CONNECT_PORT": str(self.spark_server.port),
            "FANOUT_SPARK_WAREHOUSE": str(self.spark_server.warehouse),
            "FANOUT_BRONZE_SCHEMA": self.schema,
            # A run per object unless a test packs: what most tests count on.
            "FANOUT_OBJECTS_PER_RUN": "1",
        }

    def process_table(self, table: str) -> Path:
        """Where the shared server keeps one of this project's bronze tables."""
        return Path(self.spark_server.warehouse) / f"{self.schema}.db" / table
