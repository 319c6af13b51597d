"""Bronze ingestion in plain Spark: read an object's source, add audit columns,
write its bronze table.

No Dagster import: everything here runs against a bare SparkSession, which is
how the tests and the benchmark's `floor` mode call it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fanout_dagster.objects import ObjectConfig, SourceSpec
from fanout_dagster.tables import TableWriter

AUDIT_COLUMNS = ("_ingested_at", "_source_file", "_dagster_run_id", "_partition_key", "_load_id")


class SourceError(Exception):
    """The object's source cannot be read as configured (missing, empty, outside the root)."""


@dataclass(frozen=True)
class LoadResult:
    key: str
    table: str
    location: str
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, Spark type) of the written table
    source_files: int
    load_id: str
    seconds: float


def is_local_root(data_root: str) -> bool:
    return "://" not in data_root or data_root.startswith("file://")


def resolve_source_files(data_root: str, source: SourceSpec) -> list[str]:
    """The files a local source matches, each checked to stay inside the data root.

    The config loader already refuses '..' and absolute paths; this also catches
    symlinks that point outside the root, which only the filesystem can tell.
    """
    root = Path(data_root.removeprefix("file://")).resolve()
    pattern = str(root / source.path)
    matches = sorted(glob.glob(pattern, recursive=True))
    files: list[str] = []
    for match in matches:
        real = Path(match).resolve()
        if root != real and root not in real.parents:
            raise SourceError(f"source path {source.path!r} leads outside the data root via {match}")
        if real.is_dir():
            files.extend(
                str(p) for p in sorted(real.rglob("*")) if p.is_file() and not _hidden(p, real)
            )
        elif real.is_file():
            files.append(str(real))
    if not files:
        raise SourceError(f"no source files match {source.path!r} under the data root {root}")
    return files


def _hidden(path: Path, base: Path) -> bool:
    # Spark skips files starting with '_' or '.', e.g. _SUCCESS markers.
    return any(part.startswith(("_", ".")) for part in path.relative_to(base).parts)


def source_fingerprint(files: list[str]) -> str:
    """Identifies the exact source content of a load: paths, sizes, mtimes.

    An append-mode table keeps one load per fingerprint, so re-ingesting the
    same files replaces that load instead of duplicating its rows.
    """
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def read_source(spark: SparkSession, source: SourceSpec, paths: list[str]) -> DataFrame:
    reader = spark.read.format(source.format)
    for name, value in source.options.items():
        # Spark wants reader options as strings ("true", not True).
        reader = reader.option(name, str(value).lower() if isinstance(value, bool) else str(value))
    return reader.load(paths)


def with_audit_columns(
    df: DataFrame, *, ingested_at: datetime, run_id: str, partition_key: str, load_id: str
) -> DataFrame:
    return df.select(
        "*",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        # The hidden _metadata column names the file each row came from.
        F.col("_metadata.file_path").alias("_source_file"),
        F.lit(run_id).alias("_dagster_run_id"),
        F.lit(partition_key).alias("_partition_key"),
        F.lit(load_id).alias("_load_id"),
    )


def ingest_object(
    spark: SparkSession,
    obj: ObjectConfig,
    *,
    data_root: str,
    writer: TableWriter,
    run_id: str,
) -> LoadResult:
    """Load one object into its bronze table, atomically (see tables.py)."""
    started = time.perf_counter()
    if is_local_root(data_root):
        paths = resolve_source_files(data_root, obj.source)
        fingerprint = source_fingerprint(paths)
    else:
        # Remote roots (dbfs:/, abfss://, s3://): Spark lists the files itself.
        paths = [f"{data_root.rstrip('/')}/{obj.source.path}"]
        fingerprint = hashlib.sha256(f"{paths[0]}\0{run_id}".encode()).hexdigest()[:16]
    # Load ids start with a letter so Spark's partition discovery reads them
    # back as strings, never as numbers.
    if obj.target.mode == "append":
        load_id = f"f{fingerprint}"
    else:
        load_id = f"r{run_id.replace('-', '')[:16]}"

    df = read_source(spark, obj.source, paths)
    if not df.columns:
        raise SourceError(f"source {obj.source.path!r} has no columns (empty files?)")
    df = with_audit_columns(
        df,
        ingested_at=datetime.now(timezone.utc),
        run_id=run_id,
        partition_key=obj.key,
        load_id=load_id,
    )
    # The writer refuses an empty load and a changed schema before it commits,
    # so the previous load stays in place in both cases.
    written = writer.write(df, table=obj.target.table, mode=obj.target.mode, load_id=load_id)
    return LoadResult(
        key=obj.key,
        table=obj.target.table,
        location=written.location,
        rows=written.rows,
        columns=tuple((f.name, f.dataType.simpleString()) for f in df.schema.fields),
        source_files=len(paths),
        load_id=load_id,
        seconds=time.perf_counter() - started,
    )
