"""Bronze ingestion in plain Spark: read an object's source, add audit columns,
write its bronze table.

- overwrite: every run reads all the source files; the table becomes that load.
- append: the table keeps one load per source file, whose `_load_id` is made
  from the file's path relative to the data root. A run reads only the files
  that are new or changed since the table got them (size, modification time
  or the object's config differ from the fingerprint kept with the load) and
  replaces just their loads, so each source row is in the table once, as of
  its file's latest version. Loads of files that left the source stay: they
  are history.

No Dagster import: everything here runs against a bare SparkSession, which is
how the tests and the benchmark's `floor` mode call it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fanout_dagster.objects import ObjectConfig, SourceSpec
from fanout_dagster.tables import TableWriter, literal_path

AUDIT_COLUMNS = ("_ingested_at", "_source_file", "_dagster_run_id", "_partition_key", "_load_id")


class SourceError(Exception):
    """The object's source cannot be read as configured (missing, empty, outside the root)."""


@dataclass(frozen=True)
class LoadResult:
    key: str
    table: str
    location: str
    rows: int  # rows in the table now (a table holds one object)
    rows_written: int  # rows this run wrote: overwrite: all; append: those of new or changed files
    columns: tuple[tuple[str, str], ...]  # (name, Spark type) of the table
    source_files: int  # files the source holds now
    files_written: (
        int  # source files this run read: overwrite: all; append: the new or changed ones
    )
    load_ids: tuple[str, ...]  # the `_load_id`s this run wrote (append: one per file read)
    seconds: float


def is_local_root(data_root: str) -> bool:
    return "://" not in data_root or data_root.startswith("file://")


def resolve_source_files(data_root: str, source: SourceSpec) -> list[str]:
    """The files a local source matches, each checked to stay inside the data root.

    The pattern is matched relative to the root, whose own path may hold glob
    characters. A matched folder stands for every file below it. Files Spark
    skips without a word are left out, so the files counted, fingerprinted
    and loaded are the same: names starting with '_' or '.' (_SUCCESS, .crc)
    and whatever sits in such folders below a matched one. The config loader
    refuses '..' and absolute paths; symlinks that lead outside the root,
    which only the filesystem can tell, are refused here wherever they are.
    """
    root = _local_root(data_root)
    files: set[str] = set()
    for match in glob.glob(source.path, root_dir=root, recursive=True):
        if (root / match).is_dir():
            below = glob.glob("**", root_dir=root / match, recursive=True)
            candidates = [(Path(match, rel), Path(rel).parts) for rel in below]
        else:
            candidates = [(Path(match), (Path(match).name,))]
        for path, shown in candidates:
            if _hidden(shown):
                continue
            real = (root / path).resolve()
            if not real.is_relative_to(root):
                raise SourceError(
                    f"source path {source.path!r} leads outside the data root via {path}"
                )
            # Spark is given the resolved path, so its name counts too.
            if real.is_file() and not _hidden([real.name]):
                files.add(str(real))  # a set: a file reached twice (a symlink, '**') is read once
    if not files:
        raise SourceError(f"no source files match {source.path!r} under the data root {root}")
    return sorted(files)


def _local_root(data_root: str) -> Path:
    return Path(data_root.removeprefix("file://")).resolve()


def _hidden(names) -> bool:
    return any(name.startswith(("_", ".")) for name in names)


def source_load_id(relative_path: str) -> str:
    """The `_load_id` of a source file's append load (mirrored in Spark by `_load_id_column`).

    It starts with a letter so Spark's partition discovery reads ids back as
    strings, never as numbers.
    """
    return "f" + hashlib.sha256(relative_path.encode()).hexdigest()[:16]


def _load_id_column(root_path: str) -> Column:
    """`source_load_id` of each row's file, computed by Spark."""
    # _metadata.file_path is a URI ('file:/data/a%20b.csv'): drop the scheme
    # and authority, then undo the escaping (url_decode would read '+' as a
    # space; a URI path keeps '+' as it is).
    path = F.regexp_replace(
        F.col("_metadata.file_path"), r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?", ""
    )
    path = F.url_decode(F.regexp_replace(path, r"\+", "%2B"))
    relative = F.substring(path, len(_prefix(root_path)) + 1, 1 << 30)
    return F.concat(F.lit("f"), F.substring(F.sha2(relative, 256), 1, 16))


def _prefix(root_path: str) -> str:
    return root_path.rstrip("/") + "/"


def source_fingerprint(path: str, config_hash: str) -> str:
    """What a file's append load was made from: when this changes, the file is read again."""
    stat = os.stat(path)
    return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns} config={config_hash}"


def read_source(spark: SparkSession, source: SourceSpec, paths: list[str]) -> DataFrame:
    reader = spark.read.format(source.format)
    for name, value in source.options.items():
        # Spark wants reader options as strings ("true", not True).
        reader = reader.option(name, str(value).lower() if isinstance(value, bool) else str(value))
    return reader.load(paths)


def with_audit_columns(
    df: DataFrame, *, ingested_at: datetime, run_id: str, partition_key: str, load_id: Column
) -> DataFrame:
    return df.select(
        "*",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        # The hidden _metadata column names the file each row came from.
        F.col("_metadata.file_path").alias("_source_file"),
        F.lit(run_id).alias("_dagster_run_id"),
        F.lit(partition_key).alias("_partition_key"),
        load_id.alias("_load_id"),
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
    table = obj.target.table
    if is_local_root(data_root):
        # Listed (and checked) here, then read by their exact paths.
        files = resolve_source_files(data_root, obj.source)
        root_path, paths = str(_local_root(data_root)), [literal_path(f) for f in files]
    else:
        # Remote roots (dbfs:/, abfss://, s3://): Spark lists the files itself.
        files = None
        root_path, paths = (
            unquote(urlsplit(data_root).path),
            [f"{data_root.rstrip('/')}/{obj.source.path}"],
        )

    def audited(df: DataFrame, load_id: Column) -> DataFrame:
        now = datetime.now(UTC)
        return with_audit_columns(
            df, ingested_at=now, run_id=run_id, partition_key=obj.key, load_id=load_id
        )

    if obj.target.mode == "overwrite":
        # Like every load id, it starts with a letter (see source_load_id).
        load_id = "r" + re.sub(r"[^0-9a-z]", "", run_id.lower())[:16]
        df = read_source(spark, obj.source, paths)
        if not df.columns:
            raise SourceError(f"source {obj.source.path!r} has no columns (empty files?)")
        # The writer refuses an empty load and a changed schema before it
        # commits, so the previous load stays in place in both cases.
        written = writer.overwrite(audited(df, F.lit(load_id)), table=table, load_id=load_id)
        source_files = files_written = len(files) if files is not None else len(df.inputFiles())
        load_ids = (load_id,)
    else:
        if files is not None:
            ids = {f: _relative_load_id(f, root_path) for f in files}
            # Fingerprints are taken before Spark reads: a file that changes in
            # between is read again by the next run.
            fingerprints = {f: source_fingerprint(f, obj.config_hash) for f in files}
            done = writer.appended_sources(table)
            todo = [f for f in files if done.get(ids[f]) != fingerprints[f]]
            df = read_source(spark, obj.source, [literal_path(f) for f in todo]) if todo else None
        else:
            # No sizes or times to compare: every run reads every file again.
            df = read_source(spark, obj.source, paths)
            files = todo = [unquote(urlsplit(uri).path) for uri in df.inputFiles()]
            ids = {f: _relative_load_id(f, root_path) for f in files}
            fingerprints = dict.fromkeys(files, "")
        if df is not None and not df.columns:
            df = None  # only empty files (a day without events, say): no rows to write
        if df is not None:
            # Spark tags each row with its file's id. Should the two sides ever
            # disagree, the writer refuses rows of loads it was not given.
            df = audited(df, _load_id_column(root_path))
        # Nothing new or changed: the writer writes nothing and reports the table.
        written = writer.append(df, table=table, sources={ids[f]: fingerprints[f] for f in todo})
        source_files, files_written = len(files), len(todo)
        load_ids = tuple(ids[f] for f in todo)

    return LoadResult(
        key=obj.key,
        table=table,
        location=written.location,
        rows=written.rows,
        rows_written=written.rows_written,
        columns=tuple((f.name, f.dataType.simpleString()) for f in written.schema.fields),
        source_files=source_files,
        files_written=files_written,
        load_ids=load_ids,
        seconds=time.perf_counter() - started,
    )


def _relative_load_id(path: str, root_path: str) -> str:
    if not path.startswith(_prefix(root_path)):
        raise SourceError(f"source file {path} is not under the data root {root_path}")
    return source_load_id(path[len(_prefix(root_path)) :])
