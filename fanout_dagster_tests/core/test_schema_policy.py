"""Schema evolution per object on real Delta tables, with Auto Loader's modes:
addNewColumns, failOnNewColumns, rescue, none; type changes never applied silently;
explicit schemas and schema hints through a real load."""

from __future__ import annotations

import json

import pytest

from fanout_dagster.core.ingest import ingest_object
from fanout_dagster.core.schema_policy import RESCUED_COLUMN
from fanout_dagster.core.tables import LoadRejected, commit_tag
from fanout_dagster_tests.helpers import sample_object


@pytest.fixture
def writer(spark, project):
    return project.bronze_tables().writer(spark)


def rows(spark, ddl: str, data: list[tuple]):
    return spark.createDataFrame(data, ddl)


def load(writer, df, mode, table="t", allow_empty=False):
    return writer.overwrite(
        df, table=table, mode=mode, allow_empty=allow_empty, tag=commit_tag("r", "k")
    )


def table_rows(spark, project, table="t") -> list[dict]:
    return [r.asDict() for r in spark.table(project.table(table)).orderBy("id").collect()]


def version(spark, project, table="t") -> int:
    return spark.sql(f"DESCRIBE HISTORY {project.table(table)} LIMIT 1").first().version


def test_add_new_columns_adds_them_and_fills_missing_ones_with_nulls(spark, project, writer):
    load(writer, rows(spark, "id INT, name STRING", [(1, "a")]), "addNewColumns")
    commit = load(writer, rows(spark, "id INT, region STRING", [(2, "emea")]), "addNewColumns")
    assert commit.version == 1
    assert spark.table(project.table("t")).columns == ["id", "name", "region"]
    assert table_rows(spark, project) == [{"id": 2, "name": None, "region": "emea"}]


def test_fail_on_new_columns_fails_and_keeps_the_previous_version(spark, project, writer):
    load(writer, rows(spark, "id INT, name STRING", [(1, "a")]), "failOnNewColumns")
    with pytest.raises(LoadRejected, match=r"new column\(s\) region.*failOnNewColumns"):
        load(
            writer,
            rows(spark, "id INT, name STRING, region STRING", [(2, "b", "x")]),
            "failOnNewColumns",
        )
    assert version(spark, project) == 0
    assert table_rows(spark, project) == [{"id": 1, "name": "a"}]


def test_none_ignores_new_columns(spark, project, writer):
    load(writer, rows(spark, "id INT, name STRING", [(1, "a")]), "none")
    load(writer, rows(spark, "id INT, name STRING, region STRING", [(2, "b", "x")]), "none")
    assert table_rows(spark, project) == [{"id": 2, "name": "b"}]


def test_rescue_puts_new_columns_and_unparsed_values_in_rescued_data(spark, project, writer):
    load(writer, rows(spark, "id INT, amount INT", [(1, 10)]), "rescue")
    assert spark.table(project.table("t")).columns == ["id", "amount", RESCUED_COLUMN]
    # A day whose amounts arrive as text, one of them not a number, plus a new column.
    later = rows(
        spark, "id INT, amount STRING, channel STRING", [(2, "20", "web"), (3, "12x", None)]
    )
    load(writer, later, "rescue")
    got = table_rows(spark, project)
    assert [(r["id"], r["amount"]) for r in got] == [(2, 20), (3, None)]
    assert json.loads(got[0][RESCUED_COLUMN]) == {"channel": "web"}
    assert json.loads(got[1][RESCUED_COLUMN]) == {"amount": "12x"}
    assert spark.table(project.table("t")).schema["amount"].dataType.simpleString() == "int"


@pytest.mark.parametrize("mode", ["addNewColumns", "failOnNewColumns", "none"])
def test_a_type_change_fails_naming_the_column_with_old_and_new_type(spark, project, writer, mode):
    load(writer, rows(spark, "id INT, amount INT", [(1, 10)]), mode)
    with pytest.raises(LoadRejected, match=r"amount \(int -> string\)"):
        load(writer, rows(spark, "id INT, amount STRING", [(2, "x")]), mode)
    assert version(spark, project) == 0


def test_a_type_that_widens_safely_is_cast_to_the_tables_type(spark, project, writer):
    load(writer, rows(spark, "id BIGINT, amount DOUBLE", [(1, 1.5)]), "addNewColumns")
    load(writer, rows(spark, "id INT, amount FLOAT", [(2, 2.5)]), "addNewColumns")
    schema = spark.table(project.table("t")).schema
    assert [f.dataType.simpleString() for f in schema.fields] == ["bigint", "double"]
    assert table_rows(spark, project) == [{"id": 2, "amount": 2.5}]


# --------------------------------------------------------------------------- through a real load


def test_a_json_day_without_an_optional_field_appends(spark, project, writer):
    """Today's JSON append that failed when a new day file lacked an optional field."""
    obj = sample_object(project.configs, "crm-web_events")
    assert obj.target.mode == "append"
    first = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r1")
    folder = project.data / "crm" / "web_events"
    sample = json.loads((folder / "day=2026-06-30.jsonl").read_text().splitlines()[0])
    optional = next(k for k in sample if k not in ("event_id", "event_type"))
    day = {k: v for k, v in sample.items() if k != optional} | {"event_id": "NEW-1"}
    (folder / "day=2026-07-01.jsonl").write_text(json.dumps(day) + "\n")
    second = ingest_object(spark, obj, data_root=str(project.data), writer=writer, run_id="r2")
    assert second.rows == first.rows + 1 and second.files_read == 1
    new = spark.table(second.table).where("event_id = 'NEW-1'").first()
    assert new[optional] is None


def test_an_explicit_schema_and_schema_hints_type_the_columns(spark, project, writer):
    obj = sample_object(project.configs, "erp-stores")
    header = (project.data / "erp" / "stores" / "stores.csv").read_text().splitlines()[0].split(",")
    first_column = header[0]
    ddl = ", ".join(f"`{c}` {'INT' if c == first_column else 'STRING'}" for c in header)
    typed = obj.model_copy(update={"source": obj.source.model_copy(update={"schema": ddl})})
    result = ingest_object(spark, typed, data_root=str(project.data), writer=writer, run_id="r1")
    assert dict(result.columns)[first_column] == "int"

    hints = f"`{first_column}` BIGINT, extra DATE"
    hinted = obj.model_copy(
        update={
            "source": obj.source.model_copy(update={"schema_hints": hints}),
            "target": obj.target.model_copy(update={"table": "erp_stores_hinted"}),
        }
    )
    result = ingest_object(spark, hinted, data_root=str(project.data), writer=writer, run_id="r2")
    columns = dict(result.columns)
    assert columns[first_column] == "bigint" and columns["extra"] == "date"
    assert columns[header[1]] == "string"  # not hinted: as the reader infers it
