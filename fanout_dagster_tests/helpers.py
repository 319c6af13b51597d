"""Helpers shared by the unit/integration tests (conftest.py holds the fixtures
every test uses; this module holds what only some of them need).

Import a fixture from here into a test module to use it, e.g.
`from fanout_dagster_tests.helpers import instance  # noqa: F401`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from dagster import instance_for_test

from fanout_dagster.objects import ObjectConfig, load_objects


@pytest.fixture
def instance():
    """A real, persistent (temporary-folder) Dagster instance."""
    with instance_for_test() as dagster_instance:
        yield dagster_instance


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


def load_dirs(table_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(table_dir).glob("_load_id=*"))


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
