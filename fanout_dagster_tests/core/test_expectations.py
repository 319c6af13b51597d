"""Expectations against real Spark and real Delta tables: counts from the load's
own write (no extra Spark job), rows dropped, a `fail` that commits nothing, a
quarantine that never loses a row nor holds one twice, and a bad expression
failing its object only."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from fanout_dagster.core.expectations import FAILED_COLUMN, ExpectationsReport
from fanout_dagster.core.ingest import AUDIT_COLUMNS, ingest_object
from fanout_dagster.core.loading import ObjectReport, load_pack
from fanout_dagster.core.objects import ObjectConfig
from fanout_dagster.core.tables import BronzeTableWriter
from fanout_dagster_tests.core.test_expectation_configs import SCHEMA, VALID_EXPRESSIONS
from fanout_dagster_tests.e2e.dagster_processes import wait_for
from fanout_dagster_tests.helpers import table_state

# id, amount, email: row 2 has a negative amount, row 3 none, row 4 a bad email,
# row 5 no email.
ROWS = ["1,10.5,a@x.io", "2,-3,b@x.io", "3,,c@x.io", "4,7,not-an-email", "5,2,", "6,4,f@x.io"]
AMOUNT_OK = {"name": "amount_ok", "expression": "try_cast(amount AS DOUBLE) >= 0"}
EMAIL_OK = {"name": "email_ok", "expression": "email RLIKE '^[^@]+@[^@]+$'"}


def write_rows(project, folder: str, name: str, rows: list[str]) -> Path:
    path = project.data / "dq" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["id,amount,email", *rows]) + "\n")
    return path


def dq_object(project, folder: str, expectations: list[dict], mode: str = "overwrite"):
    if not (project.data / "dq" / folder).exists():
        write_rows(project, folder, "part1.csv", ROWS)
    return ObjectConfig.model_validate(
        {
            "code": "dq",
            "name": folder,
            "source": {"format": "csv", "path": f"dq/{folder}", "options": {"header": True}},
            "target": {"table": f"dq_{folder}", "mode": mode},
            "expectations": expectations,
        }
    )


@pytest.fixture
def writer(spark, project):
    return project.bronze_tables().writer(spark)


def load(spark, project, writer, obj, run_id="run"):
    return ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id=run_id)


def ids(spark, full_name: str) -> list[int]:
    return sorted(int(row.id) for row in spark.table(full_name).select("id").collect())


def source_ids(project, folder: str) -> list[int]:
    return sorted(
        int(line.split(",")[0])
        for path in (project.data / "dq" / folder).glob("*.csv")
        for line in path.read_text().splitlines()[1:]
    )


def failed_rows(report: ExpectationsReport) -> dict[str, int]:
    return {result.name: result.failed_rows for result in report.results}


# --------------------------------------------------------------------------- counting


def test_warn_and_drop_are_counted_and_the_dropped_rows_left_out(spark, project, writer):
    obj = dq_object(project, "warn_drop", [{**AMOUNT_OK, "action": "drop"}, EMAIL_OK])
    for attempt in ("first load: a new table", "second load: the table exists"):
        result = load(spark, project, writer, obj)
        report = result.expectations
        assert report is not None, attempt
        # A null amount breaks the rule as a negative one does (null is not true).
        assert failed_rows(report) == {"amount_ok": 2, "email_ok": 2}, attempt
        assert (report.rows_checked, report.rows_dropped, report.rows_quarantined) == (6, 2, 0)
        assert report.quarantine_table is None
        # Rows 2 and 3 were dropped; the bad emails (warn) were loaded.
        assert ids(spark, result.table) == [1, 4, 5, 6], attempt
        assert result.rows == result.rows_written == 4
    # The counts agree with an independent count over the source.
    source = spark.read.csv(str(project.data / "dq" / "warn_drop"), header=True)
    assert source.where("NOT coalesce(try_cast(amount AS DOUBLE) >= 0, false)").count() == 2


def spark_jobs_of(spark, server, action: Callable[[], object]) -> list[dict]:
    """The Spark jobs `action` ran on the server (those carrying a tag of its own)."""
    tag, sentinel = f"probe-{uuid.uuid4().hex}", f"sentinel-{uuid.uuid4().hex}"
    spark.addTag(tag)
    try:
        action()
    finally:
        spark.removeTag(tag)
    # The UI learns of jobs from Spark's listener bus, in order: once a job started
    # after the action shows as done, every job of the action shows too.
    spark.addTag(sentinel)
    try:
        spark.range(1).collect()
    finally:
        spark.removeTag(sentinel)
    api = f"http://{server.host}:{server.ui_port}/api/v1/applications"

    def jobs() -> list[dict]:
        [app] = json.load(urllib.request.urlopen(api, timeout=60))
        return json.load(urllib.request.urlopen(f"{api}/{app['id']}/jobs", timeout=60))

    def tagged(name: str, listed: list[dict]) -> list[dict]:
        return [j for j in listed if any(name in t for t in j.get("jobTags", []))]

    wait_for(
        lambda: any(j["status"] == "SUCCEEDED" for j in tagged(sentinel, jobs())),
        timeout=120,
        what="the sentinel Spark job in the server's UI",
        interval=0.2,
    )
    return tagged(tag, jobs())


def test_counting_takes_no_spark_job_of_its_own(spark, spark_server, project, writer):
    """On a table that exists, a load with warn and drop rules runs exactly the
    Spark jobs of the same load without rules: the counts come with the write."""
    plain = dq_object(project, "plain", [])
    checked = dq_object(project, "checked", [{**AMOUNT_OK, "action": "drop"}, EMAIL_OK])
    for obj in (plain, checked):
        load(spark, project, writer, obj)  # the tables exist from here on
    jobs = {
        obj.name: spark_jobs_of(spark, spark_server, partial(load, spark, project, writer, obj))
        for obj in (plain, checked)
    }
    assert len(jobs["checked"]) == len(jobs["plain"]) > 0, {
        name: [j["name"] for j in listed] for name, listed in jobs.items()
    }


# --------------------------------------------------------------------------- fail


def test_a_fail_rule_commits_nothing_and_names_itself(spark, project, writer):
    obj = dq_object(project, "fail", [AMOUNT_OK, EMAIL_OK])
    load(spark, project, writer, obj)
    table = project.table("dq_fail")
    before = table_state(spark, table)
    strict = dq_object(project, "fail", [{**AMOUNT_OK, "action": "fail"}, EMAIL_OK])
    with pytest.raises(Exception, match="fanout expectation failed: 'amount_ok'") as caught:
        load(spark, project, writer, strict, run_id="strict")
    assert "try_cast(amount AS DOUBLE) >= 0" in str(caught.value)
    assert table_state(spark, table) == before  # same version, same rows

    # Its report names the rule; the loop goes on with the other objects.
    fine = dq_object(project, "fine", [EMAIL_OK])
    reports = {
        r.key: r
        for r in load_pack(
            spark,
            [strict, fine],
            data_root=str(project.data),
            writer=writer,
            run_id="pack",
            threads=2,
        )
    }
    assert not reports["dq-fail"].ok
    assert reports["dq-fail"].failed_expectation == "amount_ok"
    assert "[USER_RAISED_EXCEPTION] fanout expectation failed: 'amount_ok'" in (
        reports["dq-fail"].error or ""
    )
    assert reports["dq-fine"].ok and reports["dq-fine"].failed_expectation is None
    assert table_state(spark, table) == before


def test_a_fail_rule_on_a_first_load_creates_no_table(spark, project, writer):
    obj = dq_object(project, "fail_new", [{**AMOUNT_OK, "action": "fail"}])
    with pytest.raises(Exception, match="fanout expectation failed: 'amount_ok'"):
        load(spark, project, writer, obj)
    assert not spark.catalog.tableExists(project.table("dq_fail_new"))


# --------------------------------------------------------------------------- quarantine


def quarantine_of(spark, project, obj) -> dict[int, list[str]]:
    """id -> the rules the quarantined row broke."""
    rows = spark.table(project.table(obj.quarantine_table)).collect()
    found: dict[int, list[str]] = {}
    for row in rows:
        assert int(row.id) not in found, f"row {row.id} is in the quarantine twice"
        found[int(row.id)] = list(row[FAILED_COLUMN])
    return found


def assert_every_row_once(spark, project, obj, folder):
    """Bronze and quarantine together hold each source row exactly once."""
    bronze = ids(spark, project.table(obj.target.table))
    quarantined = sorted(quarantine_of(spark, project, obj))
    assert sorted(bronze + quarantined) == source_ids(project, folder)
    assert not set(bronze) & set(quarantined)


def test_quarantine_never_loses_a_row_and_names_the_rules_broken(spark, project, writer):
    obj = dq_object(
        project,
        "quarantine",
        [{**AMOUNT_OK, "action": "quarantine"}, {**EMAIL_OK, "action": "quarantine"}],
    )
    for _ in range(2):  # a rerun replaces the quarantine: no row twice
        result = load(spark, project, writer, obj)
        assert_every_row_once(spark, project, obj, "quarantine")
        assert quarantine_of(spark, project, obj) == {
            2: ["amount_ok"],
            3: ["amount_ok"],
            4: ["email_ok"],
            5: ["email_ok"],
        }
        assert result.expectations is not None
        assert result.expectations.rows_quarantined == 4
        assert result.expectations.quarantine_table == project.table("dq_quarantine_quarantine")
    # The quarantine table has the bronze columns, and the rules broken.
    bronze_columns = spark.table(result.table).columns
    assert spark.table(project.table(obj.quarantine_table)).columns == [
        *bronze_columns,
        FAILED_COLUMN,
    ]
    assert bronze_columns[-len(AUDIT_COLUMNS) :] == list(AUDIT_COLUMNS)


def test_a_row_breaking_several_rules_takes_the_strongest_action(spark, project, writer):
    obj = dq_object(
        project,
        "strongest",
        [
            {"name": "not_two", "expression": "id <> 2", "action": "drop"},
            {**AMOUNT_OK, "action": "quarantine"},
            {"name": "small", "expression": "id < 3"},
        ],
    )
    load(spark, project, writer, obj)
    # Row 2 breaks a drop and a quarantine rule: quarantined; each row names every
    # rule it broke, the warn ones too.
    assert quarantine_of(spark, project, obj) == {
        2: ["not_two", "amount_ok"],
        3: ["amount_ok", "small"],
    }
    assert ids(spark, project.table(obj.target.table)) == [1, 4, 5, 6]


def test_append_quarantines_each_file_once_and_replaces_a_changed_files_rows(
    spark, project, writer
):
    obj = dq_object(project, "append_q", [{**AMOUNT_OK, "action": "quarantine"}], mode="append")
    load(spark, project, writer, obj, run_id="one")
    assert sorted(quarantine_of(spark, project, obj)) == [2, 3]

    write_rows(project, "append_q", "part2.csv", ["7,-1,g@x.io", "8,1,h@x.io"])
    load(spark, project, writer, obj, run_id="two")
    assert_every_row_once(spark, project, obj, "append_q")
    assert sorted(quarantine_of(spark, project, obj)) == [2, 3, 7]

    # A changed file replaces exactly its own rows, in bronze and in the quarantine.
    write_rows(project, "append_q", "part2.csv", ["7,1,g@x.io", "8,-1,h@x.io", "9,-2,i@x.io"])
    result = load(spark, project, writer, obj, run_id="three")
    assert_every_row_once(spark, project, obj, "append_q")
    assert sorted(quarantine_of(spark, project, obj)) == [2, 3, 8, 9]
    assert result.expectations is not None
    # Only the changed file was read and checked.
    assert (result.files_read, result.expectations.rows_checked) == (1, 3)

    # Nothing new: nothing read, nothing checked.
    result = load(spark, project, writer, obj, run_id="four")
    assert result.written is False and result.expectations is not None
    assert result.expectations.rows_checked == 0
    assert_every_row_once(spark, project, obj, "append_q")


class CrashBeforeBronze(BronzeTableWriter):
    """A writer whose process dies after the quarantine committed and before the
    bronze table's write (the kill between the two writes)."""

    def _write(self, df, table, **kwargs):
        if not table.endswith("_quarantine"):
            raise RuntimeError("killed between the quarantine's write and the table's")
        super()._write(df, table, **kwargs)


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_retry_after_a_crash_between_the_two_writes_leaves_no_row_twice(
    spark, project, writer, mode
):
    folder = f"crash_{mode}"
    obj = dq_object(project, folder, [{**AMOUNT_OK, "action": "quarantine"}], mode=mode)
    load(spark, project, writer, obj, run_id="one")
    write_rows(project, folder, "part2.csv", ["7,-1,g@x.io", "8,1,h@x.io"])
    bronze_before = table_state(spark, project.table(obj.target.table))

    crashing = CrashBeforeBronze(writer.spark, writer.schema, system_columns=AUDIT_COLUMNS)
    with pytest.raises(RuntimeError, match="killed between"):
        load(spark, project, crashing, obj, run_id="two")
    # The quarantine committed the new file's rows; bronze is as it was.
    assert 7 in quarantine_of(spark, project, obj)
    assert table_state(spark, project.table(obj.target.table)) == bronze_before

    load(spark, project, writer, obj, run_id="retry")
    assert_every_row_once(spark, project, obj, folder)
    assert sorted(quarantine_of(spark, project, obj)) == [2, 3, 7]


# --------------------------------------------------------------------------- run-time errors


def test_an_expression_spark_refuses_fails_its_object_only(spark, project, writer):
    # An inferred schema: the column cannot be checked before the run.
    bad = dq_object(project, "typo", [{"name": "typo", "expression": "amout >= 0"}])
    fine = dq_object(project, "fine2", [EMAIL_OK])
    reports = {
        r.key: r
        for r in load_pack(
            spark, [bad, fine], data_root=str(project.data), writer=writer, run_id="r", threads=2
        )
    }
    assert not reports["dq-typo"].ok
    assert "UNRESOLVED_COLUMN" in (reports["dq-typo"].error or "")
    assert "amout" in (reports["dq-typo"].error or "")
    assert reports["dq-typo"].failed_expectation is None
    assert reports["dq-fine2"].ok
    assert not spark.catalog.tableExists(project.table("dq_typo"))


def test_every_expression_the_config_check_accepts_is_a_condition_in_spark(spark):
    row = spark.sql(
        "SELECT 1 AS id, CAST(2.5 AS DECIMAL(10,2)) AS amount, 'a@b.c' AS email, "
        "array(1, 2) AS items, named_struct('city', 'Paris') AS address, "
        "'f0' AS _load_id, current_timestamp() AS _ingested_at"
    )
    assert [f.name for f in row.schema.fields[:5]] == [c.split()[0] for c in SCHEMA.split(", ")]
    checked = row.select(*[F.expr(e).alias(f"e{i}") for i, e in enumerate(VALID_EXPRESSIONS)])
    assert {f.dataType.simpleString() for f in checked.schema.fields} == {"boolean"}


def test_the_counts_travel_in_the_report_as_json(spark, project, writer):
    obj = dq_object(project, "json", [{**AMOUNT_OK, "action": "quarantine"}, EMAIL_OK])
    [report] = load_pack(
        spark, [obj], data_root=str(project.data), writer=writer, run_id="j", threads=1
    )
    assert report.ok and report.result is not None
    # What the Pipes entry sends and the launching side reads back.
    back = ObjectReport.from_json(json.loads(json.dumps(report.to_json())))
    assert back == report
    assert back.result is not None and back.result.expectations is not None
    assert failed_rows(back.result.expectations) == {"amount_ok": 2, "email_ok": 2}


def test_a_classic_session_counts_from_the_write_too(classic_spark, tmp_path, project):
    """The step launcher runs loads on a classic session, where an Observation keeps
    the metrics of the first action that reads it: the emptiness check must not."""
    obj = dq_object(project, "classic", [{**AMOUNT_OK, "action": "drop"}, EMAIL_OK])
    writer = BronzeTableWriter(classic_spark, project.schema, system_columns=AUDIT_COLUMNS)
    for _ in ("new table", "existing table"):
        result = ingest_object(
            classic_spark, obj, data_root=str(project.data), writer=writer, run_id="c"
        )
        assert result.expectations is not None
        assert failed_rows(result.expectations) == {"amount_ok": 2, "email_ok": 2}
        assert result.expectations.rows_checked == 6
        assert result.rows == 4
