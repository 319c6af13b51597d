"""Bronze ingestion in plain Spark: list an object's source files, read the ones
that need reading, add audit columns, and write its bronze Delta table.

- overwrite: every run reads every source file; the table becomes that load.
- append: each source file is ingested exactly once. Each commit records
  which files the table holds (path, size, modification time, and the hash
  of the object's source definition; tables.py), files without rows
  included; a run reads only the files that are new or changed and replaces
  exactly their rows, in one transaction. A run with nothing new commits
  nothing. Rows of files that left the source stay, as history. When the
  source definition itself changes (path, format, options, schema, or a
  table source), the table is reloaded from the current source in one
  transaction, so a switch never leaves a row twice.

Local data roots (including `/Volumes/...` and `/dbfs/...`, which are mounted
on a Databricks cluster) are listed with the file system, so that symlinks
leading outside the root are caught; URI roots (`dbfs:/`, `abfss://`, `s3://`)
are listed by Spark. Either way Spark is then given the exact files, and the
files it reports reading are checked to sit inside the data root before
anything is written.

No Dagster import and no `sparkContext`: this runs on a classic session and on
Spark Connect alike, and the tests and the benchmark's floor call it directly.
"""

from __future__ import annotations

import glob
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from fanout_dagster.core.expectations import ExpectationChecks, ExpectationsReport
from fanout_dagster.core.objects import ObjectConfig, SourceSpec
from fanout_dagster.core.tables import (
    NO_FILES,
    BronzeTableWriter,
    Commit,
    FileRecord,
    FileState,
    commit_tag,
)

AUDIT_COLUMNS = (
    "_ingested_at",
    "_source_file",
    "_source_size",
    "_source_modified",
    "_source_hash",
    "_load_id",
    "_dagster_run_id",
    "_partition_key",
)


class SourceError(Exception):
    """The object's source cannot be read as configured (missing, outside the root, ...)."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # what Spark is given: an absolute local path or a URI
    relative: str  # relative to the data root: the file's identity in the table
    size: int
    modified_ms: int

    @property
    def load_id(self) -> str:
        return source_load_id(self.relative)

    @property
    def state(self) -> FileState:
        return FileState(self.size, self.modified_ms)


@dataclass(frozen=True)
class LoadResult:
    key: str
    table: str  # full table name, e.g. bronze.erp_customers or main.bronze.erp_customers
    version: int  # the table's Delta version after the load
    written: bool  # False: nothing new to load, nothing committed
    operation: str  # the Delta operation of the commit
    rows: int  # rows in the table now (a table holds one object)
    rows_written: int  # rows this load committed
    data_files_written: int  # Delta data files the commit added
    columns: tuple[tuple[str, str], ...]  # (name, Spark type) of the table
    source_files: int  # files the source holds now
    files_read: int  # source files this run read: overwrite: all; append: new or changed
    load_ids: tuple[str, ...]  # the `_load_id`s (source files) this load replaced
    reloaded: bool  # append: the source definition changed, the table was reloaded
    seconds: float
    # What the object's expectations did to this load (None: it declares none).
    expectations: ExpectationsReport | None = None


# --------------------------------------------------------------------------- listing


def is_uri_root(data_root: str) -> bool:
    """`dbfs:/x`, `abfss://...`, `s3://...` are listed by Spark; plain paths by the file system."""
    if data_root.startswith("file:"):
        return False
    return "://" in data_root or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", data_root))


def list_source_files(spark: SparkSession, data_root: str, source: SourceSpec) -> list[SourceFile]:
    files = (
        _list_with_spark(spark, data_root, source)
        if is_uri_root(data_root)
        else _list_local(data_root, source)
    )
    if not files:
        raise SourceError(f"no source files match {source.path!r} under the data root {data_root}")
    return files


def _local_root(data_root: str) -> Path:
    return Path(data_root.removeprefix("file://").removeprefix("file:")).resolve()


def _list_local(data_root: str, source: SourceSpec) -> list[SourceFile]:
    """The files a source matches under a local root, each checked to stay inside it.

    The pattern is matched relative to the root (whose own path may hold glob
    characters). A matched folder stands for every file below it. Files Spark
    would skip are left out (names starting with '_' or '.', and what sits in
    such folders), so the files counted and the files loaded are the same.
    Symlinks are followed and must lead inside the root.
    """
    root = _local_root(data_root)
    found: dict[str, SourceFile] = {}
    for match in glob.glob(source.path, root_dir=root):
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
            if real.is_file() and not _hidden([real.name]):
                stat = real.stat()
                # A file reached twice (a symlink inside the root) is read once.
                found[str(real)] = SourceFile(
                    path=str(real),
                    relative=real.relative_to(root).as_posix(),
                    size=stat.st_size,
                    modified_ms=stat.st_mtime_ns // 1_000_000,
                )
    return sorted(found.values(), key=lambda f: f.relative)


def _hidden(names: tuple[str, ...] | list[str]) -> bool:
    return any(name.startswith(("_", ".")) for name in names)


def _list_with_spark(spark: SparkSession, data_root: str, source: SourceSpec) -> list[SourceFile]:
    """List a URI root's files with Spark (binaryFile without its content column)."""
    pattern = f"{data_root.rstrip('/')}/{source.path}"
    try:
        rows = (
            spark.read.format("binaryFile")
            # A folder stands for every file below it, as for local roots.
            .option("recursiveFileLookup", "true")
            .load(pattern)
            .select("path", "length", F.unix_millis("modificationTime").alias("modified_ms"))
            .collect()
        )
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            return []
        raise
    root = _uri_path(data_root)
    files = [
        SourceFile(row.path, _relative(_uri_path(row.path), root), row.length, row.modified_ms)
        for row in rows
    ]
    return sorted(files, key=lambda f: f.relative)


def _uri_path(uri: str) -> str:
    """The decoded path part of a URI ('dbfs:/a%20b' -> '/a b')."""
    return unquote(urlsplit(uri).path) if ":" in uri.split("/", 1)[0] else uri


def _relative(path: str, root_path: str) -> str:
    prefix = root_path.rstrip("/") + "/"
    normalized = str(PurePosixPath(path))
    if not normalized.startswith(prefix) or ".." in PurePosixPath(normalized).parts:
        raise SourceError(f"source file {path} is not under the data root {root_path}")
    return normalized[len(prefix) :]


def source_load_id(relative_path: str) -> str:
    """The `_load_id` of a source file's rows (mirrored in Spark by `_load_id_column`).

    It starts with a letter, so it is never read back as a number.
    """
    return "f" + hashlib.sha256(relative_path.encode()).hexdigest()[:16]


def _load_id_column(root_path: str) -> Column:
    """`source_load_id` of each row's file, computed by Spark from `_metadata.file_path`."""
    return F.concat(F.lit("f"), F.substring(F.sha2(_relative_column(root_path), 256), 1, 16))


def _relative_column(root_path: str) -> Column:
    # _metadata.file_path is a URI ('file:/data/a%20b.csv'): drop the scheme and
    # authority, then undo the escaping (url_decode would read '+' as a space;
    # a URI path keeps '+' as it is).
    path = F.regexp_replace(
        F.col("_metadata.file_path"), r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?", ""
    )
    path = F.url_decode(F.regexp_replace(path, r"\+", "%2B"))
    return F.substring(path, len(root_path.rstrip("/")) + 2, 1 << 30)


def literal_path(path: str) -> str:
    """`path` escaped for Spark's readers, which expand glob characters ([]{}*?)
    in the paths they are given: this one is meant as it is."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", path)


# --------------------------------------------------------------------------- reading


def read_source(spark: SparkSession, source: SourceSpec, files: list[SourceFile]) -> DataFrame:
    """The given files read as the source says (format, options, schema or schema hints)."""
    reader = spark.read.format(source.format)
    for name, value in source.options.items():
        # Spark wants reader options as strings ("true", not True).
        reader = reader.option(name, str(value).lower() if isinstance(value, bool) else str(value))
    paths = [literal_path(f.path) for f in files]
    if source.schema:
        return reader.schema(source.schema).load(paths)
    if source.schema_hints:
        inferred = reader.load(paths).schema
        return reader.schema(with_hints(inferred, source.schema_hints)).load(paths)
    return reader.load(paths)


def with_hints(inferred: StructType, hints: str) -> StructType:
    """Auto Loader's schema hints: the hinted columns get the hinted types; hinted
    columns the data lacks are added at the end."""
    parsed = StructType.fromDDL(hints)
    if not isinstance(parsed, StructType):  # a bare type ("INT"), not columns
        raise SourceError(f"schema_hints {hints!r} are not a list of columns")
    hinted = {f.name.lower(): f for f in parsed.fields}
    fields = [
        StructField(f.name, hinted.pop(f.name.lower()).dataType, True)
        if f.name.lower() in hinted
        else f
        for f in inferred.fields
    ]
    return StructType(fields + list(hinted.values()))


def check_read_inside_root(df: DataFrame, files: list[SourceFile]) -> None:
    """Refuse the load if Spark read any file it was not given (all given files are
    inside the data root): a glob expanded by Spark or a path rewritten on the way."""
    given = {_uri_path(f.path) if is_uri_root(f.path) else f.path for f in files}
    read = {_uri_path(uri) for uri in df.inputFiles()}
    unexpected = sorted(read - given)
    if unexpected:
        raise SourceError(
            f"Spark read files outside the object's source files: {', '.join(unexpected[:5])}"
        )


def with_audit_columns(
    df: DataFrame,
    *,
    root_path: str,
    run_id: str,
    partition_key: str,
    source_hash: str,
    ingested_at: datetime,
) -> DataFrame:
    return df.select(
        "*",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        # The hidden _metadata column names the file each row came from.
        F.col("_metadata.file_path").alias("_source_file"),
        F.col("_metadata.file_size").alias("_source_size"),
        F.col("_metadata.file_modification_time").alias("_source_modified"),
        F.lit(source_hash).alias("_source_hash"),
        _load_id_column(root_path).alias("_load_id"),
        F.lit(run_id).alias("_dagster_run_id"),
        F.lit(partition_key).alias("_partition_key"),
    )


# --------------------------------------------------------------------------- one object


def ingest_object(
    spark: SparkSession,
    obj: ObjectConfig,
    *,
    data_root: str,
    writer: BronzeTableWriter,
    run_id: str,
) -> LoadResult:
    """Load one object into its bronze table: one Delta transaction, or none."""
    started = time.perf_counter()
    table, target = obj.target.table, obj.target
    allow_empty = target.on_empty == "allow"
    mode = target.schema_evolution_mode
    checks = ExpectationChecks.of(obj, writer)

    if obj.source.table:
        df = _audited_table_source(spark, obj, run_id)
        tag = commit_tag(run_id, obj.key, _recorded(obj, NO_FILES, []))
        commit = writer.overwrite(
            df, table=table, mode=mode, allow_empty=allow_empty, tag=tag, checks=checks
        )
        return _result(obj, commit, 1, 1, (), False, started, checks)

    files = list_source_files(spark, data_root, obj.source)
    root_path = _uri_path(data_root) if is_uri_root(data_root) else str(_local_root(data_root))

    def audited(todo: list[SourceFile]) -> DataFrame | None:
        df = read_source(spark, obj.source, todo)
        if not df.columns:
            return None  # only empty files (a day without events, say): no rows, no columns
        check_read_inside_root(df, todo)
        return with_audit_columns(
            df,
            root_path=root_path,
            run_id=run_id,
            partition_key=obj.key,
            source_hash=obj.source_hash,
            ingested_at=datetime.now(UTC),
        )

    if target.mode == "overwrite":
        rows = audited(files)
        if rows is None:
            if writer.table_schema(table) is None or not allow_empty:
                raise SourceError(
                    f"source {obj.source.path!r} has no columns (only empty files); "
                    f"table {writer.full_name(table)} keeps its previous version"
                )
            rows = spark.table(writer.full_name(table)).limit(0)
        # The table is exactly these files (a later switch to append reads none again).
        tag = commit_tag(run_id, obj.key, _recorded(obj, NO_FILES, files))
        commit = writer.overwrite(
            rows, table=table, mode=mode, allow_empty=allow_empty, tag=tag, checks=checks
        )
        return _result(obj, commit, len(files), len(files), (), False, started, checks)

    done = writer.ingested_files(table)
    # Files of another source definition: the table starts over from this source.
    # (Files an earlier release recorded may carry the older form of this same
    # source's hash: objects/model.py, accepted_source_hashes.)
    reload = bool(done.source_hashes - obj.accepted_source_hashes)
    todo = [f for f in files if reload or done.files.get(f.load_id) != f.state]
    tag = commit_tag(run_id, obj.key, _recorded(obj, NO_FILES if reload else done, todo))
    new_rows = audited(todo) if todo else None
    load_ids = tuple(f.load_id for f in todo)
    commit = writer.replace_files(
        new_rows,
        table=table,
        load_ids=load_ids,
        mode=mode,
        allow_empty=allow_empty,
        tag=tag,
        reload=reload,
        checks=checks,
    )
    return _result(obj, commit, len(files), len(todo), load_ids, reload, started, checks)


def _recorded(obj: ObjectConfig, held: FileRecord, read: list[SourceFile]) -> FileRecord:
    """The files the table holds once the files `read` (with rows or without) are in."""
    files = {**held.files, **{f.load_id: f.state for f in read}}
    return FileRecord(frozenset([obj.source_hash]), files)


def _audited_table_source(spark: SparkSession, obj: ObjectConfig, run_id: str) -> DataFrame:
    name = obj.source.table or ""
    return spark.table(name).select(
        "*",
        F.lit(datetime.now(UTC)).cast("timestamp").alias("_ingested_at"),
        F.lit(name).alias("_source_file"),
        F.lit(None).cast("bigint").alias("_source_size"),
        F.lit(None).cast("timestamp").alias("_source_modified"),
        F.lit(obj.source_hash).alias("_source_hash"),
        F.lit(source_load_id(name)).alias("_load_id"),
        F.lit(run_id).alias("_dagster_run_id"),
        F.lit(obj.key).alias("_partition_key"),
    )


def _result(
    obj: ObjectConfig,
    commit: Commit,
    source_files: int,
    files_read: int,
    load_ids: tuple[str, ...],
    reloaded: bool,
    started: float,
    checks: ExpectationChecks | None = None,
) -> LoadResult:
    return LoadResult(
        key=obj.key,
        table=commit.table,
        version=commit.version,
        written=commit.written,
        operation=commit.operation,
        rows=commit.rows,
        rows_written=commit.rows_written,
        data_files_written=commit.files_written,
        columns=tuple((f.name, f.dataType.simpleString()) for f in commit.schema.fields),
        source_files=source_files,
        files_read=files_read,
        load_ids=load_ids,
        reloaded=reloaded,
        seconds=time.perf_counter() - started,
        expectations=_expectations_report(checks, commit),
    )


def _expectations_report(
    checks: ExpectationChecks | None, commit: Commit
) -> ExpectationsReport | None:
    if checks is None:
        return None
    # A load that found nothing new checked no row.
    return checks.report() if commit.written else checks.empty_report()
