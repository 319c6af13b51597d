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
    # event_ts is required by the object's expectation (a row without it is quarantined).
    optional = next(k for k in sample if k not in ("event_id", "event_type", "event_ts"))
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


# --------------------------------------------------------------------------- names and exact fits


def rescued(row) -> dict | None:
    return None if row[RESCUED_COLUMN] is None else json.loads(row[RESCUED_COLUMN])


def test_rescue_takes_names_with_dots_and_brackets_as_they_are(spark, project, writer):
    """`note.x` is a column of its own, not field `x` of `note`; a type change on
    `price.usd` is that column's, not `price`'s; nested names are whole too."""
    first = "id INT, note STRING, `price.usd` INT, s STRUCT<`x.y`: INT>"
    load(writer, rows(spark, first, [(1, "a", 10, (1,))]), "rescue")
    later = rows(
        spark,
        "id INT, note STRING, `price.usd` STRING, s STRUCT<`x.y`: INT, `z.w`: STRING>, "
        "`note.x` STRING, `a[0]` INT, `m{k}` INT",
        [(2, "b", "12x", (2, "q"), "new", 7, 8), (3, "c", "30", None, None, None, None)],
    )
    load(writer, later, "rescue")
    got = table_rows(spark, project)
    assert [(r["id"], r["note"], r["price.usd"], r["s"]) for r in got] == [
        (2, "b", None, (2,)),
        (3, "c", 30, None),
    ]
    assert rescued(got[0]) == {
        "price.usd": "12x",
        "s": '{"x.y":2,"z.w":"q"}',
        "note.x": "new",
        "a[0]": "7",
        "m{k}": "8",
    }
    assert rescued(got[1]) is None


def test_a_type_change_names_a_dotted_column_as_spark_quotes_it(spark, project, writer):
    load(writer, rows(spark, "id INT, `price.usd` INT", [(1, 10)]), "none")
    with pytest.raises(LoadRejected, match=r"`price.usd` \(int -> string\)"):
        load(writer, rows(spark, "id INT, `price.usd` STRING", [(2, "x")]), "none")


def test_rescue_keeps_values_that_do_not_fit_exactly(spark, project, writer):
    """A value cast with loss (2.5 into an int, rounded decimals, a time dropped
    from a date) goes to `_rescued_data`; a value that fits exactly does not."""
    ddl = "id INT, qty INT, price DECIMAL(10,2), day DATE, code DECIMAL(10,2), on DATE"
    load(writer, spark.createDataFrame([], ddl), "rescue", allow_empty=True)
    later = spark.sql(
        """SELECT * FROM VALUES
             (1, 2.5D, 1.2345BD, TIMESTAMP'2026-03-01 10:30:00', '1.234', '2026-03-01 10:30'),
             (2, 3.0D, 1.5000BD, TIMESTAMP'2026-03-02 00:00:00', '1.2', '2026-03-02')
           AS v(id, qty, price, day, code, on)"""
    )
    load(writer, later, "rescue")
    got = table_rows(spark, project)
    assert [(r["qty"], str(r["price"]), str(r["day"])) for r in got] == [
        (2, "1.23", "2026-03-01"),
        (3, "1.50", "2026-03-02"),
    ]
    assert rescued(got[0]) == {
        "qty": "2.5",
        "price": "1.2345",
        "day": "2026-03-01T10:30:00.000Z",
        "code": "1.234",
        "on": "2026-03-01 10:30",
    }
    assert rescued(got[1]) is None


@pytest.mark.parametrize("mode", ["none", "addNewColumns", "failOnNewColumns", "rescue"])
def test_a_column_renamed_only_by_case_is_the_same_column(spark, project, writer, mode):
    """Spark and Delta resolve names case-insensitively: `ID` is `id`."""
    load(writer, rows(spark, "id INT, s STRUCT<a: INT>", [(1, (10,))]), mode)
    load(writer, rows(spark, "ID INT, s STRUCT<A: INT>", [(2, (20,))]), mode)
    table = spark.table(project.table("t"))
    assert table.columns[:2] == ["id", "s"]
    assert [(r.id, r.s.a) for r in table.collect()] == [(2, 20)]
    if mode == "rescue":
        assert table.first()[RESCUED_COLUMN] is None


def test_source_columns_that_differ_only_by_case_are_refused_naming_them(spark, project, writer):
    load(writer, rows(spark, "id INT", [(1,)]), "addNewColumns")
    with pytest.raises(LoadRejected, match="differ only by case: id, ID"):
        load(writer, rows(spark, "id INT, ID INT", [(2, 3)]), "addNewColumns")
    assert version(spark, project) == 0
