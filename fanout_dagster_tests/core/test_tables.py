"""The bronze Delta writer against real Spark: one transaction per write, the
commit found in the table's history, files the table holds, and a writer
process killed in the middle of its write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pyspark.sql import functions as F

from fanout_dagster.core.ingest import AUDIT_COLUMNS, ingest_object
from fanout_dagster.core.packing import run_pack
from fanout_dagster.core.tables import BronzeTableWriter, FileState, LoadRejected, commit_tag, quote
from fanout_dagster.local_spark.catalog import (
    delta_package,
    has_commits,
    register_table,
    register_tables,
    table_location,
    warehouse_dir,
)
from fanout_dagster_tests.helpers import child_env, sample_object, spark_source_count


@pytest.fixture
def writer(spark, project):
    return project.bronze_tables().writer(spark)


def frame(spark, start: int, stop: int):
    return spark.range(start, stop, numPartitions=2).select(
        F.col("id"), (F.col("id") * 2).alias("doubled")
    )


def test_the_delta_coordinates_are_those_delta_pip_helper_sets():
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = configure_spark_with_delta_pip(SparkSession.builder)
    assert builder._options["spark.jars.packages"] == delta_package()


def test_overwrite_commits_one_version_with_its_metrics_and_tag(spark, project, writer):
    first = writer.overwrite(
        frame(spark, 0, 10), table="t", mode="addNewColumns", allow_empty=False, tag="a"
    )
    second = writer.overwrite(
        frame(spark, 0, 25), table="t", mode="addNewColumns", allow_empty=False, tag="b"
    )
    assert (first.version, second.version) == (0, 1)
    assert (second.rows, second.rows_written, second.written) == (25, 25, True)
    assert second.files_written >= 1 and second.table == project.table("t")
    history = spark.sql(f"DESCRIBE HISTORY {project.table('t')}").collect()
    assert [(h.version, h.userMetadata) for h in history] == [(1, "b"), (0, "a")]


def test_replace_files_replaces_only_the_rows_of_the_files_given(spark, project, writer):
    def rows(load_id, n):
        return frame(spark, 0, n).withColumn("_load_id", F.lit(load_id))

    writer.replace_files(
        rows("f1", 3).unionByName(rows("f2", 4)),
        table="t",
        load_ids=["f1", "f2"],
        mode="addNewColumns",
        allow_empty=False,
        tag="x",
    )
    commit = writer.replace_files(
        rows("f2", 2), table="t", load_ids=["f2"], mode="addNewColumns", allow_empty=False, tag="y"
    )
    counts = dict(spark.table(project.table("t")).groupBy("_load_id").count().collect())
    assert counts == {"f1": 3, "f2": 2}
    assert (commit.rows, commit.rows_written, commit.version) == (5, 2, 1)
    # Nothing to replace: nothing committed, the table reported as it is.
    same = writer.replace_files(
        None, table="t", load_ids=[], mode="addNewColumns", allow_empty=False, tag="z"
    )
    assert (same.written, same.version, same.rows) == (False, 1, 5)


def test_a_write_that_would_leave_the_table_empty_is_refused(spark, project, writer):
    with pytest.raises(LoadRejected, match="no rows"):
        writer.overwrite(
            frame(spark, 0, 0), table="t", mode="addNewColumns", allow_empty=False, tag="a"
        )
    assert not spark.catalog.tableExists(project.table("t"))


def test_the_files_a_table_holds_are_recorded_in_its_commit(spark, project, writer):
    obj = sample_object(project.configs, "erp-payments")
    result = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r")
    held = writer.ingested_files("erp_payments")
    files = sorted((project.data / "erp" / "payments").glob("*.csv"))
    assert held.source_hashes == {obj.source_hash} and len(held.files) == len(files)
    states = {FileState(f.stat().st_size, f.stat().st_mtime_ns // 1_000_000) for f in files}
    assert set(held.files.values()) == states
    # ... in the commit that wrote the rows, beside the run and the object.
    [commit] = spark.sql(f"DESCRIBE HISTORY {result.table}").collect()
    tag = json.loads(commit.userMetadata)
    assert (tag["dagster_run_id"], tag["partition_key"]) == ("r", obj.key)
    assert tag["source_hash"] == obj.source_hash and len(tag["source_files"]) == len(files)


def test_concurrent_loads_of_a_pack_into_their_own_tables_all_land(spark, project, writer):
    keys = ["erp-orders", "erp-payments", "erp-stores", "crm-campaigns"]
    objects = [sample_object(project.configs, k) for k in keys]

    def load(obj):
        return ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r")

    outcomes = list(run_pack(objects, load, max_threads=4))
    assert all(o.ok for o in outcomes), [o.traceback for o in outcomes if not o.ok]
    for outcome in outcomes:
        obj = outcome.item
        assert outcome.result is not None
        files = sorted(str(p.resolve()) for p in project.data.glob(obj.source.path))
        assert outcome.result.rows == spark_source_count(spark, obj, files)
        assert outcome.result.table == project.table(obj.target.table)


def test_names_that_are_not_plain_identifiers_never_reach_sql():
    assert quote("main.bronze.t") == "`main`.`bronze`.`t`"
    for bad in ("t; DROP TABLE x", "a`b", "a.b c", ""):
        with pytest.raises(ValueError):
            quote(bad)


def test_audit_columns_end_every_table(spark, project, writer):
    obj = sample_object(project.configs, "erp-stores")
    result = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r")
    columns = [name for name, _ in result.columns]
    assert columns[-len(AUDIT_COLUMNS) :] == list(AUDIT_COLUMNS)


# --------------------------------------------------------------------------- killed mid-write

KILLED_WRITER = """
import sys, time
from pyspark.sql import functions as F
from fanout_dagster.core import ingest
from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.resources.spark import LocalSparkResource
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables

warehouse, configs, data, schema = sys.argv[1:5]
spark = LocalSparkResource(warehouse_dir=warehouse).get_session()
read = ingest.read_source


def slow_read(spark, source, files):
    # Fault injection (test only): every row takes a while, so the write job
    # is still writing its part files when the test kills this process.
    slow = F.udf(lambda v: time.sleep(0.05) or v, "string")
    df = read(spark, source, files)
    return df.withColumn(df.columns[0], slow(df[df.columns[0]]))


ingest.read_source = slow_read
obj = load_objects(configs).by_key()["erp-orders"]
writer = BronzeTables(schema_name=schema).writer(spark)
print("WRITING", flush=True)
ingest.ingest_object(spark, obj, data_root=data, writer=writer, run_id="killed")
print("DONE", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_version_and_the_next_run_heals(
    spark, project, writer, tmp_path
):
    obj = sample_object(project.configs, "erp-orders")
    files = sorted(str(p.resolve()) for p in project.data.glob(obj.source.path))
    count = spark_source_count(spark, obj, files)
    first = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r1")
    table_dir = table_location(warehouse_dir(spark), first.table)
    log = table_dir / "_delta_log"
    data_files = set(table_dir.glob("*.parquet"))

    script = tmp_path / "killed_writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER))
    child = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(warehouse_dir(spark)),
            str(project.configs),
            str(project.data),
            project.schema,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=child_env(),
    )
    try:
        # Kill it once its write job has put new data files in the table folder
        # (uncommitted: the log has no new version yet).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if set(table_dir.glob("*.parquet")) - data_files:
                break
            time.sleep(0.2)
        assert child.poll() is None, child.stdout.read() if child.stdout else ""
        assert set(table_dir.glob("*.parquet")) - data_files, "the write never started"
        assert sorted(p.name for p in log.glob("*.json")) == ["00000000000000000000.json"]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)

    # The previous version is what readers see, whole.
    table = spark.table(first.table)
    assert table.count() == count
    assert {r[0] for r in table.select("_dagster_run_id").distinct().collect()} == {"r1"}
    assert spark.sql(f"DESCRIBE HISTORY {first.table}").count() == 1
    # The next run heals: a new version with the source's rows, each once.
    healed = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r3")
    assert healed.version == 1
    assert spark.table(first.table).count() == count == healed.rows
    assert {
        r[0] for r in spark.table(first.table).select("_dagster_run_id").distinct().collect()
    } == {"r3"}


def test_commit_tags_name_the_run_and_the_object():
    tag = commit_tag("run-1", "erp-orders")
    assert tag == '{"dagster_run_id": "run-1", "partition_key": "erp-orders"}'


def test_a_first_write_that_never_committed_is_no_table_and_the_next_write_creates_it(spark):
    """A new table's first write killed or cancelled mid-way leaves data files and
    an empty `_delta_log`: no Spark process registers it, and the object's next
    load clears it and creates the table."""
    schema = f"orphans_{os.getpid()}_{int(time.time() * 1000)}"
    location = table_location(warehouse_dir(spark), f"{schema}.t")
    (location / "_delta_log" / "_staged_commits").mkdir(parents=True)
    (location / "part-00000-orphan.snappy.parquet").write_bytes(b"never committed")
    assert not has_commits(location)
    assert f"{schema}.t" not in register_tables(spark)
    assert not spark.catalog.tableExists(f"{schema}.t")

    writer = BronzeTableWriter(spark, schema, prepare_table=register_table)
    df = spark.range(3).withColumnRenamed("id", "x")
    commit = writer.overwrite(df, table="t", mode="addNewColumns", allow_empty=False, tag="t-1")
    assert commit.version == 0 and commit.rows_written == 3
    assert spark.table(f"{schema}.t").count() == 3
    assert has_commits(location)
    assert not (location / "part-00000-orphan.snappy.parquet").exists()
