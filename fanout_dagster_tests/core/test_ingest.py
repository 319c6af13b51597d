"""ingest.py against real Spark and real Delta tables: listing sources, audit
columns, overwrite and exactly-once append, switches between them, empty
sources, and the loads that must be refused while the previous version stays."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from fanout_dagster.core.ingest import (
    AUDIT_COLUMNS,
    SourceError,
    ingest_object,
    list_source_files,
    source_load_id,
)
from fanout_dagster.core.objects import SourceSpec
from fanout_dagster.core.tables import LoadRejected, commit_tag
from fanout_dagster_tests.helpers import (
    child_env,
    expected_source_files,
    local_path,
    sample_object,
    spark_source_columns,
    spark_source_count,
    spark_source_counts,
)


@pytest.fixture
def writer(spark, project):
    return project.bronze_tables().writer(spark)


def ingest(spark, project, writer, obj, run_id, data_root=None):
    root = data_root or str(project.data)
    return ingest_object(spark, obj, data_root=root, writer=writer, run_id=run_id)


def read_table(spark, project, obj):
    return spark.table(project.table(obj.target.table))


def version_of(spark, project, obj) -> int:
    return spark.sql(f"DESCRIBE HISTORY {project.table(obj.target.table)} LIMIT 1").first().version


def source_files(project, obj) -> list[str]:
    return expected_source_files(project.data, obj)


def rows_per_file(spark, project, obj) -> dict[str, int]:
    table = read_table(spark, project, obj)
    return {
        local_path(r["_source_file"]): r["count"]
        for r in table.groupBy("_source_file").count().collect()
    }


def file_load_id(project, path) -> str:
    return source_load_id(Path(path).resolve().relative_to(project.data.resolve()).as_posix())


def with_source(obj, **changes):
    return obj.model_copy(update={"source": obj.source.model_copy(update=changes)})


def with_target(obj, **changes):
    return obj.model_copy(update={"target": obj.target.model_copy(update=changes)})


def add_payments_file(project, name="payments_2026-07.csv"):
    folder = project.data / "erp" / "payments"
    june = (folder / "payments_2026-06.csv").read_text().splitlines()
    # A new month: the June rows with new ids.
    rows = [june[0]] + [f"9{line}" for line in june[1:]]
    new = folder / name
    new.write_text("\n".join(rows) + "\n")
    return new


# --------------------------------------------------------------------------- listing


def test_list_matches_every_file_of_a_multi_file_object(spark, project):
    orders = sample_object(project.configs, "erp-orders")
    files = list_source_files(spark, str(project.data), orders.source)
    assert [f.path for f in files] == source_files(project, orders)
    assert len(files) == len(list((project.data / "erp" / "orders").glob("orders_*.csv"))) > 1
    for f in files:
        stat = Path(f.path).stat()
        assert (f.size, f.modified_ms) == (stat.st_size, stat.st_mtime_ns // 1_000_000)
        assert f.relative == Path(f.path).relative_to(project.data.resolve()).as_posix()


def test_list_a_directory_reads_every_file_below_it(spark, tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    for name in ("a/x.csv", "a/b/y.csv", "a/_SUCCESS", "a/.hidden.csv"):
        (root / name).write_text("id\n1\n")
    files = list_source_files(spark, str(root), SourceSpec("csv", "a"))
    assert [f.relative for f in files] == ["a/b/y.csv", "a/x.csv"]


def test_list_refuses_symlinks_leading_outside_the_data_root(spark, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "erp").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n1\n")
    (root / "erp" / "link.csv").symlink_to(outside / "secret.csv")
    with pytest.raises(SourceError, match="leads outside the data root"):
        list_source_files(spark, str(root), SourceSpec("csv", "erp/*.csv"))
    (root / "erp" / "link.csv").unlink()
    (root / "erp" / "dir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SourceError, match="leads outside the data root"):
        list_source_files(spark, str(root), SourceSpec("csv", "erp/dir"))


def test_a_symlink_inside_the_root_is_read_once(spark, tmp_path):
    root = tmp_path / "root"
    (root / "erp").mkdir(parents=True)
    (root / "erp" / "x.csv").write_text("a\n1\n")
    (root / "erp" / "y.csv").symlink_to(root / "erp" / "x.csv")
    files = list_source_files(spark, str(root), SourceSpec("csv", "erp/*.csv"))
    assert [f.relative for f in files] == ["erp/x.csv"]


def test_list_without_matching_files_is_a_clear_error(spark, project):
    with pytest.raises(SourceError) as excinfo:
        list_source_files(spark, str(project.data), SourceSpec("csv", "erp/nothing_here/*.csv"))
    assert "no source files match 'erp/nothing_here/*.csv'" in str(excinfo.value)


def test_a_uri_root_is_listed_by_spark_with_the_same_files(spark, project):
    obj = sample_object(project.configs, "erp-payments")
    local = list_source_files(spark, str(project.data), obj.source)
    remote = list_source_files(spark, project.data.resolve().as_uri(), obj.source)
    assert [f.relative for f in remote] == [f.relative for f in local]
    assert [(f.size, f.modified_ms) for f in remote] == [(f.size, f.modified_ms) for f in local]


# --------------------------------------------------------------------------- overwrite


@pytest.mark.parametrize("key", ["erp-orders", "crm-web_events"])
def test_ingest_writes_source_rows_with_audit_columns(spark, project, writer, key):
    obj = sample_object(project.configs, key)
    files = source_files(project, obj)
    source_per_file = spark_source_counts(spark, obj, files)

    before = time.time()
    result = ingest(spark, project, writer, obj, run_id="run-0001-aaaa")
    after = time.time()

    table = read_table(spark, project, obj)
    assert result.table == project.table(obj.target.table)
    assert result.rows == sum(source_per_file.values()) == table.count() == result.rows_written
    assert (result.version, result.written) == (0, True)
    assert result.source_files == result.files_read == len(files)
    # Data columns as in the source, then the audit columns.
    assert table.columns == spark_source_columns(spark, obj, files) + list(AUDIT_COLUMNS)
    assert [name for name, _ in result.columns] == table.columns

    audit = table.agg(
        F.collect_set("_dagster_run_id").alias("run_ids"),
        F.collect_set("_partition_key").alias("keys"),
        F.collect_set("_source_hash").alias("hashes"),
        F.collect_set(F.col("_ingested_at").cast("double")).alias("ingested"),
    ).first()
    assert audit.run_ids == ["run-0001-aaaa"] and audit.keys == [obj.key]
    assert audit.hashes == [obj.source_hash]
    assert len(audit.ingested) == 1 and before - 1 <= audit.ingested[0] <= after + 1
    # Each file's rows are tagged with that file, its load id, size and time.
    assert rows_per_file(spark, project, obj) == source_per_file
    for row in (
        table.groupBy("_source_file", "_load_id", "_source_size", "_source_modified")
        .count()
        .collect()
    ):
        path = Path(local_path(row._source_file))
        assert row._load_id == file_load_id(project, path)
        assert row._source_size == path.stat().st_size
        assert int(row._source_modified.timestamp() * 1000) == path.stat().st_mtime_ns // 1_000_000


def test_overwrite_rerun_replaces_the_table_in_a_new_version(spark, project, writer):
    obj = sample_object(project.configs, "erp-orders")
    assert obj.target.mode == "overwrite"
    count = spark_source_count(spark, obj, source_files(project, obj))
    first = ingest(spark, project, writer, obj, run_id="run-1")
    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert (first.version, second.version) == (0, 1)
    table = read_table(spark, project, obj)
    assert table.count() == count == second.rows
    assert [r[0] for r in table.select("_dagster_run_id").distinct().collect()] == ["run-2"]
    # Time travel: the first load is still there as version 0.
    old = spark.sql(f"SELECT count(*) AS n FROM {project.table(obj.target.table)} VERSION AS OF 0")
    assert old.first().n == count


@pytest.mark.duration(100)
def test_the_table_is_known_by_its_name_to_a_new_spark_process(spark, project, writer, tmp_path):
    """Another Spark process on the same warehouse (a shell, the next run) finds
    `<schema>.<table>` by name."""
    import subprocess
    import sys

    obj = sample_object(project.configs, "erp-stores")
    result = ingest(spark, project, writer, obj, run_id="run-1")
    warehouse = spark.conf.get("spark.sql.warehouse.dir")
    script = (
        "from fanout_dagster.orchestration.resources.spark import LocalSparkResource\n"
        f"spark = LocalSparkResource(warehouse_dir={warehouse!r}).get_session()\n"
        f"print('ROWS', spark.table({result.table!r}).count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=child_env(),
    )
    assert f"ROWS {result.rows}" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------- append, exactly once


def test_append_ingests_each_file_once_and_a_rerun_commits_nothing(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    assert obj.target.mode == "append"
    files = source_files(project, obj)
    first = ingest(spark, project, writer, obj, run_id="run-1")
    assert sorted(first.load_ids) == sorted(file_load_id(project, f) for f in files)
    assert first.files_read == first.source_files == len(files) > 1
    assert rows_per_file(spark, project, obj) == spark_source_counts(spark, obj, files)

    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert (second.written, second.files_read, second.rows_written, second.load_ids) == (
        False,
        0,
        0,
        (),
    )
    assert second.version == first.version == version_of(spark, project, obj)
    assert second.rows == first.rows == read_table(spark, project, obj).count()


def test_append_reads_only_a_new_file(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    new = add_payments_file(project)
    second = ingest(spark, project, writer, obj, run_id="run-2")
    new_rows = spark_source_count(spark, obj, [str(new.resolve())])
    assert second.load_ids == (file_load_id(project, new),) and second.files_read == 1
    assert second.rows_written == new_rows and second.rows == first.rows + new_rows
    assert second.version == first.version + 1
    assert rows_per_file(spark, project, obj) == spark_source_counts(
        spark, obj, source_files(project, obj)
    )
    runs = {
        local_path(r._source_file): r._dagster_run_id
        for r in read_table(spark, project, obj)
        .select("_source_file", "_dagster_run_id")
        .distinct()
        .collect()
    }
    assert {f for f, run in runs.items() if run == "run-2"} == {str(new.resolve())}


def test_append_replaces_exactly_the_rows_of_a_changed_file(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    ingest(spark, project, writer, obj, run_id="run-1")
    changed = project.data / "erp" / "payments" / "payments_2026-03.csv"
    header, *rows = changed.read_text().splitlines()
    changed.write_text("\n".join([header] + rows[: len(rows) // 2]) + "\n")  # a corrected extract

    result = ingest(spark, project, writer, obj, run_id="run-2")
    assert result.load_ids == (file_load_id(project, changed),)
    assert result.rows_written == len(rows) // 2
    files = source_files(project, obj)
    assert rows_per_file(spark, project, obj) == spark_source_counts(spark, obj, files)
    table = read_table(spark, project, obj)
    runs = {
        local_path(r._source_file): r._dagster_run_id
        for r in table.select("_source_file", "_dagster_run_id").distinct().collect()
    }
    assert runs == {f: "run-2" if f == str(changed.resolve()) else "run-1" for f in files}


def test_append_keeps_the_rows_of_a_file_that_left_the_source(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    gone = project.data / "erp" / "payments" / "payments_2026-01.csv"
    gone_rows = spark_source_count(spark, obj, [str(gone.resolve())])
    gone.unlink()
    add_payments_file(project)
    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert second.files_read == 1 and second.source_files == first.source_files
    assert rows_per_file(spark, project, obj)[str(gone.resolve())] == gone_rows
    assert (
        second.rows == first.rows + second.rows_written == read_table(spark, project, obj).count()
    )


def header_line(folder: Path) -> str:
    return next(folder.glob("*.csv")).read_text().splitlines()[0] + "\n"


@pytest.mark.parametrize(
    ("key", "name", "content"),
    [
        ("erp-payments", "payments_2026-07.csv", "header"),
        ("erp-payments", "payments_2026-07.csv", ""),
        ("crm-web_events", "day=2026-07-01.jsonl", ""),
    ],
    ids=["header-only-csv", "empty-csv", "empty-jsonl"],
)
def test_a_new_file_without_rows_is_recorded_once_and_never_read_again(
    spark, project, writer, key, name, content
):
    """An empty file (a day without events) is ingested like any other: one commit
    records it, and a run with nothing new after that commits nothing."""
    obj = sample_object(project.configs, key)
    first = ingest(spark, project, writer, obj, run_id="run-1")
    new = project.data / Path(obj.source.path).parent / name
    new.write_text(header_line(new.parent) if content == "header" else content)

    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert (second.files_read, second.load_ids) == (1, (file_load_id(project, new),))
    assert (second.rows_written, second.rows, second.version) == (0, first.rows, first.version + 1)
    third = ingest(spark, project, writer, obj, run_id="run-3")
    assert (third.written, third.files_read, third.version) == (False, 0, second.version)
    assert version_of(spark, project, obj) == second.version


def test_a_header_only_file_with_inferred_types_is_recorded_once(spark, project, writer):
    """With inferSchema a header-only CSV reads as text columns; its missing rows
    say nothing about the column types, so it is no type change."""
    sample = sample_object(project.configs, "erp-payments")
    obj = with_source(sample, options={**sample.source.options, "inferSchema": True})
    first = ingest(spark, project, writer, obj, run_id="run-1")
    assert dict(first.columns)["payment_id"] == "int"
    folder = project.data / "erp" / "payments"
    (folder / "payments_2026-07.csv").write_text(header_line(folder))

    second = ingest(spark, project, writer, obj, run_id="run-2")
    assert (second.files_read, second.rows_written, second.rows) == (1, 0, first.rows)
    assert dict(second.columns)["payment_id"] == "int"
    third = ingest(spark, project, writer, obj, run_id="run-3")
    assert (third.written, third.files_read, third.version) == (False, 0, second.version)


def test_restoring_an_append_table_rolls_its_file_record_back_too(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    new = add_payments_file(project)
    empty = new.parent / "payments_2026-08.csv"
    empty.write_text(header_line(new.parent))
    assert ingest(spark, project, writer, obj, run_id="run-2").files_read == 2
    spark.sql(f"RESTORE TABLE {first.table} TO VERSION AS OF {first.version}")

    again = ingest(spark, project, writer, obj, run_id="run-3")
    assert sorted(again.load_ids) == sorted(
        [file_load_id(project, new), file_load_id(project, empty)]
    )
    non_empty = [f for f in source_files(project, obj) if f != str(empty.resolve())]
    assert rows_per_file(spark, project, obj) == spark_source_counts(spark, obj, non_empty)
    assert ingest(spark, project, writer, obj, run_id="run-4").files_read == 0


def rewrite_as_an_earlier_version(spark, writer, obj, run_id: str) -> None:
    """A commit as versions before the file record wrote them: same rows, and
    userMetadata naming only the run and the object."""
    table = spark.table(writer.full_name(obj.target.table))
    writer.overwrite(
        table,
        table=obj.target.table,
        mode="addNewColumns",
        allow_empty=True,
        tag=commit_tag(run_id, obj.key),
    )


def test_a_table_whose_commits_carry_no_file_record_is_read_from_its_rows(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    rewrite_as_an_earlier_version(spark, writer, obj, "old-run")
    assert ingest(spark, project, writer, obj, run_id="run-2").files_read == 0
    new = add_payments_file(project)
    third = ingest(spark, project, writer, obj, run_id="run-3")
    assert third.load_ids == (file_load_id(project, new),)
    assert third.rows == first.rows + third.rows_written
    assert ingest(spark, project, writer, obj, run_id="run-4").files_read == 0


def test_file_names_that_need_escaping_get_the_right_load_ids(spark, project, writer):
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
    files = source_files(project, obj)
    result = ingest(spark, project, writer, obj, run_id="run-1")
    assert result.files_read == len(files) == 9
    ids = {
        local_path(r._source_file): r._load_id
        for r in read_table(spark, project, obj)
        .select("_source_file", "_load_id")
        .distinct()
        .collect()
    }
    assert ids == {f: file_load_id(project, f) for f in files}
    # ... so the next run finds every file ingested.
    assert ingest(spark, project, writer, obj, run_id="run-2").files_read == 0


def test_glob_characters_in_the_data_root(spark, project, writer, tmp_path):
    root = tmp_path / "data[v1]{x}"
    shutil.copytree(project.data, root)
    for key in ("erp-payments", "erp-orders"):
        obj = sample_object(project.configs, key)
        result = ingest(spark, project, writer, obj, run_id="run-1", data_root=str(root))
        assert result.rows == spark_source_count(spark, obj, source_files(project, obj))


def test_append_from_a_uri_root_is_exactly_once_too(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    root = project.data.resolve().as_uri()
    first = ingest(spark, project, writer, obj, run_id="run-1", data_root=root)
    new = add_payments_file(project)
    second = ingest(spark, project, writer, obj, run_id="run-2", data_root=root)
    assert second.load_ids == (file_load_id(project, new),)
    assert first.files_read == len(source_files(project, obj)) - 1
    assert rows_per_file(spark, project, obj) == spark_source_counts(
        spark, obj, source_files(project, obj)
    )


# --------------------------------------------------------------------------- switches


def assert_each_source_row_once(spark, project, obj):
    files = source_files(project, obj)
    assert rows_per_file(spark, project, obj) == spark_source_counts(spark, obj, files)
    assert read_table(spark, project, obj).count() == spark_source_count(spark, obj, files)


def test_switching_overwrite_to_append_and_back_never_leaves_a_row_twice(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    as_overwrite = with_target(obj, mode="overwrite")
    ingest(spark, project, writer, as_overwrite, run_id="run-1")
    assert_each_source_row_once(spark, project, obj)
    # To append: the files the overwrite load read are known, only new ones are read.
    new = add_payments_file(project)
    switched = ingest(spark, project, writer, obj, run_id="run-2")
    assert switched.load_ids == (file_load_id(project, new),)
    assert_each_source_row_once(spark, project, obj)
    # And back: the table is exactly the source again.
    ingest(spark, project, writer, as_overwrite, run_id="run-3")
    assert_each_source_row_once(spark, project, obj)


def test_changing_the_source_path_or_format_reloads_the_table(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    ingest(spark, project, writer, obj, run_id="run-1")
    # The same rows, moved to another folder and another format.
    moved = project.data / "erp" / "payments_parquet"
    moved.mkdir()
    for f in source_files(project, obj):
        spark.read.csv(f, header=True).coalesce(1).write.parquet(str(moved / Path(f).stem))
    as_parquet = with_source(obj, format="parquet", path="erp/payments_parquet", options={})
    result = ingest(spark, project, writer, as_parquet, run_id="run-2")
    assert result.reloaded and result.files_read == result.source_files
    table = read_table(spark, project, obj)
    rows = spark.read.option("recursiveFileLookup", "true").parquet(str(moved)).count()
    assert table.count() == rows == result.rows
    assert [r[0] for r in table.select("_source_hash").distinct().collect()] == [
        as_parquet.source_hash
    ]
    # Back to the CSV path: reloaded again, each row once.
    ingest(spark, project, writer, obj, run_id="run-3")
    assert_each_source_row_once(spark, project, obj)


TABLE_SOURCE = """\
code: erp
name: payments
source: {{table: {table}}}
target: {{table: erp_payments}}
"""


@pytest.mark.parametrize("recorded", [True, False], ids=["file-record", "rows-only"])
def test_switching_from_a_table_source_to_append_files_reloads_the_table(
    spark, project, writer, tmp_path, recorded
):
    """Rows of a table source name no file (null size and time): a switch to an
    append file source reloads the table from the files, whatever wrote those rows."""
    obj = sample_object(project.configs, "erp-payments")
    files = source_files(project, obj)
    source_table = project.table("raw_payments")
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {project.schema}")
    spark.read.csv(files, header=True).write.format("delta").saveAsTable(source_table)
    configs = tmp_path / "table_source"
    configs.mkdir()
    (configs / "erp.yaml").write_text(TABLE_SOURCE.format(table=source_table))
    from_table = sample_object(configs, "erp-payments")
    ingest(spark, project, writer, from_table, run_id="run-1")
    if not recorded:
        rewrite_as_an_earlier_version(spark, writer, from_table, "old-run")

    switched = ingest(spark, project, writer, obj, run_id="run-2")
    assert switched.reloaded and switched.files_read == len(files)
    assert_each_source_row_once(spark, project, obj)
    assert ingest(spark, project, writer, obj, run_id="run-3").files_read == 0


# --------------------------------------------------------------------------- empty sources


def header_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def test_an_empty_source_fails_by_default_and_keeps_the_previous_version(spark, project, writer):
    obj = sample_object(project.configs, "erp-stores")
    assert obj.target.on_empty == "fail"
    first = ingest(spark, project, writer, obj, run_id="run-1")
    header_only(project.data / "erp" / "stores" / "stores.csv")
    with pytest.raises(LoadRejected, match="no rows") as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    assert project.table("erp_stores") in str(excinfo.value)
    assert version_of(spark, project, obj) == first.version
    assert read_table(spark, project, obj).count() == first.rows


def test_an_empty_append_source_fails_and_creates_nothing(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    for source in (project.data / "erp" / "payments").glob("*.csv"):
        header_only(source)
    with pytest.raises(LoadRejected, match="no rows"):
        ingest(spark, project, writer, obj, run_id="run-1")
    assert not spark.catalog.tableExists(project.table("erp_payments"))


def test_an_allowed_empty_source_commits_an_empty_table_with_the_source_columns(
    spark, project, writer
):
    obj = with_target(sample_object(project.configs, "erp-stores"), on_empty="allow")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    source = project.data / "erp" / "stores" / "stores.csv"
    columns = source.read_text().splitlines()[0].split(",")
    header_only(source)
    emptied = ingest(spark, project, writer, obj, run_id="run-2")
    assert (emptied.version, emptied.rows, emptied.rows_written) == (first.version + 1, 0, 0)
    assert read_table(spark, project, obj).columns[: len(columns)] == columns
    # A first load of an empty source creates the table.
    fresh = with_target(obj, table="erp_stores_empty")
    created = ingest(spark, project, writer, fresh, run_id="run-3")
    assert (created.version, created.rows) == (0, 0)
    assert spark.table(project.table("erp_stores_empty")).columns[: len(columns)] == columns


def test_an_empty_jsonl_has_no_columns_and_is_refused(spark, project, writer):
    obj = sample_object(project.configs, "crm-campaigns")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    (project.data / "crm" / "campaigns" / "campaigns.jsonl").write_text("")
    with pytest.raises(SourceError, match="no columns"):
        ingest(spark, project, writer, obj, run_id="run-2")
    assert version_of(spark, project, obj) == first.version


# --------------------------------------------------------------------------- refused loads


def test_a_read_that_fails_half_way_keeps_the_previous_version_and_a_retry_heals(
    spark, project, writer
):
    sample = sample_object(project.configs, "erp-orders")
    obj = with_source(sample, options={**sample.source.options, "mode": "FAILFAST"})
    files = source_files(project, obj)
    first = ingest(spark, project, writer, obj, run_id="run-1")

    victim = project.data / "erp" / "orders" / "orders_2026-05.csv"
    good = victim.read_text()
    victim.write_text(good + "999,SO-BROKEN,1,2,3,4,5,6,7,8,9,10,11,12,13,14\n")
    with pytest.raises(Exception) as excinfo:
        ingest(spark, project, writer, obj, run_id="run-2")
    assert "malformed" in str(excinfo.value).lower() or "FAILFAST" in str(excinfo.value)
    assert version_of(spark, project, obj) == first.version
    assert read_table(spark, project, obj).count() == first.rows

    victim.write_text(good)
    healed = ingest(spark, project, writer, obj, run_id="run-3")
    assert healed.version == first.version + 1
    assert (
        healed.rows
        == read_table(spark, project, obj).count()
        == spark_source_count(spark, obj, files)
    )


PAYMENTS_SCHEMA = (
    "payment_id BIGINT, invoice_id BIGINT, payment_ts TIMESTAMP, payment_date DATE, "
    "amount DECIMAL(12,2), currency STRING, method STRING, provider_reference STRING, "
    "is_refund BOOLEAN"
)


def test_a_comment_or_not_null_edit_of_the_schema_reloads_nothing(spark, project, writer):
    base = sample_object(project.configs, "erp-payments")
    obj = with_target(with_source(base, schema=PAYMENTS_SCHEMA), schema_evolution_mode="none")
    first = ingest(spark, project, writer, obj, run_id="run-1")
    gone = project.data / "erp" / "payments" / "payments_2026-01.csv"
    gone_rows = spark_source_count(spark, obj, [str(gone.resolve())])
    gone.unlink()
    commented = PAYMENTS_SCHEMA.replace(
        "payment_id BIGINT", "payment_id BIGINT NOT NULL COMMENT 'the payment'"
    )
    edited = with_source(obj, schema=commented)
    assert edited.config_hash != obj.config_hash  # a run is requested for the edit...
    second = ingest(spark, project, writer, edited, run_id="run-2")
    # ...which reads nothing again, and keeps the rows of the file that left the source.
    assert not second.reloaded and second.files_read == 0
    assert rows_per_file(spark, project, obj)[str(gone.resolve())] == gone_rows
    assert second.rows == first.rows
