"""ingest.py against real Spark: source resolution, audit columns, re-runs,
and the loads that must be refused while the previous load stays in place."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from fanout_dagster.ingest import (
    AUDIT_COLUMNS,
    SourceError,
    ingest_object,
    resolve_source_files,
    source_load_id,
)
from fanout_dagster.objects import SourceSpec
from fanout_dagster.tables import LoadRejected, ParquetTableWriter
from fanout_dagster_tests.helpers import (
    expected_source_files,
    load_dirs,
    local_path,
    sample_object,
    spark_source_columns,
    spark_source_count,
    spark_source_counts,
    tree_snapshot,
)


@pytest.fixture
def writer(spark, project) -> ParquetTableWriter:
    return ParquetTableWriter(spark, str(project.warehouse))


def ingest(spark, project, writer, obj, run_id):
    return ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id=run_id)


def read_table(spark, writer, table):
    return spark.read.parquet(str(writer.table_path(table)))


# --------------------------------------------------------------------------- resolve_source_files


def test_resolve_glob_matches_every_file_of_a_multi_file_object(project):
    orders = sample_object(project.configs, "erp-orders")
    files = resolve_source_files(str(project.data), orders.source)
    assert files == expected_source_files(project.data, orders)
    assert len(files) == len(list((project.data / "erp" / "orders").glob("orders_*.csv"))) > 1

    events = sample_object(project.configs, "crm-web_events")
    assert resolve_source_files(str(project.data), events.source) == expected_source_files(
        project.data, events
    )


def test_resolve_directory_and_recursive_glob(project):
    orders_dir = project.data / "erp" / "orders"
    expected = sorted(str(p.resolve()) for p in orders_dir.glob("*.csv"))
    # A folder: its files, minus the ones Spark would skip (_SUCCESS, .crc ...).
    (orders_dir / "_SUCCESS").write_text("")
    (orders_dir / ".orders_2026-01.csv.crc").write_text("x")
    (orders_dir / "_temporary").mkdir()
    (orders_dir / "_temporary" / "part-0.csv").write_text("x")
    assert resolve_source_files(str(project.data), SourceSpec("csv", "erp/orders")) == expected
    # A recursive glob. Configs may not say '**' any more (objects.source_path_problem),
    # so the spec is built without validation; the resolver still handles it.
    recursive = SourceSpec.model_construct(format="csv", path="erp/**/orders_*.csv")
    assert resolve_source_files(str(project.data), recursive) == expected
    # The root may be given as a file:// URI.
    assert (
        resolve_source_files(f"file://{project.data}", SourceSpec("csv", "erp/orders/*.csv"))
        == expected
    )


def test_resolve_lists_each_file_once(project):
    payments = sorted(str(p.resolve()) for p in (project.data / "erp" / "payments").glob("*.csv"))
    # '**' matches the folder and each of its files (unvalidated spec: configs refuse '**').
    everything = SourceSpec.model_construct(format="csv", path="erp/payments/**")
    assert resolve_source_files(str(project.data), everything) == payments
    # A symlink to a folder inside the root reaches the same files again.
    (project.data / "erp" / "pay_alias").symlink_to(project.data / "erp" / "payments")
    assert resolve_source_files(str(project.data), SourceSpec("csv", "erp/pay*/*.csv")) == payments


def test_resolve_refuses_a_symlink_to_a_file_outside_the_data_root(project, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,2\n")
    os.symlink(outside, project.data / "erp" / "stores" / "zz_link.csv")
    with pytest.raises(SourceError, match="outside the data root") as excinfo:
        resolve_source_files(str(project.data), SourceSpec("csv", "erp/stores/*.csv"))
    assert "zz_link.csv" in str(excinfo.value)


def test_resolve_refuses_a_symlinked_folder_outside_the_data_root(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.csv").write_text("a,b\n1,2\n")
    os.symlink(outside, project.data / "erp" / "linked")
    with pytest.raises(SourceError, match="outside the data root"):
        resolve_source_files(str(project.data), SourceSpec("csv", "erp/linked/*.csv"))
    with pytest.raises(SourceError, match="outside the data root"):
        resolve_source_files(str(project.data), SourceSpec("csv", "erp/linked"))


def test_a_symlink_inside_the_data_root_is_allowed(project):
    (project.data / "erp" / "alias").symlink_to(project.data / "erp" / "stores")
    files = resolve_source_files(str(project.data), SourceSpec("csv", "erp/alias/*.csv"))
    assert files == [str((project.data / "erp" / "stores" / "stores.csv").resolve())]


def test_resolve_refuses_a_symlink_outside_the_root_inside_a_source_folder(project, tmp_path):
    outside = tmp_path / "secret.csv"
    outside.write_text("a,b\n1,2\n")
    os.symlink(outside, project.data / "erp" / "stores" / "zz_link.csv")
    with pytest.raises(SourceError, match="outside the data root"):
        resolve_source_files(str(project.data), SourceSpec("csv", "erp/stores"))


def test_resolve_with_glob_characters_in_the_data_root_path(tmp_path):
    root = tmp_path / "data[v1]"
    (root / "erp").mkdir(parents=True)
    (root / "erp" / "x.csv").write_text("a\n1\n")
    assert resolve_source_files(str(root), SourceSpec("csv", "erp/*.csv")) == [
        str((root / "erp" / "x.csv").resolve())
    ]


def test_resolve_without_matching_files_is_a_clear_error(project):
    with pytest.raises(SourceError) as excinfo:
        resolve_source_files(str(project.data), SourceSpec("csv", "erp/nothing_here/*.csv"))
    message = str(excinfo.value)
    assert "no source files match" in message
    assert "erp/nothing_here/*.csv" in message and str(project.data.resolve()) in message


# --------------------------------------------------------------------------- ingest_object


@pytest.mark.parametrize("key", ["erp-orders", "crm-web_events"])
def test_ingest_writes_source_rows_with_audit_columns(spark, project, writer, key):
    obj = sample_object(project.configs, key)
    files = expected_source_files(project.data, obj)
    source_per_file = spark_source_counts(spark, obj, files)
    source_count = sum(source_per_file.values())
    source_columns = spark_source_columns(spark, obj, files)

    before = time.time()
    result = ingest(spark, project, writer, obj, run_id="run-0001-aaaa")
    after = time.time()

    table = read_table(spark, writer, obj.target.table)
    assert result.rows == source_count == table.count()
    assert result.source_files == len(files)
    assert result.table == obj.target.table
    assert result.location == str(writer.table_path(obj.target.table))
    # Data columns as in the source, then the audit columns.
    assert table.columns == source_columns + list(AUDIT_COLUMNS)
    assert [name for name, _ in result.columns] == table.columns

    audit = table.agg(
        F.collect_set("_dagster_run_id").alias("run_ids"),
        F.collect_set("_partition_key").alias("keys"),
        F.collect_set("_load_id").alias("load_ids"),
        F.collect_set(F.col("_ingested_at").cast("double")).alias("ingested"),
        F.collect_set("_source_file").alias("files"),
        F.count(F.when(F.col("_source_file").isNull(), 1)).alias("no_file"),
    ).first()
    assert audit.run_ids == ["run-0001-aaaa"]
    assert audit.keys == [obj.key]
    assert sorted(audit.load_ids) == sorted(result.load_ids)  # append: one per file
    assert len(audit.ingested) == 1 and before - 1 <= audit.ingested[0] <= after + 1
    assert audit.no_file == 0
    assert sorted(local_path(f) for f in audit.files) == files

    # Each file's rows are tagged with that file.
    per_file = {
        local_path(row["_source_file"]): row["count"]
        for row in table.groupBy("_source_file").count().collect()
    }
    assert per_file == source_per_file


def test_overwrite_rerun_replaces_the_table(spark, project, writer):
    obj = sample_object(project.configs, "erp-orders")
    assert obj.target.mode == "overwrite"
    source_count = spark_source_count(spark, obj, expected_source_files(project.data, obj))
    first = ingest(spark, project, writer, obj, run_id="run-1")
    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert first.load_ids != second.load_ids
    table = read_table(spark, writer, obj.target.table)
    assert table.count() == source_count
    assert load_dirs(writer.table_path(obj.target.table)) == [f"_load_id={second.load_ids[0]}"]
    assert {r._dagster_run_id for r in table.select("_dagster_run_id").distinct().collect()} == {
        "run-2"
    }


def table_dir(writer, obj):
    return writer.table_path(obj.target.table)


def file_load_id(project, path) -> str:
    return source_load_id(Path(path).resolve().relative_to(project.data.resolve()).as_posix())


def load_dir(writer, obj, load_id):
    return table_dir(writer, obj) / f"_load_id={load_id}"


def rows_per_file(spark, writer, obj) -> dict[str, int]:
    table = read_table(spark, writer, obj.target.table)
    return {
        local_path(r["_source_file"]): r["count"]
        for r in table.groupBy("_source_file").count().collect()
    }


def test_append_keeps_one_load_per_source_file(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    assert obj.target.mode == "append"
    files = expected_source_files(project.data, obj)
    result = ingest(spark, project, writer, obj, run_id="run-1")

    ids = [file_load_id(project, f) for f in files]
    assert sorted(result.load_ids) == sorted(ids) and len(set(ids)) == len(files) > 1
    assert load_dirs(table_dir(writer, obj)) == sorted(f"_load_id={i}" for i in ids)
    table = read_table(spark, writer, obj.target.table)
    # Each file's rows carry that file's load id.
    by_file = {
        local_path(r._source_file): r._load_id
        for r in table.select("_source_file", "_load_id").distinct().collect()
    }
    assert by_file == dict(zip(files, ids, strict=True))
    assert rows_per_file(spark, writer, obj) == spark_source_counts(spark, obj, files)
    assert (
        result.rows == result.rows_written == table.count() == spark_source_count(spark, obj, files)
    )
    assert result.source_files == result.files_written == len(files)
    assert [name for name, _ in result.columns] == table.columns
    # The hidden marker records what each load was made from.
    stat = os.stat(files[0])
    marker = (load_dir(writer, obj, ids[0]) / "_SOURCE").read_text()
    assert marker == f"size={stat.st_size} mtime_ns={stat.st_mtime_ns} config={obj.config_hash}"


def test_append_rerun_with_unchanged_files_is_a_no_op(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(table_dir(writer, obj))
    second = ingest(spark, project, writer, obj, run_id="run-2")

    assert (second.rows_written, second.files_written, second.load_ids) == (0, 0, ())
    assert second.rows == first.rows == read_table(spark, writer, obj.target.table).count()
    assert second.source_files == first.source_files
    assert second.columns == first.columns
    assert tree_snapshot(table_dir(writer, obj)) == snapshot
    runs = (
        read_table(spark, writer, obj.target.table).select("_dagster_run_id").distinct().collect()
    )
    assert [r._dagster_run_id for r in runs] == ["run-1"]


def add_payments_file(project):
    folder = project.data / "erp" / "payments"
    june = (folder / "payments_2026-06.csv").read_text().splitlines()
    # A new month: the June rows with new ids.
    rows = [june[0]] + [f"9{line}" for line in june[1:]]
    new = folder / "payments_2026-07.csv"
    new.write_text("\n".join(rows) + "\n")
    return new


def test_append_with_a_new_source_file_writes_only_its_load(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    before = tree_snapshot(table_dir(writer, obj))

    new = add_payments_file(project)
    files = expected_source_files(project.data, obj)
    second = ingest(spark, project, writer, obj, run_id="run-2")

    new_id = file_load_id(project, new)
    assert second.load_ids == (new_id,) and second.files_written == 1
    assert second.source_files == len(files) == first.source_files + 1
    new_rows = spark_source_count(spark, obj, [str(new.resolve())])
    assert second.rows_written == new_rows
    assert (
        second.rows == first.rows + new_rows == read_table(spark, writer, obj.target.table).count()
    )
    # The earlier loads are untouched; the new one is added beside them.
    after = tree_snapshot(table_dir(writer, obj))
    assert {k: v for k, v in after.items() if not k.startswith(f"_load_id={new_id}/")} == before
    assert load_dirs(table_dir(writer, obj)) == sorted(
        f"_load_id={file_load_id(project, f)}" for f in files
    )


def test_append_with_a_new_source_file_keeps_each_source_row_once(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    ingest(spark, project, writer, obj, run_id="run-1")
    add_payments_file(project)
    ingest(spark, project, writer, obj, run_id="run-2")
    files = expected_source_files(project.data, obj)
    assert rows_per_file(spark, writer, obj) == spark_source_counts(spark, obj, files)


def test_append_with_a_changed_file_replaces_its_load(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    ingest(spark, project, writer, obj, run_id="run-1")
    changed = project.data / "erp" / "payments" / "payments_2026-03.csv"
    header, *rows = changed.read_text().splitlines()
    changed.write_text(
        "\n".join([header] + rows[: len(rows) // 2]) + "\n"
    )  # a corrected, shorter extract

    result = ingest(spark, project, writer, obj, run_id="run-2")
    files = expected_source_files(project.data, obj)
    assert result.load_ids == (file_load_id(project, changed),)
    assert result.rows_written == len(rows) // 2
    # The file's latest version wins, and only its rows were rewritten.
    assert rows_per_file(spark, writer, obj) == spark_source_counts(spark, obj, files)
    table = read_table(spark, writer, obj.target.table)
    runs = {
        local_path(r._source_file): r._dagster_run_id
        for r in table.select("_source_file", "_dagster_run_id").distinct().collect()
    }
    assert runs == {f: "run-2" if f == str(changed.resolve()) else "run-1" for f in files}


def test_append_keeps_the_rows_of_a_file_that_left_the_source(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    gone = project.data / "erp" / "payments" / "payments_2026-01.csv"
    gone.unlink()
    add_payments_file(project)
    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert second.files_written == 1 and second.source_files == first.source_files
    assert file_load_id(project, gone) in {
        d.removeprefix("_load_id=") for d in load_dirs(table_dir(writer, obj))
    }
    assert (
        second.rows
        == first.rows + second.rows_written
        == read_table(spark, writer, obj.target.table).count()
    )


def test_append_rereads_every_file_when_the_object_config_changes(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    # Another reader option: every load was made with the old config.
    options = {**obj.source.options, "mode": "PERMISSIVE"}
    changed = obj.model_copy(update={"source": obj.source.model_copy(update={"options": options})})
    assert changed.config_hash != obj.config_hash
    second = ingest(spark, project, writer, changed, run_id="run-2")
    assert sorted(second.load_ids) == sorted(first.load_ids)
    assert (
        second.rows
        == second.rows_written
        == first.rows
        == read_table(spark, writer, obj.target.table).count()
    )


def test_append_with_a_new_file_without_rows(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    folder = project.data / "erp" / "payments"
    empty = folder / "payments_2026-07.csv"
    empty.write_text((folder / "payments_2026-06.csv").read_text().splitlines()[0] + "\n")

    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert (second.files_written, second.rows_written, second.rows) == (1, 0, first.rows)
    # Its load is recorded (no rows, a marker), so the next run does not read it again.
    assert (load_dir(writer, obj, file_load_id(project, empty)) / "_SOURCE").exists()
    assert str(empty.resolve()) not in rows_per_file(spark, writer, obj)
    assert ingest(spark, project, writer, obj, run_id="run-3").files_written == 0


def test_append_of_a_source_without_rows_is_refused(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    for source in (project.data / "erp" / "payments").glob("*.csv"):
        source.write_text(source.read_text().splitlines()[0] + "\n")
    with pytest.raises(LoadRejected, match="no rows") as excinfo:
        ingest(spark, project, writer, obj, run_id="run-1")
    assert "erp_payments" in str(excinfo.value)
    assert not table_dir(writer, obj).exists()
    assert list((writer.warehouse / "_staging").glob("*")) == []


def test_append_refuses_a_schema_change_in_a_new_file(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(table_dir(writer, obj))
    new = add_payments_file(project)
    header, *rows = new.read_text().splitlines()
    new.write_text("\n".join([header + ",channel"] + [row + ",web" for row in rows]) + "\n")

    with pytest.raises(LoadRejected, match="added channel"):
        ingest(spark, project, writer, obj, run_id="run-2")
    assert_unchanged(spark, writer, obj.target.table, snapshot, first.rows)


def test_append_file_names_that_need_escaping(spark, project, writer):
    """Spark names each row's file by URI ('a%20b'); the load id it computes from
    it must be the one this side computed from the path."""
    obj = sample_object(project.configs, "erp-payments")
    folder = project.data / "erp" / "payments"
    june = folder / "payments_2026-06.csv"
    for name in (
        "payments_2026+07 100%.csv",
        "payments_day=2026-07-02.csv",
        "payments_[é]{a,b}.csv",
    ):
        shutil.copy(june, folder / name)
    files = expected_source_files(project.data, obj)
    result = ingest(spark, project, writer, obj, run_id="run-1")
    assert result.files_written == len(files) == 9
    assert load_dirs(table_dir(writer, obj)) == sorted(
        f"_load_id={file_load_id(project, f)}" for f in files
    )
    assert rows_per_file(spark, writer, obj) == spark_source_counts(spark, obj, files)


def test_ingest_with_glob_characters_in_the_data_root(spark, project, tmp_path):
    root = tmp_path / "data[v1]{x}"
    shutil.copytree(project.data, root)
    writer = ParquetTableWriter(spark, str(tmp_path / "warehouse"))
    for key in ("erp-payments", "erp-orders"):
        obj = sample_object(project.configs, key)
        result = ingest_object(spark, obj, data_root=str(root), writer=writer, run_id="run-1")
        assert result.rows == spark_source_count(
            spark, obj, expected_source_files(project.data, obj)
        )


def test_every_resolved_file_is_loaded(spark, project, writer):
    stores = project.data / "erp" / "stores"
    shutil.copy(stores / "stores.csv", stores / "_late_extract.csv")
    obj = sample_object(project.configs, "erp-stores")
    resolved = resolve_source_files(str(project.data), obj.source)
    result = ingest(spark, project, writer, obj, run_id="run-1")
    table = read_table(spark, writer, obj.target.table)
    loaded = sorted(
        local_path(r._source_file) for r in table.select("_source_file").distinct().collect()
    )
    assert loaded == resolved
    assert result.source_files == len(loaded)


# --------------------------------------------------------------------------- refused loads


def assert_unchanged(spark, writer, table, snapshot, count):
    assert tree_snapshot(writer.table_path(table)) == snapshot
    assert read_table(spark, writer, table).count() == count
    assert list((writer.warehouse / "_staging").glob("*")) == []


def test_header_only_csv_is_refused_and_the_previous_load_stays(spark, project, writer):
    obj = sample_object(project.configs, "erp-stores")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(writer.table_path(obj.target.table))
    source = project.data / "erp" / "stores" / "stores.csv"
    source.write_text(source.read_text().splitlines()[0] + "\n")

    with pytest.raises(LoadRejected, match="no rows") as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    assert "erp_stores" in str(excinfo.value)
    assert_unchanged(spark, writer, obj.target.table, snapshot, first.rows)


def test_empty_jsonl_is_refused_and_the_previous_load_stays(spark, project, writer):
    obj = sample_object(project.configs, "crm-campaigns")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(writer.table_path(obj.target.table))
    (project.data / "crm" / "campaigns" / "campaigns.jsonl").write_text("")

    with pytest.raises(SourceError, match="no columns") as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    assert "crm/campaigns/*.jsonl" in str(excinfo.value) and "empty" in str(excinfo.value)
    assert_unchanged(spark, writer, obj.target.table, snapshot, first.rows)


def test_a_changed_schema_is_refused_naming_the_column(spark, project, writer):
    obj = sample_object(project.configs, "erp-stores")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(writer.table_path(obj.target.table))
    source = project.data / "erp" / "stores" / "stores.csv"
    header, *rows = source.read_text().splitlines()
    source.write_text("\n".join([header + ",region"] + [row + ",emea" for row in rows]) + "\n")

    with pytest.raises(LoadRejected) as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    message = str(excinfo.value)
    assert "schema" in message and "added region" in message and "erp_stores" in message
    assert_unchanged(spark, writer, obj.target.table, snapshot, first.rows)


def test_a_read_that_fails_half_way_keeps_the_previous_load_and_a_retry_heals(
    spark, project, writer
):
    sample = sample_object(project.configs, "erp-orders")
    options = {**sample.source.options, "mode": "FAILFAST"}
    obj = sample.model_copy(
        update={"source": sample.source.model_copy(update={"options": options})}
    )
    files = expected_source_files(project.data, obj)
    first = ingest(spark, project, writer, obj, run_id="run-1")
    snapshot = tree_snapshot(writer.table_path(obj.target.table))

    # One of the later files gets a malformed row (too many fields).
    victim = project.data / "erp" / "orders" / "orders_2026-05.csv"
    good = victim.read_text()
    victim.write_text(good + "999,SO-BROKEN,1,2,3,4,5,6,7,8,9,10,11,12,13,14\n")
    with pytest.raises(Exception) as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    assert "malformed" in str(excinfo.value).lower() or "FAILFAST" in str(excinfo.value)
    assert_unchanged(spark, writer, obj.target.table, snapshot, first.rows)

    victim.write_text(good)
    healed = ingest(spark, project, writer, obj, run_id="run-3")
    table = read_table(spark, writer, obj.target.table)
    assert healed.rows == table.count() == spark_source_count(spark, obj, files)
    assert load_dirs(writer.table_path(obj.target.table)) == [f"_load_id={healed.load_ids[0]}"]


def test_append_from_a_root_that_spark_lists(spark, project, writer, monkeypatch):
    """Remote roots (dbfs:/, abfss://) are listed by Spark: no fingerprints to
    compare, so every run re-reads every file, and each still lands once."""
    import fanout_dagster.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "is_local_root", lambda root: False)
    obj = sample_object(project.configs, "erp-payments")
    root = f"file://{project.data.resolve()}"
    first = ingest_object(spark, obj, data_root=root, writer=writer, run_id="run-1")
    add_payments_file(project)
    second = ingest_object(spark, obj, data_root=root, writer=writer, run_id="run-2")

    files = expected_source_files(project.data, obj)
    assert second.files_written == second.source_files == len(files) == first.files_written + 1
    assert sorted(second.load_ids) == sorted(file_load_id(project, f) for f in files)
    assert rows_per_file(spark, writer, obj) == spark_source_counts(spark, obj, files)
