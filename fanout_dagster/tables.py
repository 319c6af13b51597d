"""Bronze table writers: where a load lands and how it is committed.

A table is made of loads, one value of its `_load_id` column each:

- overwrite: the table is exactly the latest load.
- append: the table keeps one load per source file (ingest.py picks the ids);
  a write replaces the loads it is given and keeps every other one.

Each load is committed all at once or not at all, so a write that fails half
way leaves the table as it was.

- `ParquetTableWriter` (local Spark, and the Databricks emulator): a table is a
  folder `<warehouse>/<table>/_load_id=<id>/`. A write goes to a hidden staging
  folder and is moved into place with directory renames, which are atomic on
  a local filesystem: the whole table for overwrite, each load's folder for
  append. Parquet needs no downloaded jars; Delta would (Maven is not
  reachable from here), which is why the local default is Parquet.
- `DeltaTableWriter` (Databricks): a Delta table in the metastore; the Delta
  transaction log gives the atomicity.

Both refuse a write that would leave the table without rows, and a schema
that differs from the table's current one, before committing anything.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

LOAD_COLUMN = "_load_id"
# Kept in each append load's folder: the fingerprint of the source file the
# load was made from. Spark skips files named '_*', so readers never see it.
SOURCE_MARKER = "_SOURCE"


class LoadRejected(Exception):
    """The write was not committed; the table is as it was."""


@dataclass(frozen=True)
class WrittenLoad:
    location: str
    rows: int  # rows in the table after the write
    rows_written: int  # rows in the loads this write put in place
    schema: StructType  # the table's schema, `_load_id` last


class TableWriter(Protocol):
    def overwrite(self, df: DataFrame, *, table: str, load_id: str) -> WrittenLoad:
        """Make `df` the whole table, as the single load `load_id`."""
        ...

    def append(
        self, df: DataFrame | None, *, table: str, sources: Mapping[str, str]
    ) -> WrittenLoad:
        """Replace the loads named in `sources` (load id -> source fingerprint)
        with the rows `df` holds for them (by its `_load_id` column); keep
        every other load. A load without rows in `df` (or `df` None) ends up
        empty. With no sources this writes nothing and reports the table."""
        ...

    def appended_sources(self, table: str) -> dict[str, str]:
        """load id -> the fingerprint `append` recorded with it, for each load
        whose source need not be read again while its fingerprint holds."""
        ...


def literal_path(path: str) -> str:
    """`path` escaped for Spark's readers, which expand glob characters
    ([]{}*?) in the paths they are given: this one is meant as it is."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", path)


def describe_schema_change(old: StructType, new: StructType) -> str | None:
    """A human description of how `new` differs from `old`, or None if it does not."""
    old_cols = {f.name: f.dataType.simpleString() for f in old.fields if f.name != LOAD_COLUMN}
    new_cols = {f.name: f.dataType.simpleString() for f in new.fields if f.name != LOAD_COLUMN}
    if old_cols == new_cols:
        return None
    parts = []
    added = [c for c in new_cols if c not in old_cols]
    removed = [c for c in old_cols if c not in new_cols]
    changed = [
        f"{c} {old_cols[c]}->{new_cols[c]}"
        for c in new_cols
        if c in old_cols and old_cols[c] != new_cols[c]
    ]
    if added:
        parts.append(f"added {', '.join(added)}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    if changed:
        parts.append(f"changed {', '.join(changed)}")
    return "; ".join(parts)


class ParquetTableWriter:
    """Folder-per-table Parquet with atomic, idempotent writes.

    overwrite: the whole table folder is swapped for the staged one.
    append:    each load's folder is swapped on its own, so a file re-read by
               a later run replaces its rows instead of adding them again.
    """

    def __init__(self, spark: SparkSession, warehouse: str):
        self.spark = spark
        self.warehouse = Path(warehouse)
        # Table names start with a letter (objects.TABLE_RE), so these never clash with a table.
        self._staging = self.warehouse / "_staging"
        self._trash = self.warehouse / "_trash"

    def table_path(self, table: str) -> Path:
        return self.warehouse / table

    def overwrite(self, df: DataFrame, *, table: str, load_id: str) -> WrittenLoad:
        return self._write(
            df.withColumn(LOAD_COLUMN, F.lit(load_id)), table, {load_id: ""}, append=False
        )

    def append(
        self, df: DataFrame | None, *, table: str, sources: Mapping[str, str]
    ) -> WrittenLoad:
        return self._write(df, table, sources, append=True)

    def appended_sources(self, table: str) -> dict[str, str]:
        # Read without the lock: a folder caught mid-swap only makes its file
        # look new, and reading it again is harmless.
        return {
            marker.parent.name.removeprefix(f"{LOAD_COLUMN}="): marker.read_text()
            for marker in self.table_path(table).glob(f"{LOAD_COLUMN}=*/{SOURCE_MARKER}")
        }

    def _write(
        self, df: DataFrame | None, table: str, loads: Mapping[str, str], *, append: bool
    ) -> WrittenLoad:
        target = self.table_path(table)
        staged = self._staging / f"{table}-{uuid.uuid4().hex}"
        try:
            self._stage(df, staged, loads, append)
            staged_data = self._data(staged)
            rows_written = staged_data.count() if staged_data is not None else 0
            with self._table_lock(table):
                self._recover(table)
                if append:
                    self._refuse_loads_without_marker(table)
                current = self._data(target)
                kept = 0
                if append and current is not None:
                    kept = current.where(~F.col(LOAD_COLUMN).isin(list(loads))).count()
                if rows_written + kept == 0:
                    raise LoadRejected(
                        f"the source has no rows; table {table!r} keeps its previous load"
                    )
                schema = (staged_data if staged_data is not None else current).schema
                if staged_data is not None and current is not None:
                    self._check_schema(table, current.schema, schema)
                if append and target.exists():
                    for load_id in loads:
                        folder = f"{LOAD_COLUMN}={load_id}"
                        self._swap(staged / folder, target / folder)
                else:
                    self._swap(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return WrittenLoad(
            str(target), rows=kept + rows_written, rows_written=rows_written, schema=schema
        )

    def _stage(
        self, df: DataFrame | None, staged: Path, loads: Mapping[str, str], markers: bool
    ) -> None:
        """Write `df` to `staged`, one `_load_id=<id>` folder per load."""
        if df is not None and len(loads) == 1:
            # Every row is of this load: write its folder directly, sparing the
            # sort of each task's rows that partitionBy costs.
            [load_id] = loads
            df.drop(LOAD_COLUMN).write.mode("error").parquet(
                str(staged / f"{LOAD_COLUMN}={load_id}")
            )
        elif df is not None:
            df.write.partitionBy(LOAD_COLUMN).mode("error").parquet(str(staged))
        expected = {f"{LOAD_COLUMN}={load_id}" for load_id in loads}
        unexpected = sorted(
            p.name for p in staged.glob(f"{LOAD_COLUMN}=*") if p.name not in expected
        )
        if unexpected:
            # Swapping only the expected folders would silently drop these rows.
            raise ValueError(
                f"the load holds rows for {', '.join(unexpected)}, which it was not given"
            )
        for load_id, fingerprint in loads.items():
            folder = staged / f"{LOAD_COLUMN}={load_id}"
            # A load without rows may have no folder yet; it needs one: it replaces
            # the old one, and its marker records that the source file was read.
            folder.mkdir(parents=True, exist_ok=True)
            if markers:
                (folder / SOURCE_MARKER).write_text(fingerprint)

    def _data(self, path: Path) -> DataFrame | None:
        """The Parquet data under `path`, or None if there is none (Spark finds no schema in no files)."""
        if not any(path.glob(f"{LOAD_COLUMN}=*/*.parquet")):
            return None
        return self.spark.read.parquet(literal_path(str(path)))

    def _refuse_loads_without_marker(self, table: str) -> None:
        folders = self.table_path(table).glob(f"{LOAD_COLUMN}=*")
        unmarked = sorted(p.name for p in folders if not (p / SOURCE_MARKER).exists())
        if unmarked:
            raise LoadRejected(
                f"table {table!r} holds loads that were not written per source file ({', '.join(unmarked)}): "
                "it was written in overwrite mode, or by an older version of this loader. Appending would "
                "load their rows a second time; move the table folder away to reload it in append mode."
            )

    def _check_schema(self, table: str, current: StructType, new: StructType) -> None:
        change = describe_schema_change(current, new)
        if change:
            raise LoadRejected(
                f"schema of table {table!r} changed since the last load ({change}); the table keeps "
                "its previous load. Load into a new table name, or move the old table folder away "
                "to accept the new schema."
            )

    def _swap(self, new: Path, dest: Path) -> None:
        """Move `new` to `dest`, keeping the old `dest` until the move is done.

        Two renames, dest -> trash and new -> dest, then the trashed copy is
        deleted. `_recover` finishes a swap that died half way.
        """
        self._trash.mkdir(parents=True, exist_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = self._trash / f"{dest.parent.name}.{dest.name}.{uuid.uuid4().hex}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)

    def _recover(self, table: str) -> None:
        """Finish the swaps of this table that died half way (runs under the table lock).

        A trashed copy whose destination is missing died between the two
        renames: it is put back. One whose destination exists is an old copy
        whose deletion did not finish: it is deleted, so it can never be
        mistaken for the copy of a later interrupted swap. Since every write
        recovers before it swaps, a destination has at most one copy to put back.
        """
        target = self.table_path(table)
        pending: list[tuple[Path, Path]] = []
        for leftover in self._trash.iterdir() if self._trash.exists() else ():
            origin = leftover.name.rsplit(".", 1)[0]  # "<parent folder>.<folder>", see _swap
            if origin == f"{self.warehouse.name}.{table}":
                pending.insert(0, (leftover, target))  # the table first: its load folders need it
            elif origin.startswith(f"{table}.{LOAD_COLUMN}="):
                pending.append((leftover, target / origin.removeprefix(f"{table}.")))
        for leftover, dest in pending:
            if dest.exists() or not dest.parent.exists():
                # (A load folder whose table is gone: the table was moved away by hand.)
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                os.rename(leftover, dest)

    @contextmanager
    def _table_lock(self, table: str):
        # Two runs of the same object (a sensor run and a backfill, say) must
        # not interleave their renames.
        self.warehouse.mkdir(parents=True, exist_ok=True)
        with open(self.warehouse / f".{table}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class DeltaTableWriter:
    """Delta tables in a Databricks schema (`<schema>.<table>`).

    overwrite replaces the table in one transaction; append replaces the rows
    of the loads it is given (replaceWhere), in one transaction too. Delta
    keeps no per-load fingerprints here, so every append run re-reads all the
    current source files; each still lands once. Table names are validated
    identifiers (objects.TABLE_RE), load ids are made of letters and digits
    (ingest.py), and the schema name is deployment config, so the SQL below
    cannot be injected from an object config.
    """

    def __init__(self, spark: SparkSession, schema: str):
        self.spark = spark
        self.schema = schema

    def overwrite(self, df: DataFrame, *, table: str, load_id: str) -> WrittenLoad:
        return self._write(
            df.withColumn(LOAD_COLUMN, F.lit(load_id)), table, [load_id], append=False
        )

    def append(
        self, df: DataFrame | None, *, table: str, sources: Mapping[str, str]
    ) -> WrittenLoad:
        return self._write(df, table, list(sources), append=True)

    def appended_sources(self, table: str) -> dict[str, str]:
        return {}

    def _write(
        self, df: DataFrame | None, table: str, load_ids: list[str], *, append: bool
    ) -> WrittenLoad:
        name = f"{self.schema}.{table}"
        exists = self.spark.catalog.tableExists(name)
        these = (
            f"{LOAD_COLUMN} IN ({', '.join(repr(i) for i in load_ids)})" if load_ids else "false"
        )
        if df is None or df.isEmpty():
            kept = (
                self.spark.table(name).where(f"NOT ({these})").count() if append and exists else 0
            )
            if kept == 0:
                raise LoadRejected(
                    f"the source has no rows; table {name!r} keeps its previous load"
                )
        if df is not None and exists:
            change = describe_schema_change(self.spark.table(name).schema, df.schema)
            if change:
                raise LoadRejected(
                    f"schema of table {name!r} changed since the last load ({change})"
                )
        if df is not None:
            writer = df.write.format("delta").mode("overwrite")
            if append:
                writer = writer.option("replaceWhere", these)
            writer.saveAsTable(name)
        elif load_ids:  # the files of these loads hold no rows now
            self.spark.sql(f"DELETE FROM {name} WHERE {these}")
        now = self.spark.table(name)
        return WrittenLoad(
            name, rows=now.count(), rows_written=now.where(these).count(), schema=now.schema
        )
