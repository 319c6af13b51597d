"""ParquetTableWriter against real Spark: atomic loads, refusals, recovery."""

from __future__ import annotations

import os
import uuid

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from fanout_dagster.objects import load_objects
from fanout_dagster.packing import run_pack
from fanout_dagster.tables import LoadRejected, ParquetTableWriter, describe_schema_change
from fanout_dagster_tests.helpers import load_dirs, tree_snapshot


@pytest.fixture
def writer(spark, tmp_path) -> ParquetTableWriter:
    return ParquetTableWriter(spark, str(tmp_path / "warehouse" / "bronze"))


def frame(spark, start: int, stop: int, partitions: int = 2):
    return spark.range(start, stop, numPartitions=partitions).select(
        F.col("id"), (F.col("id") * 2).alias("doubled")
    )


def table_ids(spark, writer, table) -> list[int]:
    return sorted(
        r.id for r in spark.read.parquet(str(writer.table_path(table))).select("id").collect()
    )


def staging_is_empty(writer) -> bool:
    return list((writer.warehouse / "_staging").glob("*")) == []


def append(writer, df, table, load_id, fingerprint="fp"):
    """An append of one load, as ingest does it for one source file."""
    return writer.append(
        df.withColumn("_load_id", F.lit(load_id)), table=table, sources={load_id: fingerprint}
    )


# --------------------------------------------------------------------------- schema change


def test_describe_schema_change():
    old = StructType(
        [
            StructField("a", LongType()),
            StructField("b", StringType()),
            StructField("_load_id", StringType()),
        ]
    )
    assert describe_schema_change(old, StructType(old.fields[:2])) is None  # _load_id ignored
    new = StructType([StructField("a", IntegerType()), StructField("c", StringType())])
    assert describe_schema_change(old, new) == "added c; removed b; changed a bigint->int"


def test_a_changed_column_type_is_refused(spark, writer):
    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))
    changed = frame(spark, 0, 10).withColumn("doubled", F.col("doubled").cast("string"))
    with pytest.raises(LoadRejected, match=r"changed doubled bigint->string"):
        writer.overwrite(changed, table="t", load_id="r2")
    assert tree_snapshot(writer.table_path("t")) == snapshot
    # An append load is checked against the table's other loads.
    append(writer, frame(spark, 0, 10), "a", "f1")
    snapshot = tree_snapshot(writer.table_path("a"))
    with pytest.raises(LoadRejected, match=r"changed doubled bigint->string"):
        append(writer, changed, "a", "f2")
    assert tree_snapshot(writer.table_path("a")) == snapshot
    assert staging_is_empty(writer)


def test_a_write_that_would_leave_the_table_empty_is_refused(spark, writer):
    with pytest.raises(LoadRejected, match="no rows"):
        append(writer, frame(spark, 0, 0), "a", "f1")
    assert not writer.table_path("a").exists()

    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))
    with pytest.raises(LoadRejected, match="no rows"):
        writer.overwrite(frame(spark, 0, 0), table="t", load_id="r2")
    assert tree_snapshot(writer.table_path("t")) == snapshot

    # An append whose only load becomes empty would empty the table too.
    append(writer, frame(spark, 0, 10), "a", "f1")
    snapshot = tree_snapshot(writer.table_path("a"))
    with pytest.raises(LoadRejected, match="no rows"):
        append(writer, frame(spark, 0, 0), "a", "f1", "fp2")
    assert tree_snapshot(writer.table_path("a")) == snapshot
    assert staging_is_empty(writer)


def test_an_empty_append_load_replaces_its_folder_and_keeps_the_others(spark, writer):
    append(writer, frame(spark, 0, 10), "a", "f1")
    append(writer, frame(spark, 10, 15), "a", "f2")
    # f2's source now has no rows (as DataFrame, or no DataFrame at all).
    written = append(writer, frame(spark, 0, 0), "a", "f2", "fp2")
    assert (written.rows, written.rows_written) == (10, 0)
    assert table_ids(spark, writer, "a") == list(range(10))
    written = writer.append(None, table="a", sources={"f3": "fp3"})
    assert (written.rows, written.rows_written) == (10, 0)
    # Their folders hold no rows, and the marker.
    assert [p.name for p in (writer.table_path("a") / "_load_id=f3").iterdir()] == ["_SOURCE"]
    rows = spark.read.parquet(str(writer.table_path("a"))).groupBy("_load_id").count().collect()
    assert {r._load_id: r["count"] for r in rows} == {"f1": 10}
    assert writer.appended_sources("a") == {"f1": "fp", "f2": "fp2", "f3": "fp3"}


# --------------------------------------------------------------------------- modes


def test_overwrite_swaps_the_whole_table_and_append_keeps_one_folder_per_load(spark, writer):
    first = writer.overwrite(frame(spark, 0, 10), table="o", load_id="r1")
    assert (first.rows, first.rows_written) == (10, 10) and first.location == str(
        writer.table_path("o")
    )
    assert first.schema.fieldNames() == ["id", "doubled", "_load_id"]
    writer.overwrite(frame(spark, 100, 105), table="o", load_id="r2")
    assert load_dirs(writer.table_path("o")) == ["_load_id=r2"]
    assert table_ids(spark, writer, "o") == list(range(100, 105))
    assert writer.appended_sources("o") == {}

    append(writer, frame(spark, 0, 10), "a", "f1")
    append(writer, frame(spark, 10, 15), "a", "f2")
    again = append(writer, frame(spark, 20, 23), "a", "f1", "fp2")  # f1 again: replaced
    assert (again.rows, again.rows_written) == (8, 3)
    assert load_dirs(writer.table_path("a")) == ["_load_id=f1", "_load_id=f2"]
    assert table_ids(spark, writer, "a") == list(range(10, 15)) + list(range(20, 23))
    assert writer.appended_sources("a") == {"f1": "fp2", "f2": "fp"}
    assert list(writer._trash.glob("*")) == []
    assert staging_is_empty(writer)


def test_one_append_replaces_several_loads_and_appending_nothing_reports_the_table(spark, writer):
    append(writer, frame(spark, 0, 10), "a", "f1")
    two = frame(spark, 100, 110).withColumn(
        "_load_id", F.when(F.col("id") < 105, "f1").otherwise("f2")
    )
    written = writer.append(two, table="a", sources={"f1": "x1", "f2": "x2"})
    assert (written.rows, written.rows_written) == (10, 10)
    assert table_ids(spark, writer, "a") == list(range(100, 110))

    snapshot = tree_snapshot(writer.table_path("a"))
    nothing = writer.append(None, table="a", sources={})
    assert (nothing.rows, nothing.rows_written) == (10, 0)
    assert nothing.schema.fieldNames() == ["id", "doubled", "_load_id"]
    assert tree_snapshot(writer.table_path("a")) == snapshot


def test_rows_of_a_load_the_append_was_not_given_are_refused(spark, writer):
    append(writer, frame(spark, 0, 10), "a", "f1")
    snapshot = tree_snapshot(writer.table_path("a"))
    stray = frame(spark, 0, 6).withColumn("_load_id", F.when(F.col("id") < 3, "f2").otherwise("f9"))
    with pytest.raises(ValueError, match="_load_id=f9"):
        writer.append(stray, table="a", sources={"f2": "fp", "f3": "fp"})
    assert tree_snapshot(writer.table_path("a")) == snapshot
    assert staging_is_empty(writer)


def test_append_refuses_a_table_with_loads_not_written_per_source(spark, writer):
    """Loads without a source marker (overwrite mode, or the older all-files append) would be doubled."""
    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))
    with pytest.raises(
        LoadRejected, match=r"not written per source file \(_load_id=r1\).*move the table folder"
    ):
        append(writer, frame(spark, 0, 10), "t", "f1")
    assert tree_snapshot(writer.table_path("t")) == snapshot


def test_concurrent_loads_into_one_append_table_all_land(spark, writer):
    """The table lock serialises the renames of runs writing the same table."""
    loads = [(f"f{i}", i * 100) for i in range(4)]
    outcomes = list(
        run_pack(
            loads,
            lambda load: append(writer, frame(spark, load[1], load[1] + 5, 1), "c", load[0]),
            4,
        )
    )
    assert all(o.ok for o in outcomes), [o.traceback for o in outcomes if not o.ok]
    assert load_dirs(writer.table_path("c")) == [f"_load_id={load_id}" for load_id, _ in loads]
    assert table_ids(spark, writer, "c") == sorted(i for _, s in loads for i in range(s, s + 5))


def test_a_warehouse_path_with_glob_characters(spark, tmp_path):
    """Spark's readers expand glob characters in paths: the writer reads its folders literally."""
    writer = ParquetTableWriter(spark, str(tmp_path / "wh[1]" / "bronze"))
    append(writer, frame(spark, 0, 10), "a", "f1")
    written = append(writer, frame(spark, 10, 12), "a", "f2")
    assert (written.rows, written.rows_written) == (12, 2)


# --------------------------------------------------------------------------- failure half way


def test_a_write_that_fails_half_way_leaves_the_previous_load(spark, writer):
    writer.overwrite(frame(spark, 0, 40), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))

    @F.udf("long")
    def explode_on_last_partition(value):
        if value == 390:
            raise ValueError("corrupt row 390")
        return value

    # 4 tasks: the first ones write their part files, the last one raises.
    failing = spark.range(0, 400, numPartitions=4).select(
        explode_on_last_partition(F.col("id")).alias("id"), (F.col("id") * 2).alias("doubled")
    )
    with pytest.raises(Exception, match="corrupt row 390"):
        writer.overwrite(failing, table="t", load_id="r2")
    assert tree_snapshot(writer.table_path("t")) == snapshot
    assert table_ids(spark, writer, "t") == list(range(40))
    assert staging_is_empty(writer)

    # The retry, with the bad row fixed, replaces the table completely.
    healed = writer.overwrite(frame(spark, 0, 400, 4), table="t", load_id="r3")
    assert healed.rows == 400
    assert load_dirs(writer.table_path("t")) == ["_load_id=r3"]
    assert table_ids(spark, writer, "t") == list(range(400))


# --------------------------------------------------------------------------- recovery


def interrupt_table_swap(writer, table):
    """What `_swap` leaves when it dies after its first rename: the table in the trash."""
    writer._trash.mkdir(parents=True, exist_ok=True)
    trashed = writer._trash / f"{writer.warehouse.name}.{table}.{uuid.uuid4().hex}"
    os.rename(writer.table_path(table), trashed)
    return trashed


def interrupt_load_swap(writer, table, load_id):
    writer._trash.mkdir(parents=True, exist_ok=True)
    trashed = writer._trash / f"{table}._load_id={load_id}.{uuid.uuid4().hex}"
    os.rename(writer.table_path(table) / f"_load_id={load_id}", trashed)
    return trashed


def test_recover_restores_a_table_whose_swap_was_interrupted(spark, writer):
    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))
    trashed = interrupt_table_swap(writer, "t")
    assert not writer.table_path("t").exists()

    writer._recover("t")
    assert tree_snapshot(writer.table_path("t")) == snapshot
    assert not trashed.exists()
    assert table_ids(spark, writer, "t") == list(range(10))


def test_next_write_recovers_an_interrupted_overwrite_then_checks_its_schema(spark, writer):
    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    snapshot = tree_snapshot(writer.table_path("t"))
    interrupt_table_swap(writer, "t")

    # The restored table still guards its schema...
    with pytest.raises(LoadRejected, match="added extra"):
        writer.overwrite(frame(spark, 0, 5).withColumn("extra", F.lit(1)), table="t", load_id="r2")
    assert tree_snapshot(writer.table_path("t")) == snapshot
    # ...and a good load replaces it as usual.
    writer.overwrite(frame(spark, 50, 55), table="t", load_id="r3")
    assert load_dirs(writer.table_path("t")) == ["_load_id=r3"]
    assert table_ids(spark, writer, "t") == list(range(50, 55))


def test_next_write_recovers_an_interrupted_append_load(spark, writer):
    append(writer, frame(spark, 0, 10), "a", "f1")
    append(writer, frame(spark, 10, 20), "a", "f2")
    f1 = tree_snapshot(writer.table_path("a") / "_load_id=f1")
    interrupt_load_swap(writer, "a", "f1")

    append(writer, frame(spark, 20, 25), "a", "f3")
    assert load_dirs(writer.table_path("a")) == ["_load_id=f1", "_load_id=f2", "_load_id=f3"]
    assert tree_snapshot(writer.table_path("a") / "_load_id=f1") == f1
    assert table_ids(spark, writer, "a") == list(range(25))
    assert list(writer._trash.glob("*")) == []


def test_recover_deletes_old_copies_whose_swap_finished(spark, writer):
    """A swap that dies while deleting the old copy leaves it in the trash with the
    table in place; such a copy is deleted, never put back over a later table."""
    writer.overwrite(frame(spark, 0, 10), table="t", load_id="r1")
    stale = writer._trash / f"{writer.warehouse.name}.t.{uuid.uuid4().hex}"
    (stale / "_load_id=r0").mkdir(parents=True)  # half deleted: only an empty folder left
    writer.overwrite(frame(spark, 10, 20), table="t", load_id="r2")
    assert not stale.exists()

    # The next swap dies between its renames: its copy is the one restored.
    snapshot = tree_snapshot(writer.table_path("t"))
    interrupt_table_swap(writer, "t")
    writer._recover("t")
    assert tree_snapshot(writer.table_path("t")) == snapshot
    assert table_ids(spark, writer, "t") == list(range(10, 20))


def test_recover_drops_a_load_folder_whose_table_was_moved_away(spark, writer, tmp_path):
    append(writer, frame(spark, 0, 10), "a", "f1")
    append(writer, frame(spark, 10, 20), "a", "f2")
    interrupt_load_swap(writer, "a", "f1")
    os.rename(writer.table_path("a"), tmp_path / "a_moved")  # as the schema-change message suggests

    append(writer, frame(spark, 50, 55), "a", "f3")
    assert load_dirs(writer.table_path("a")) == ["_load_id=f3"]
    assert table_ids(spark, writer, "a") == list(range(50, 55))
    assert list(writer._trash.glob("*")) == []


# --------------------------------------------------------------------------- table names


@pytest.mark.parametrize("table", ["_staging", "_trash"])
def test_the_writers_own_folder_names_are_not_table_names(project, table):
    """The warehouse holds the writer's _staging and _trash folders next to the
    tables, so the loader refuses table names that do not start with a letter."""
    config = project.configs / "reserved.yaml"
    config.write_text(
        "code: erp\nname: stores_copy\nsource: {format: csv, path: erp/stores/*.csv, options: {header: true}}\n"
        f"target: {{table: '{table}'}}\n"
    )
    load = load_objects(project.configs)
    assert "erp-stores_copy" not in load.by_key()
    [error] = load.errors
    assert (error.file, error.field) == ("reserved.yaml", "target.table")
    assert "starting with a letter" in error.message
