"""Expectations in object configs: the field and its file defaults, and every
bad expression reported with its file and field at load time (no Spark)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from fanout_dagster.core.ingest import AUDIT_COLUMNS
from fanout_dagster.core.objects import expressions, load_objects
from fanout_dagster.core.schema_policy import RESCUED_COLUMN
from fanout_dagster_tests.core.test_objects import good_object, write
from fanout_dagster_tests.helpers import REPO_ROOT, SAMPLE_CONFIGS, child_env

SCHEMA = (
    "id INT, amount DECIMAL(10,2), email STRING, items ARRAY<INT>, address STRUCT<city: STRING>"
)


def with_schema(**overrides) -> dict:
    obj = good_object(**overrides)
    obj["source"]["schema"] = SCHEMA
    return obj


def errors_of(tmp_path, document) -> list[str]:
    write(tmp_path, "x.yaml", document)
    return [str(error) for error in load_objects(tmp_path).errors]


def test_an_object_declares_expectations_with_warn_as_the_default_action(tmp_path):
    rules = [
        {"name": "id_present", "expression": "id IS NOT NULL", "action": "fail"},
        {"name": "amount_not_negative", "expression": "amount >= 0"},
    ]
    write(tmp_path, "x.yaml", with_schema(expectations=rules))
    load = load_objects(tmp_path)
    assert load.errors == ()
    [obj] = load.objects
    assert [(e.name, e.expression, e.action) for e in obj.expectations] == [
        ("id_present", "id IS NOT NULL", "fail"),
        ("amount_not_negative", "amount >= 0", "warn"),
    ]
    assert obj.quarantine_table is None


def test_a_quarantine_rule_gives_the_object_a_quarantine_table(tmp_path):
    rule = {"name": "ok", "expression": "amount >= 0", "action": "quarantine"}
    write(tmp_path, "x.yaml", with_schema(expectations=[rule]))
    [obj] = load_objects(tmp_path).objects
    assert obj.quarantine_table == "hr_people_quarantine"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "amount >>= 0",
            "'amount >>= 0' is not valid Spark SQL: error near '>=' (line 1, column 10)",
        ),
        ("amount BETWEEN 1 AND", "is not valid Spark SQL"),
        ("email = 'open", "is not valid Spark SQL"),
        ("count(*) > 1", "must not hold an aggregate (COUNT(*))"),
        ("id IN (SELECT id FROM other)", "must not hold a subquery"),
        ("max(id) OVER () > 1", "must not hold a window function"),
        ("amount > 0; DROP TABLE x", "must be one expression, not 2 statements"),
        ("SELECT 1", "not a statement"),
        ("amount + 1", "is not a condition"),
        ("   ", "must not be empty"),
    ],
)
def test_an_expression_that_is_not_a_row_condition_names_file_and_field(
    tmp_path, expression, message
):
    rules = [{"name": "fine", "expression": "id > 0"}, {"name": "bad", "expression": expression}]
    [error] = errors_of(tmp_path, [good_object(), good_object("hr", "teams", expectations=rules)])
    assert error.startswith("x.yaml: [1].expectations[1].expression: "), error
    assert message in error
    # The valid object of the file still loads.
    assert [o.key for o in load_objects(tmp_path).objects] == ["hr-people"]


# Valid Spark SQL of many shapes over a row of SCHEMA; sqlglot must refuse none
# (test_expectations.py checks that Spark 4.1 analyses each one as a condition).
VALID_EXPRESSIONS = [
    "email RLIKE '^[^@]+@[^@]+$'",
    "email ILIKE '%@%'",
    "id <=> 1",
    "array_contains(items, 1)",
    "id::int > 0",
    "try_cast(email AS INT) IS NULL",
    "exists(items, x -> x > 0)",
    "forall(items, x -> x IS NOT NULL AND id > 0)",
    "id IS DISTINCT FROM 2",
    "to_date('2026-01-01') > current_date - INTERVAL 1 DAY",
    "id BETWEEN 0 AND 10",
    "CASE WHEN id > 0 THEN true ELSE false END",
    "email <> 'it''s'",
    "address.city = 'Paris'",
    "items[0] = 1",
    "length(email) BETWEEN 3 AND 254",
    "amount >= 0 OR amount IS NULL",
    "email LIKE ANY ('%a%', '%b%')",
    "`id` > 0",
    "amount > 1e3",
    "id > 10L",
    'email = "a@b.c"',
    "if(id > 0, true, false)",
    "aggregate(items, 0, (acc, x) -> acc + x) > 0",
    "current_user() IS NOT NULL AND user IS NOT NULL",
    "_load_id IS NOT NULL AND _ingested_at <= current_timestamp()",
]


def test_valid_spark_sql_of_many_shapes_is_accepted(tmp_path):
    rules = [{"name": f"r{i}", "expression": text} for i, text in enumerate(VALID_EXPRESSIONS)]
    write(tmp_path, "x.yaml", with_schema(expectations=rules))
    assert load_objects(tmp_path).errors == ()


def test_a_column_the_load_cannot_have_is_an_error_when_the_schema_is_known(tmp_path):
    rules = [
        {"name": "typo", "expression": "amout >= 0"},
        {"name": "fine", "expression": "AMOUNT >= 0 AND _source_file IS NOT NULL"},
        {"name": "rescued", "expression": "_rescued_data IS NULL"},
    ]
    errors = errors_of(tmp_path, with_schema(expectations=rules))
    assert errors == [
        "x.yaml: expectations[0].expression: 'amout >= 0' names column(s) amout that the load "
        "cannot have: source.schema has id, amount, email, items, address; the audit columns "
        "are " + ", ".join(AUDIT_COLUMNS),
        "x.yaml: expectations[2].expression: '_rescued_data IS NULL' names column(s) "
        "_rescued_data that the load cannot have: source.schema has id, amount, email, items, "
        "address; the audit columns are " + ", ".join(AUDIT_COLUMNS),
    ]
    # In rescue mode a load has _rescued_data.
    rescue = with_schema(expectations=rules[1:])
    rescue["target"]["schema_evolution_mode"] = "rescue"
    assert errors_of(tmp_path / "rescue", rescue) == []


def test_columns_are_not_checked_when_the_schema_is_inferred_or_a_table(tmp_path):
    rules = [{"name": "any", "expression": "whatever_column > 0"}]
    assert errors_of(tmp_path / "inferred", good_object(expectations=rules)) == []
    table = good_object(source={"table": "main.hr.people"}, expectations=rules)
    assert errors_of(tmp_path / "table", table) == []


def test_names_are_safe_unique_and_actions_known(tmp_path):
    rules = [
        {"name": "Has Id", "expression": "id > 0"},
        {"name": "dup", "expression": "id > 0"},
        {"name": "dup", "expression": "id > 1", "action": "expect_or_drop"},
        {"name": "x" * 65, "expression": "id > 0"},
        {"expression": "id > 0"},
        {"name": "extra", "expression": "id > 0", "severity": "high"},
    ]
    errors = errors_of(tmp_path, with_schema(expectations=rules))
    assert errors == [
        "x.yaml: expectations[0].name: 'Has Id' is not a safe name: use lower-case letters, "
        "digits and '_' (it names the expectation's Dagster asset check)",
        "x.yaml: expectations[2].action: 'expect_or_drop' is not one of warn, drop, fail, "
        "quarantine",
        "x.yaml: expectations[3].name: is 65 characters long; at most 64 allowed",
        "x.yaml: expectations[4].name: missing required field",
        "x.yaml: expectations[5].severity: unknown field (allowed: name, expression, action)",
        "x.yaml: expectations[2].name: 'dup' is declared twice (also expectations[1])",
    ]


def test_file_defaults_are_merged_by_name_and_their_errors_placed_on_them(tmp_path):
    document: dict[str, Any] = {
        "defaults": {
            "expectations": [
                {"name": "id_present", "expression": "id IS NOT NULL", "action": "fail"},
                {"name": "amount_not_negative", "expression": "amount >= 0"},
                {"name": "city_known", "expression": "address.cty IS NOT NULL"},
            ]
        },
        "objects": [
            # Takes the defaults, replacing one by name; its own come first.
            with_schema(
                expectations=[
                    {"name": "amount_not_negative", "expression": "amount > 0", "action": "drop"},
                    {"name": "email_present", "expression": "email IS NOT NULL"},
                ]
            ),
            # An inferred schema: the defaults' columns cannot be checked, so it loads.
            good_object("hr", "teams"),
        ],
    }
    write(tmp_path, "d.yaml", document)
    load = load_objects(tmp_path)
    # address.cty is field cty of column address: a column the schema has.
    assert load.errors == ()
    people, teams = load.objects
    assert [(e.name, e.expression, e.action) for e in people.expectations] == [
        ("amount_not_negative", "amount > 0", "drop"),
        ("email_present", "email IS NOT NULL", "warn"),
        ("id_present", "id IS NOT NULL", "fail"),
        ("city_known", "address.cty IS NOT NULL", "warn"),
    ]
    assert [e.name for e in teams.expectations] == [
        "id_present",
        "amount_not_negative",
        "city_known",
    ]

    # A default naming a column one object's schema lacks: reported on the defaults.
    document["defaults"]["expectations"][2]["expression"] = "town IS NOT NULL"
    write(tmp_path, "d.yaml", document)
    load = load_objects(tmp_path)
    assert [str(e) for e in load.errors] == [
        "d.yaml: defaults.expectations[2].expression: 'town IS NOT NULL' names column(s) town "
        "that the load cannot have: source.schema has id, amount, email, items, address; the "
        "audit columns are " + ", ".join(AUDIT_COLUMNS) + " (in objects[0])"
    ]
    assert [o.key for o in load.objects] == ["hr-teams"]

    # A bad default expression holds back the file's objects, as any bad default does.
    document["defaults"]["expectations"][2]["expression"] = "town IS NOT"
    write(tmp_path, "d.yaml", document)
    load = load_objects(tmp_path)
    assert load.objects == ()
    assert str(load.errors[0]).startswith(
        "d.yaml: defaults.expectations[2].expression: 'town IS NOT' is not valid Spark SQL"
    )


def test_a_quarantine_table_may_not_clash_with_another_table(tmp_path):
    quarantining = good_object(
        table="orders", expectations=[{"name": "q", "expression": "id > 0", "action": "quarantine"}]
    )
    write(tmp_path, "a.yaml", quarantining)
    write(tmp_path, "b.yaml", good_object("hr", "teams", table="orders_quarantine"))
    load = load_objects(tmp_path)
    assert load.objects == ()
    assert sorted(str(e) for e in load.errors) == [
        "a.yaml: hr-people: duplicate table 'orders_quarantine': also declared in b.yaml",
        "b.yaml: hr-teams: duplicate table 'orders_quarantine': also declared in a.yaml",
    ]
    # And its name must fit.
    long_table = good_object(
        table="t" * 120,
        expectations=[{"name": "q", "expression": "id > 0", "action": "quarantine"}],
    )
    [error] = errors_of(tmp_path / "long", long_table)
    assert error.startswith("x.yaml: target.table: is too long for a quarantine table beside it")


def test_expectations_count_in_the_config_hash_but_not_their_order(tmp_path):
    one = {"name": "a", "expression": "id > 0"}
    two = {"name": "b", "expression": "id < 9", "action": "drop"}

    def config_hash(folder, **overrides) -> str:
        write(tmp_path / folder, "x.yaml", good_object(**overrides))
        load = load_objects(tmp_path / folder)
        assert load.errors == ()
        return load.objects[0].config_hash

    plain = config_hash("plain")
    assert config_hash("empty", expectations=[]) == plain  # none: the hash of before
    both = config_hash("both", expectations=[one, two])
    assert both != plain
    assert config_hash("reordered", expectations=[two, one]) == both
    assert config_hash("other action", expectations=[one, {**two, "action": "fail"}]) != both
    assert config_hash("other rule", expectations=[one, {**two, "expression": "id < 8"}]) != both


def test_the_audit_columns_known_without_spark_are_ingests():
    assert expressions.AUDIT_COLUMNS == AUDIT_COLUMNS
    assert expressions.RESCUED_COLUMN == RESCUED_COLUMN


def test_without_sqlglot_configs_load_and_spark_has_the_last_word(tmp_path):
    """The remote side of a Pipes run has no sqlglot: expressions are not checked
    there (the orchestrator checked them), and nothing fails for its absence."""
    rules = [
        {"name": "fine", "expression": "amount >= 0"},
        {"name": "typo", "expression": "amout >>= 0"},
    ]
    write(tmp_path, "x.yaml", with_schema(expectations=rules))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["sqlglot"] = None  # import sqlglot raises ImportError
        from fanout_dagster.core.objects import load_objects
        load = load_objects({str(tmp_path)!r})
        assert load.errors == (), load.errors
        print([e.expression for e in load.objects[0].expectations])
        assert "sqlglot" not in [m for m in sys.modules if sys.modules[m] is not None]
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['amount >= 0', 'amout >>= 0']"
    # With sqlglot (the orchestrator), the same file is refused.
    assert load_objects(tmp_path).objects == ()


def test_the_sample_configs_show_every_action():
    objects = load_objects(SAMPLE_CONFIGS).objects
    actions = {e.action for obj in objects for e in obj.expectations}
    assert actions == {"warn", "drop", "fail", "quarantine"}
    assert {obj.target.mode for obj in objects if obj.quarantine_table} == {"overwrite", "append"}
