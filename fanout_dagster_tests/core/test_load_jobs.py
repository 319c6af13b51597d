"""Spark round trips of one object load, counted on the server (issue 18): the
commit is read back from the table's Delta log, not by a `DESCRIBE HISTORY` job,
and what the log says is what `DESCRIBE HISTORY` says."""

from __future__ import annotations

from functools import partial

import pytest

from fanout_dagster.core.tables import HistoryEntry, quote
from fanout_dagster_tests.core.test_expectations import dq_object, load, spark_jobs_of, write_rows

# A small CSV load with on_empty: fail (the default) runs: the emptiness check,
# the write, and the jobs Delta runs inside the write (an overwrite of an
# existing table first reconstructs its current snapshot: 4 jobs). Measured
# before the log was read: 5 and 7 jobs (a DESCRIBE HISTORY job more each).
FIRST_LOAD_JOBS = 4  # creates the table
NEXT_LOAD_JOBS = 6  # overwrites it


@pytest.fixture
def writer(spark, project):
    return project.bronze_tables().writer(spark)


def described(jobs: list[dict]) -> list[str]:
    return [
        " ".join((j.get("description") or j["name"]).split())[90:180]
        for j in sorted(jobs, key=lambda j: j["jobId"])
    ]


def test_a_small_csv_load_runs_few_spark_jobs(spark, spark_server, project, writer):
    obj = dq_object(project, "jobs", [])
    first = spark_jobs_of(spark, spark_server, partial(load, spark, project, writer, obj))
    again = partial(load, spark, project, writer, obj, run_id="run-2")
    second = spark_jobs_of(spark, spark_server, again)
    assert len(first) <= FIRST_LOAD_JOBS, described(first)
    assert len(second) <= NEXT_LOAD_JOBS, described(second)


def test_the_history_read_from_the_delta_log_is_describe_historys(spark, project, writer):
    obj = dq_object(project, "log", [], mode="append")
    load(spark, project, writer, obj, run_id="run-1")
    write_rows(project, "log", "part2.csv", ["7,1,g@x.io"])
    result = load(spark, project, writer, obj, run_id="run-2")  # replaceWhere on one file
    assert (result.version, result.rows_written, result.rows) == (1, 1, 7)
    spark.sql(f"OPTIMIZE {quote(result.table)}").collect()  # another writer's commit

    from_log = writer._history(obj.target.table, 10)
    rows = spark.sql(f"DESCRIBE HISTORY {quote(result.table)}").collect()
    from_spark = [HistoryEntry.of_row(row) for row in rows]
    assert [e.version for e in from_log] == [2, 1, 0]
    assert from_log == from_spark
