"""Bronze tables: Delta Lake, written by one writer locally and on Databricks.

A bronze table holds one object. Its rows carry audit columns (ingest.py), two
of which make the loads idempotent:

- `_load_id`: which source file a row came from (a hash of the file's path
  relative to the data root);
- `_source_size`, `_source_modified`, `_source_hash`: the file's size and
  modification time when it was read, and the hash of the object's source
  definition (format, path, options, schema). Together they record, durably
  and in the same transaction as the rows, which files the table already holds.

Every write is one Delta transaction, so a write that fails or is killed half
way commits nothing and the previous version stays readable:

- `overwrite`: the table becomes exactly this load.
- `replace_files`: the rows of the files given are replaced by the rows the
  DataFrame holds for them (`replaceWhere` on `_load_id`); every other row is
  kept. A changed file thus replaces exactly its own rows.

Each commit carries `userMetadata` naming the Dagster run and object, so its
version and operation metrics are found in the table's history even when
other writers commit in between.

No Dagster import: the tests and the benchmark's floor use this directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fanout_dagster.core.schema_policy import EvolutionMode, SchemaChangeRejected, conform

LOAD_COLUMN = "_load_id"
# Identifiers that reach SQL: validated table names (objects.py), the schema
# from settings (settings.py), hex load ids. Quoted anyway.
_NAME_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LoadRejected(Exception):
    """The write was not committed; the table is as it was."""


@dataclass(frozen=True)
class FileState:
    """What a table records about one source file it holds."""

    size: int
    modified_ms: int
    source_hash: str


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


def commit_tag(run_id: str, key: str) -> str:
    """The userMetadata of a bronze commit: which run wrote which object."""
    return json.dumps({"dagster_run_id": run_id, "partition_key": key}, sort_keys=True)


class BronzeTableWriter:
    """Writes bronze Delta tables in one schema (`bronze`, or `main.bronze` on Unity Catalog).

    `prepare_table(spark, full_name)` runs before a table is used: the local
    catalog registers a table another Spark process created meanwhile; on
    Databricks it does nothing (Unity Catalog knows every table).
    """

    def __init__(
        self,
        spark: SparkSession,
        schema: str,
        prepare_table: Callable[[SparkSession, str], None] | None = None,
        system_columns: Collection[str] = (),
    ):
        self.spark = spark
        self.system_columns = tuple(system_columns)
        self.schema = schema
        self._prepare = prepare_table
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

    def ingested_files(self, table: str) -> dict[str, FileState]:
        """load id -> the state of the source file whose rows the table holds."""
        if not self.exists(table):
            return {}
        rows = (
            self.spark.table(quote(self.full_name(table)))
            .groupBy(LOAD_COLUMN)
            .agg(
                F.max("_source_size").alias("size"),
                F.max(F.unix_millis("_source_modified")).alias("modified_ms"),
                F.max("_source_hash").alias("source_hash"),
            )
            .collect()
        )
        return {
            row[LOAD_COLUMN]: FileState(int(row.size), int(row.modified_ms), row.source_hash)
            for row in rows
        }

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
            df = self.spark.table(quote(self.full_name(table))).limit(0).drop("_rescued_data")
        conformed, merge = self._conform(df, current, mode, table)
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
            entries = (
                self.spark.sql(f"DESCRIBE HISTORY {quote(name)} LIMIT {limit}")
                .select("version", "operation", "operationMetrics", "userMetadata")
                .collect()
            )
            entry = next((e for e in entries if e.userMetadata == tag), None)
            if entry is not None:
                break
        if entry is None:  # more than 20 commits since: report the newest
            entry = entries[0]
        metrics: Mapping[str, str] = entry.operationMetrics or {}
        # replaceWhere rewrites data files that mix kept and replaced rows: the
        # rows it copied over are not this load's.
        written = int(metrics.get("numOutputRows", 0)) - int(metrics.get("numCopiedRows", 0))
        return Commit(
            table=name,
            version=int(entry.version),
            written=True,
            operation=str(entry.operation),
            rows_written=written,
            files_written=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
            rows=written if rows is None else rows,
            schema=schema,
        )

    def _unchanged(self, table: str) -> Commit:
        name = self.full_name(table)
        [last] = self.spark.sql(f"DESCRIBE HISTORY {quote(name)} LIMIT 1").collect()
        now = self.spark.table(quote(name))
        return Commit(
            table=name,
            version=int(last.version),
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
