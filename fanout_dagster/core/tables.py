"""Bronze tables: Delta Lake, written by one writer locally and on Databricks.

A bronze table holds one object. Its rows carry audit columns (ingest.py):
`_load_id` names the source file a row came from (a hash of the file's path
relative to the data root), so a file's rows can be replaced as a whole.

Which source files a table holds is recorded in each commit's own metadata
(`userMetadata`, with the run and object): every file read into it, with or
without rows (an empty file is held too, and never read again), with its size
and modification time, and the hash of the source definition (format, path,
options, schema) they were read with. The record is part of the commit that
wrote the rows, so the two never part. A table whose commits carry no record
(written before it existed) is judged by its rows' `_source_size`,
`_source_modified` and `_source_hash`.

Every write is one Delta transaction, so a write that fails or is killed half
way commits nothing and the previous version stays readable:

- `overwrite`: the table becomes exactly this load.
- `replace_files`: the rows of the files given are replaced by the rows the
  DataFrame holds for them (`replaceWhere` on `_load_id`); every other row is
  kept. A changed file thus replaces exactly its own rows.

Each commit carries `userMetadata` naming the Dagster run and object, so its
version and operation metrics are found in the table's history even when
other writers commit in between. Where this process can read the table's
Delta log itself (the local warehouse), the history is read from the log's
commit files: no Spark job. Otherwise (Unity Catalog) `DESCRIBE HISTORY` asks Spark.

No Dagster import: the tests and the benchmark's floor use this directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fanout_dagster.core.schema_policy import (
    RESCUED_COLUMN,
    EvolutionMode,
    SchemaChangeRejected,
    conform,
)

LOAD_COLUMN = "_load_id"
# Identifiers that reach SQL: validated table names (objects.py), the schema
# from settings (settings.py), hex load ids. Quoted anyway.
_NAME_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A version's commit file in `_delta_log`: 00000000000000000003.json
_COMMIT_JSON = re.compile(r"^(\d{20})\.json$")


class LoadRejected(Exception):
    """The write was not committed; the table is as it was."""


@dataclass(frozen=True)
class FileState:
    """What a table records about one source file it holds."""

    size: int | None  # None: no file (rows of a table source)
    modified_ms: int | None


@dataclass(frozen=True)
class FileRecord:
    """The source files a table holds (load id -> state) and the hashes of the source
    definitions they were read with (one, except in rows written before a reload)."""

    source_hashes: frozenset[str]
    files: Mapping[str, FileState]


NO_FILES = FileRecord(frozenset(), {})


@dataclass(frozen=True)
class Commit:
    """The table after a write, and the commit the write made (from the table's history)."""

    table: str  # full name
    version: int  # the table's Delta version now: the one this write created, if it wrote
    written: bool  # False: nothing was new, nothing was committed
    operation: str
    rows_written: int
    files_written: int  # data files the commit added
    rows: int  # rows in the table after the write
    schema: StructType  # the table's schema after the write


@dataclass(frozen=True)
class HistoryEntry:
    """One commit of a table, as `DESCRIBE HISTORY` or the Delta log tells it."""

    version: int
    operation: str
    parameters: Mapping[str, Any]  # operationParameters
    metrics: Mapping[str, str]  # operationMetrics
    user_metadata: str | None

    @classmethod
    def of_row(cls, row: Row) -> HistoryEntry:
        return cls(
            version=int(row.version),
            operation=str(row.operation),
            parameters=row.operationParameters or {},
            metrics=row.operationMetrics or {},
            user_metadata=row.userMetadata,
        )


def history_in_log(log_dir: Path, limit: int) -> list[HistoryEntry]:
    """The newest `limit` commits of a table, newest first, read from its Delta
    log's commit files (each holds its `commitInfo`: what DESCRIBE HISTORY shows)."""
    versions = sorted(
        (int(found.group(1)) for p in log_dir.iterdir() if (found := _COMMIT_JSON.match(p.name))),
        reverse=True,
    )
    entries = []
    for version in versions[:limit]:
        info: dict[str, Any] = {}
        with open(log_dir / f"{version:020d}.json", encoding="utf-8") as commit:
            for line in commit:  # one action per line; Delta writes commitInfo first
                action = json.loads(line) if line.strip() else {}
                if "commitInfo" in action:
                    info = action["commitInfo"]
                    break
        entries.append(
            HistoryEntry(
                version=version,
                operation=str(info.get("operation", "")),
                parameters=_as_history_shows(info.get("operationParameters")),
                metrics=_as_history_shows(info.get("operationMetrics")),
                user_metadata=info.get("userMetadata"),
            )
        )
    return entries


def _as_history_shows(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A commitInfo map as DESCRIBE HISTORY shows it: JSON values as their text
    (`false`, `3`), strings as they are."""
    return {
        key: value if value is None or isinstance(value, str) else json.dumps(value)
        for key, value in (values or {}).items()
    }


class RowChecks(Protocol):
    """Checks of each row of a load whose schema fits the table (core/expectations.py)."""

    def kept(self, rows: DataFrame) -> DataFrame:
        """The rows the table gets (what the emptiness check looks at)."""
        ...

    def write_aside(self, rows: DataFrame, *, load_ids: Collection[str] | None, tag: str) -> None:
        """Commit, before the table, the rows that go elsewhere (the quarantine),
        replacing those of these load ids (None: all of them)."""
        ...

    def to_write(self, rows: DataFrame, *, counted: bool) -> DataFrame:
        """The kept rows as the write reads them; `counted`: the write reports the
        metrics they observe (otherwise they are counted before)."""
        ...


def quote(name: str) -> str:
    """`a.b.c` -> `` `a`.`b`.`c` `` for names made of plain identifier parts."""
    parts = name.split(".")
    if not all(_NAME_PART.match(part) for part in parts):
        raise ValueError(f"{name!r} is not a plain table name")
    return ".".join(f"`{part}`" for part in parts)


def commit_tag(run_id: str, key: str, files: FileRecord | None = None) -> str:
    """The userMetadata of a bronze commit: which run wrote which object, and the
    record of the source files the table holds after this commit."""
    tag: dict[str, Any] = {"dagster_run_id": run_id, "partition_key": key}
    if files is not None:
        [source_hash] = files.source_hashes  # a commit's files share one source definition
        tag["source_hash"] = source_hash
        tag["source_files"] = {
            load_id: [state.size, state.modified_ms] for load_id, state in files.files.items()
        }
    return json.dumps(tag, sort_keys=True)


def _bronze_tag(user_metadata: str | None) -> dict[str, Any] | None:
    """A commit's userMetadata read as a bronze commit tag; None for another writer's."""
    try:
        tag = json.loads(user_metadata or "")
    except ValueError:
        return None
    if isinstance(tag, dict) and {"dagster_run_id", "partition_key"} <= tag.keys():
        return tag
    return None


def is_commit_of(user_metadata: str | None, run_id: str, key: str) -> bool:
    """Whether a commit's userMetadata says this run wrote this object (a file
    object's tag also carries its file record, so the tag is read, not compared)."""
    tag = _bronze_tag(user_metadata)
    return tag is not None and (tag["dagster_run_id"], tag["partition_key"]) == (run_id, key)


def _recorded_files(tag: Mapping[str, Any]) -> FileRecord | None:
    files = tag.get("source_files")
    if not isinstance(files, dict) or not isinstance(tag.get("source_hash"), str):
        return None  # written before commits recorded their files
    return FileRecord(
        frozenset([tag["source_hash"]]),
        {load_id: FileState(*state) for load_id, state in files.items()},
    )


def record_in_history(entries: Sequence[HistoryEntry]) -> tuple[FileRecord | None, bool]:
    """The file record of a table's current state, from its history (newest first):
    `(record, True)` when decided (record None: no commit says, the rows tell),
    `(None, False)` when these entries are not enough.

    The record is the newest bronze commit's. Other writers' commits (OPTIMIZE,
    a user's DELETE) leave it standing: deleted rows are not read again. A
    RESTORE brings back the record of the version it restored.
    """
    restored_to: int | None = None
    for entry in entries:
        if restored_to is not None and entry.version > restored_to:
            continue
        if entry.operation == "RESTORE":
            version = entry.parameters.get("version")
            if version is None:  # restored to a timestamp
                return None, True
            restored_to = int(version)
            continue
        tag = _bronze_tag(entry.user_metadata)
        if tag is not None:
            return _recorded_files(tag), True
    return None, False


class BronzeTableWriter:
    """Writes bronze Delta tables in one schema (`bronze`, or `main.bronze` on Unity Catalog).

    `prepare_table(spark, full_name)` runs before a table is used: the local
    catalog registers a table another Spark process created meanwhile; on
    Databricks it does nothing (Unity Catalog knows every table).
    `delta_log(spark, full_name)`: the folder of a table's Delta log when this
    process can read it (the local warehouse): its history is read there, with
    no Spark job; None (Unity Catalog): through `DESCRIBE HISTORY`.
    """

    def __init__(
        self,
        spark: SparkSession,
        schema: str,
        prepare_table: Callable[[SparkSession, str], None] | None = None,
        system_columns: Collection[str] = (),
        delta_log: Callable[[SparkSession, str], Path] | None = None,
    ):
        self.spark = spark
        self.system_columns = tuple(system_columns)
        self.schema = schema
        self._prepare = prepare_table
        self._delta_log = delta_log
        self._schema_ready = False

    def full_name(self, table: str) -> str:
        return f"{self.schema}.{table}"

    # ------------------------------------------------------------------ reads

    def exists(self, table: str) -> bool:
        name = self.full_name(table)
        if self._prepare is not None:
            self._prepare(self.spark, name)
        return bool(self.spark.catalog.tableExists(name))

    def table_schema(self, table: str) -> StructType | None:
        return self.spark.table(quote(self.full_name(table))).schema if self.exists(table) else None

    def ingested_files(self, table: str) -> FileRecord:
        """The source files the table holds, from its history (`record_in_history`);
        for a table whose commits record none, the files its rows came from."""
        if not self.exists(table):
            return NO_FILES
        for limit in (1, 100):  # the newest commit is nearly always a bronze one
            entries = self._history(table, limit)
            record, decided = record_in_history(entries)
            if decided or len(entries) < limit:
                break
        return record if record is not None else self._files_of_rows(quote(self.full_name(table)))

    def _history(self, table: str, limit: int) -> list[HistoryEntry]:
        """The table's newest `limit` commits, newest first."""
        name = self.full_name(table)
        if self._delta_log is not None:
            log_dir = self._delta_log(self.spark, name)
            if log_dir.is_dir():
                return history_in_log(log_dir, limit)
        rows = (
            self.spark.sql(f"DESCRIBE HISTORY {quote(name)} LIMIT {int(limit)}")
            .select(
                "version", "operation", "operationParameters", "operationMetrics", "userMetadata"
            )
            .collect()
        )
        return [HistoryEntry.of_row(row) for row in rows]

    def _files_of_rows(self, name: str) -> FileRecord:
        rows = (
            self.spark.table(name)
            .groupBy(LOAD_COLUMN)
            .agg(
                F.max("_source_size").alias("size"),
                F.max(F.unix_millis("_source_modified")).alias("modified_ms"),
                F.collect_set("_source_hash").alias("source_hashes"),
            )
            .collect()
        )
        # Rows of a table source have no size and time (int(None) would fail).
        return FileRecord(
            frozenset(h for row in rows for h in row.source_hashes),
            {
                row[LOAD_COLUMN]: FileState(
                    None if row.size is None else int(row.size),
                    None if row.modified_ms is None else int(row.modified_ms),
                )
                for row in rows
            },
        )

    # ------------------------------------------------------------------ writes

    def overwrite(
        self,
        df: DataFrame,
        *,
        table: str,
        mode: EvolutionMode,
        allow_empty: bool,
        tag: str,
        checks: RowChecks | None = None,
    ) -> Commit:
        """Make `df` the whole table, in one transaction (`checks`: of its rows)."""
        current = self.table_schema(table)
        conformed, merge = self._conform(df, current, mode, table)
        kept = checks.kept(conformed) if checks else conformed
        if not allow_empty and kept.isEmpty():
            raise LoadRejected(self._empty_message(table, current))
        counted = checks is not None and current is not None
        if checks:
            checks.write_aside(conformed, load_ids=None, tag=tag)
            kept = checks.to_write(conformed, counted=counted)
        self._write(
            kept, table, replace_where=None, merge=merge, tag=tag, exists=current, counted=counted
        )
        # The table is exactly this load: its rows are the rows written.
        return self._commit(table, tag, conformed.schema, rows=None)

    def replace_files(
        self,
        df: DataFrame | None,
        *,
        table: str,
        load_ids: Collection[str],
        mode: EvolutionMode,
        allow_empty: bool,
        tag: str,
        reload: bool = False,
        checks: RowChecks | None = None,
    ) -> Commit:
        """Replace the rows of these source files with the rows `df` holds, in one transaction.

        `reload`: the table starts over from this load (its source definition
        changed, so rows of files no longer read would not be history but
        leftovers of another source). With no load ids and no reload, nothing
        is written and the table is reported as it is.
        """
        current = self.table_schema(table)
        if not load_ids and not reload:
            if current is None:
                raise LoadRejected(self._empty_message(table, current))
            return self._unchanged(table)
        these = (
            F.col(LOAD_COLUMN).isin(sorted(load_ids)) if load_ids else F.lit(False)
        )  # rows this write replaces
        if df is None:
            if current is None:
                raise LoadRejected(self._empty_message(table, current))
            df = self._no_rows(table)
        try:
            conformed, merge = self._conform(df, current, mode, table)
        except LoadRejected:
            if current is None or not df.isEmpty():
                raise
            # Files without rows (a header-only CSV, its columns typed as text by
            # inference): nothing to fit to the table; the commit records them.
            conformed, merge = self._conform(self._no_rows(table), current, mode, table)
        load = checks.kept(conformed) if checks else conformed
        if not allow_empty and load.isEmpty():
            kept = 0
            if current is not None and not reload:
                kept = self.spark.table(quote(self.full_name(table))).where(~these).limit(1).count()
            if kept == 0:
                raise LoadRejected(self._empty_message(table, current))
        whole = current is None or reload  # the table is exactly this load
        # Only a whole-table write reports the checks' metrics (DataFrameWriterV2).
        # Replacing some load ids stays with saveAsTable's replaceWhere: Delta's
        # V2 overwrite by a filter wrote back the whole table for a load of one
        # empty new file (numOutputRows 733 of 733, no numCopiedRows). Such a
        # load counts its own (new) rows first instead.
        counted = checks is not None and current is not None and whole
        if checks:
            checks.write_aside(conformed, load_ids=None if whole else load_ids, tag=tag)
            load = checks.to_write(conformed, counted=counted)
        condition = None if whole else _load_ids_condition(load_ids)
        self._write(
            load,
            table,
            replace_where=condition,
            merge=merge,
            tag=tag,
            exists=current,
            counted=counted,
        )
        if whole:
            return self._commit(table, tag, conformed.schema, rows=None)
        rows = self.spark.table(quote(self.full_name(table))).count()
        return self._commit(table, tag, conformed.schema, rows=rows)

    def _no_rows(self, table: str) -> DataFrame:
        """No rows, in the table's columns (as a load has them)."""
        return self.spark.table(quote(self.full_name(table))).limit(0).drop(RESCUED_COLUMN)

    def _conform(
        self, df: DataFrame, current: StructType | None, mode: EvolutionMode, table: str
    ) -> tuple[DataFrame, bool]:
        try:
            return conform(
                df, current, mode, table=self.full_name(table), system_columns=self.system_columns
            )
        except SchemaChangeRejected as exc:
            raise LoadRejected(str(exc)) from exc

    def _write(
        self,
        df: DataFrame,
        table: str,
        *,
        replace_where: str | None,
        merge: bool,
        tag: str,
        exists: StructType | None,
        counted: bool = False,
    ) -> None:
        """`counted`: the rows observe metrics the caller reads after the write, and
        the table exists. DataFrameWriterV2's overwrite reports them; Delta's
        saveAsTable (create or replace table as select) runs its query nested and
        loses them (pyspark 4.1, Delta 4.1, classic and Connect alike)."""
        self._ensure_schema()
        if counted:
            v2 = df.writeTo(self.full_name(table)).option("userMetadata", tag)
            if merge:
                v2 = v2.option("mergeSchema", "true")
            v2.overwrite(F.expr(replace_where) if replace_where is not None else F.lit(True))
            return
        writer = df.write.format("delta").mode("overwrite").option("userMetadata", tag)
        if replace_where is not None:
            writer = writer.option("replaceWhere", replace_where)
        if merge:
            # New source columns are added to the table (schema_policy decided so).
            writer = writer.option("mergeSchema", "true")
        writer.saveAsTable(self.full_name(table))

    def write_beside(
        self, df: DataFrame, *, table: str, load_ids: Collection[str] | None, tag: str
    ) -> None:
        """Write a table beside an object's bronze table (its quarantine), in one
        transaction: the rows of these load ids replaced (None: the whole table),
        new columns added."""
        if load_ids is not None and not load_ids:
            return  # no load's rows to replace
        exists = self.exists(table)
        condition = None if load_ids is None or not exists else _load_ids_condition(load_ids)
        self._write(df, table, replace_where=condition, merge=exists, tag=tag, exists=None)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            self._schema_ready = True

    def _commit(self, table: str, tag: str, schema: StructType, rows: int | None) -> Commit:
        """The commit this writer just made (found by its userMetadata in the table's
        history); `rows` None: the table is exactly what the commit wrote."""
        name = self.full_name(table)
        entry = None
        for limit in (1, 20):  # other writers may have committed since: look further back
            entries = self._history(table, limit)
            entry = next((e for e in entries if e.user_metadata == tag), None)
            if entry is not None:
                break
        if entry is None:  # more than 20 commits since: report the newest
            entry = entries[0]
        metrics = entry.metrics
        # replaceWhere rewrites data files that mix kept and replaced rows: the
        # rows it copied over are not this load's.
        written = int(metrics.get("numOutputRows", 0)) - int(metrics.get("numCopiedRows", 0))
        return Commit(
            table=name,
            version=entry.version,
            written=True,
            operation=entry.operation,
            rows_written=written,
            files_written=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
            rows=written if rows is None else rows,
            schema=schema,
        )

    def _unchanged(self, table: str) -> Commit:
        name = self.full_name(table)
        [last] = self._history(table, 1)
        now = self.spark.table(quote(name))
        return Commit(
            table=name,
            version=last.version,
            written=False,
            operation="none: nothing new",
            rows_written=0,
            files_written=0,
            rows=now.count(),
            schema=now.schema,
        )

    def _empty_message(self, table: str, current: StructType | None) -> str:
        name = self.full_name(table)
        if current is None:
            return f"the source has no rows; table {name} was not created (on_empty: fail)"
        return (
            f"the source has no rows; table {name} keeps its previous version (on_empty: fail; "
            "set on_empty: allow to commit empty loads)"
        )


def _load_ids_condition(load_ids: Collection[str]) -> str:
    # Load ids are hex digests (ingest.source_load_id), quoted anyway.
    return f"{LOAD_COLUMN} IN ({', '.join(repr(i) for i in sorted(load_ids))})"


def history(spark: SparkSession, full_name: str, limit: int = 20) -> list[dict[str, object]]:
    """The table's recent commits, newest first (DESCRIBE HISTORY)."""
    rows = spark.sql(f"DESCRIBE HISTORY {quote(full_name)} LIMIT {int(limit)}").collect()
    return [row.asDict(recursive=True) for row in rows]
