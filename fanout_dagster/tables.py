"""Bronze table writers: where a load lands and how it is committed.

A load is committed all at once or not at all, so a write that fails half way
leaves the table holding its previous complete load.

- `ParquetTableWriter` (local Spark, and the Databricks emulator): a table is a
  folder `<warehouse>/<table>/_load_id=<id>/`. The load is written to a hidden
  staging folder and moved into place with directory renames, which are atomic
  on a local filesystem. Parquet needs no downloaded jars; Delta would (Maven
  is not reachable from here), which is why the local default is Parquet.
- `DeltaTableWriter` (Databricks): a Delta table in the metastore; the Delta
  transaction log gives the atomicity.

Both refuse an empty load and a schema that differs from the table's current
one before committing anything.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

LOAD_COLUMN = "_load_id"


class LoadRejected(Exception):
    """The load was not committed; the table still holds its previous load."""


@dataclass(frozen=True)
class WrittenLoad:
    location: str
    rows: int


class TableWriter(Protocol):
    def write(self, df: DataFrame, *, table: str, mode: str, load_id: str) -> WrittenLoad: ...


def describe_schema_change(old: StructType, new: StructType) -> str | None:
    """A human description of how `new` differs from `old`, or None if it does not."""
    old_cols = {f.name: f.dataType.simpleString() for f in old.fields if f.name != LOAD_COLUMN}
    new_cols = {f.name: f.dataType.simpleString() for f in new.fields if f.name != LOAD_COLUMN}
    if old_cols == new_cols:
        return None
    parts = []
    added = [c for c in new_cols if c not in old_cols]
    removed = [c for c in old_cols if c not in new_cols]
    changed = [f"{c} {old_cols[c]}->{new_cols[c]}" for c in new_cols if c in old_cols and old_cols[c] != new_cols[c]]
    if added:
        parts.append(f"added {', '.join(added)}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    if changed:
        parts.append(f"changed {', '.join(changed)}")
    return "; ".join(parts)


class ParquetTableWriter:
    """Folder-per-table Parquet with atomic, idempotent loads.

    overwrite: the table is exactly the latest load; the whole folder is swapped.
    append:    the table keeps one folder per load id; re-writing a load id
               replaces only that folder, so a re-run never duplicates rows.
    """

    def __init__(self, spark: SparkSession, warehouse: str):
        self.spark = spark
        self.warehouse = Path(warehouse)
        self._staging = self.warehouse / "_staging"
        self._trash = self.warehouse / "_trash"

    def table_path(self, table: str) -> Path:
        return self.warehouse / table

    def write(self, df: DataFrame, *, table: str, mode: str, load_id: str) -> WrittenLoad:
        target = self.table_path(table)
        staged_table = self._staging / f"{table}-{uuid.uuid4().hex}"
        staged_load = staged_table / f"{LOAD_COLUMN}={load_id}"
        try:
            df.drop(LOAD_COLUMN).write.mode("error").parquet(str(staged_load))
            staged = self.spark.read.parquet(str(staged_load))
            rows = staged.count()
            if rows == 0:
                raise LoadRejected(f"the source has no rows; table {table!r} keeps its previous load")
            with self._table_lock(table):
                self._recover(table)
                self._check_schema(table, staged.schema)
                if mode == "append" and target.exists():
                    self._swap(staged_load, target / staged_load.name)
                else:
                    self._swap(staged_table, target)
        finally:
            shutil.rmtree(staged_table, ignore_errors=True)
        return WrittenLoad(location=str(target), rows=rows)

    def _check_schema(self, table: str, new_schema: StructType) -> None:
        current = self.current_schema(table)
        if current is None:
            return
        change = describe_schema_change(current, new_schema)
        if change:
            raise LoadRejected(
                f"schema of table {table!r} changed since the last load ({change}); the table keeps "
                "its previous load. Load into a new table name, or move the old table folder away "
                "to accept the new schema."
            )

    def current_schema(self, table: str) -> StructType | None:
        path = self.table_path(table)
        if not any(path.glob(f"{LOAD_COLUMN}=*")):
            return None
        return self.spark.read.parquet(str(path)).schema

    def _swap(self, new: Path, dest: Path) -> None:
        """Move `new` to `dest`, keeping the old `dest` until the move is done.

        Two renames: dest -> trash, new -> dest. If the process dies between
        them, `_recover` puts the trashed copy back on the next write.
        """
        self._trash.mkdir(parents=True, exist_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = self._trash / f"{dest.parent.name}.{dest.name}.{uuid.uuid4().hex}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)

    def _recover(self, table: str) -> None:
        """Restore what a swap interrupted after its first rename left in the trash."""
        if not self._trash.exists():
            return
        target = self.table_path(table)
        whole_table = sorted(self._trash.glob(f"{self.warehouse.name}.{table}.*"), key=os.path.getmtime)
        if whole_table and not target.exists():
            os.rename(whole_table[-1], target)
        for leftover in sorted(self._trash.glob(f"{table}.{LOAD_COLUMN}=*"), key=os.path.getmtime):
            load_dir = target / leftover.name.rsplit(".", 1)[0].removeprefix(f"{table}.")
            if not load_dir.exists():
                os.rename(leftover, load_dir)

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

    overwrite replaces the table in one transaction; append replaces only the
    rows of the same load id (replaceWhere), in one transaction too. Table
    names are validated identifiers (objects.TABLE_RE), and the schema name is
    deployment config, so the interpolated SQL below cannot be injected from an
    object config.
    """

    def __init__(self, spark: SparkSession, schema: str):
        self.spark = spark
        self.schema = schema

    def write(self, df: DataFrame, *, table: str, mode: str, load_id: str) -> WrittenLoad:
        name = f"{self.schema}.{table}"
        if df.isEmpty():
            raise LoadRejected(f"the source has no rows; table {name!r} keeps its previous load")
        if self.spark.catalog.tableExists(name):
            change = describe_schema_change(self.spark.table(name).schema, df.schema)
            if change:
                raise LoadRejected(f"schema of table {name!r} changed since the last load ({change})")
        writer = df.write.format("delta")
        if mode == "append":
            writer = writer.mode("overwrite").option("replaceWhere", f"{LOAD_COLUMN} = '{load_id}'")
        else:
            writer = writer.mode("overwrite")
        writer.saveAsTable(name)
        rows = self.spark.table(name).where(f"{LOAD_COLUMN} = '{load_id}'").count()
        return WrittenLoad(location=name, rows=rows)
