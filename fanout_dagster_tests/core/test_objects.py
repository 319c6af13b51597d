"""The object config loader: sample configs, keys, config hashes, and every
kind of bad input reported with its file and field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._utils.schedules import is_valid_cron_string

from fanout_dagster.core.objects import (
    MAX_IDENT_LEN,
    SOURCE_FORMATS,
    WRITE_MODES,
    ConfigError,
    ObjectConfig,
    ParseCacheStats,
    SourceSpec,
    TargetSpec,
    clear_parse_cache,
    config_file_json_schema,
    load_objects,
    parse_cache_stats,
    parse_config_file,
)
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS

SAFE_KEY = re.compile(r"^[a-z0-9][a-z0-9_]*-[a-z0-9][a-z0-9_]*$")

GOOD = """\
code: hr
name: people
source:
  format: csv
  path: hr/people/*.csv
  options:
    header: true
target:
  table: hr_people
  mode: overwrite
"""


def good_object(code="hr", name="people", table=None, **overrides) -> dict:
    obj = {
        "code": code,
        "name": name,
        "source": {"format": "csv", "path": f"{code}/{name}/*.csv", "options": {"header": True}},
        "target": {"table": table or f"{code}_{name}", "mode": "overwrite"},
    }
    obj.update(overrides)
    return obj


def write(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    )
    return path


# --------------------------------------------------------------------------- samples


def test_sample_configs_load_without_errors():
    load = load_objects(SAMPLE_CONFIGS)
    assert load.errors == ()
    assert len(load.objects) >= 12
    assert len({obj.source.format for obj in load.objects}) >= 2
    assert {obj.source.format for obj in load.objects} <= set(SOURCE_FORMATS)
    assert {obj.target.mode for obj in load.objects} <= set(WRITE_MODES)

    # Both file shapes are present, and every object of every file was loaded.
    shapes = {}
    for path in sorted(SAMPLE_CONFIGS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        shapes[path.name] = document
        declared = len(document) if isinstance(document, list) else 1
        loaded = [obj for obj in load.objects if obj.config_file == path.name]
        assert len(loaded) == declared, path.name
    assert any(isinstance(doc, list) and len(doc) > 1 for doc in shapes.values())
    assert any(isinstance(doc, dict) for doc in shapes.values())


def test_sample_keys_are_code_dash_name_in_the_safe_alphabet():
    objects = load_objects(SAMPLE_CONFIGS).objects
    keys = [obj.key for obj in objects]
    assert len(keys) == len(set(keys))
    for obj in objects:
        assert obj.key == f"{obj.code}-{obj.name}"
        assert SAFE_KEY.match(obj.key), obj.key
        assert "," not in obj.key and " " not in obj.key
        # The key splits back unambiguously.
        assert obj.key.split("-") == [obj.code, obj.name]
    assert len({obj.target.table for obj in objects}) == len(objects)


# --------------------------------------------------------------------------- config hash


def test_config_hash_is_stable_across_reformatting_and_moving(tmp_path):
    mapping_file = write(tmp_path / "a", "one.yaml", GOOD)
    original = load_objects(tmp_path / "a").objects[0]

    # Same object: flow style, other key order, explicit defaults, in a list,
    # in another file (in a sub-folder), next to another object.
    reformatted = """\
- {name: other, code: hr, target: {table: hr_other}, source: {path: x/*.csv, format: csv}}
- target: {mode: overwrite, table: hr_people}
  cluster: default
  source:
    options: {header: yes}
    path: 'hr/people/*.csv'
    format: "csv"
  name: people
  code: hr
"""
    write(tmp_path / "b" / "nested", "moved.yml", reformatted)
    moved = load_objects(tmp_path / "b").by_key()["hr-people"]

    assert mapping_file.name == original.config_file
    assert moved.config_file == "nested/moved.yml"
    assert moved.model_copy(update={"config_file": original.config_file}) == original
    assert moved.config_hash == original.config_hash


@pytest.mark.parametrize(
    "change",
    [
        ("code", lambda o: o.update(code="hr2")),
        ("name", lambda o: o.update(name="people2")),
        ("cluster", lambda o: o.update(cluster="heavy")),
        ("source.format", lambda o: o["source"].update(format="json")),
        ("source.path", lambda o: o["source"].update(path="hr/people/2026/*.csv")),
        ("source.options value", lambda o: o["source"]["options"].update(header=False)),
        ("source.options added", lambda o: o["source"]["options"].update(sep=";")),
        ("source.options removed", lambda o: o["source"].pop("options")),
        ("target.table", lambda o: o["target"].update(table="hr_people_v2")),
        ("target.mode", lambda o: o["target"].update(mode="append")),
    ],
    ids=lambda c: c[0],
)
def test_config_hash_changes_when_a_field_changes(tmp_path, change):
    _, mutate = change
    base = good_object()
    write(tmp_path / "base", "x.yaml", base)
    changed = good_object()
    mutate(changed)
    write(tmp_path / "changed", "x.yaml", changed)
    before = load_objects(tmp_path / "base")
    after = load_objects(tmp_path / "changed")
    assert before.errors == () and after.errors == ()
    assert before.objects[0].config_hash != after.objects[0].config_hash


# --------------------------------------------------------------------------- bad input


def only_error(folder: Path, file_name: str) -> ConfigError:
    load = load_objects(folder)
    assert load.objects == ()
    assert load.errors, "expected an error"
    assert {e.file for e in load.errors} == {file_name}
    return load.errors[0]


def test_malformed_yaml_reports_line_and_column(tmp_path):
    write(tmp_path, "broken.yaml", "code: erp\nname: x\nsource:\n  format: csv\n   path: [a\n")
    error = only_error(tmp_path, "broken.yaml")
    assert "malformed YAML" in error.message
    match = re.fullmatch(r"line (\d+), column (\d+)", error.field)
    assert match, error.field
    assert int(match.group(1)) == 5  # the badly indented line
    assert str(error).startswith("broken.yaml: line 5, column")


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("just a string\n", "got str"),
        ("42\n", "got int"),
        ("[]\n", "empty list"),
    ],
    ids=["empty", "comment-only", "scalar-str", "scalar-int", "empty-list"],
)
def test_file_level_problems_name_the_file(tmp_path, content, message):
    write(tmp_path, "bad.yaml", content)
    error = only_error(tmp_path, "bad.yaml")
    assert message in error.message
    assert str(error).startswith("bad.yaml: ")


def _without(key):
    def mutate(o):
        o.pop(key)

    return mutate


def _set(path, value):
    def mutate(o):
        node = o
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _table_source(table="main.erp_raw.customers", **extra):
    def mutate(o):
        o["source"] = {"table": table, **extra}

    return mutate


BAD_FIELDS = [
    # (id, mutation, expected field, expected words in the message)
    ("missing-target", _without("target"), "target", "missing required field"),
    ("missing-code", _without("code"), "code", "missing required field"),
    (
        "missing-source-path",
        lambda o: o["source"].pop("path"),
        "source.path",
        "missing required field",
    ),
    ("unknown-top-level", _set("owner", "me"), "owner", "unknown field"),
    (
        "unknown-in-source",
        _set("source.compression", "gzip"),
        "source.compression",
        "unknown field",
    ),
    (
        "unknown-in-target",
        _set("target.partition_by", "day"),
        "target.partition_by",
        "unknown field",
    ),
    ("code-int", _set("code", 123), "code", "must be a string, got int"),
    ("options-list", _set("source.options", ["header"]), "source.options", "got list"),
    (
        "option-value-dict",
        _set("source.options.header", {"a": 1}),
        "source.options.header",
        "got dict",
    ),
    ("source-not-mapping", _set("source", "hr/people.csv"), "source", "must be a mapping"),
    ("bad-format", _set("source.format", "xml"), "source.format", "'xml' is not one of"),
    ("bad-mode", _set("target.mode", "merge"), "target.mode", "'merge' is not one of"),
    ("code-comma", _set("code", "h,r"), "code", "not a safe identifier"),
    ("name-space", _set("name", "my people"), "name", "not a safe identifier"),
    ("name-upper", _set("name", "People"), "name", "not a safe identifier"),
    ("name-dash", _set("name", "peo-ple"), "name", "not a safe identifier"),
    ("code-dash", _set("code", "h-r"), "code", "not a safe identifier"),
    ("name-too-long", _set("name", "p" * (MAX_IDENT_LEN + 1)), "name", "at most 40"),
    ("cluster-upper", _set("cluster", "Heavy"), "cluster", "not a safe identifier"),
    (
        "table-sql",
        _set("target.table", "x; DROP TABLE y"),
        "target.table",
        "not a plain table name",
    ),
    ("table-dotted", _set("target.table", "a.b"), "target.table", "not a plain table name"),
    ("table-single-quote", _set("target.table", "x'y"), "target.table", "not a plain table name"),
    ("table-double-quote", _set("target.table", '"x"'), "target.table", "not a plain table name"),
    ("table-backtick", _set("target.table", "`x`"), "target.table", "not a plain table name"),
    # The Parquet writer's own folders sit next to the tables: _staging, _trash.
    (
        "table-leading-underscore",
        _set("target.table", "_staging"),
        "target.table",
        "starting with a letter",
    ),
    ("table-leading-digit", _set("target.table", "1x"), "target.table", "starting with a letter"),
    ("path-dotdot", _set("source.path", "../x"), "source.path", "inside the data root"),
    ("path-dotdot-inner", _set("source.path", "hr/../../x"), "source.path", "inside the data root"),
    ("path-absolute", _set("source.path", "/etc/passwd"), "source.path", "not absolute"),
    ("path-s3-uri", _set("source.path", "s3://x"), "source.path", "not a URI"),
    ("path-file-uri", _set("source.path", "file:///etc/passwd"), "source.path", "not a URI"),
    ("path-empty", _set("source.path", " "), "source.path", "must not be empty"),
    # Identifiers are matched whole: a trailing newline (a YAML block scalar) does not pass.
    ("code-newline", _set("code", "hr\n"), "code", "not a safe identifier"),
    ("name-newline", _set("name", "people\n"), "name", "not a safe identifier"),
    ("cluster-newline", _set("cluster", "heavy\n"), "cluster", "not a safe identifier"),
    ("table-newline", _set("target.table", "hr_people\n"), "target.table", "not a plain table"),
    ("path-newline", _set("source.path", "hr/*.csv\n"), "source.path", "control characters"),
    # Globs that Spark (Hadoop) and Python read differently.
    ("path-braces", _set("source.path", "hr/{a,b}/*.csv"), "source.path", "one object per"),
    ("path-brace-escape", _set("source.path", "{..,hr}/x.csv"), "source.path", "brace"),
    ("path-double-star", _set("source.path", "hr/**/*.csv"), "source.path", "folder path"),
    # New fields.
    (
        "schema-unknown-type",
        _set("source.schema", "id INT, name strng"),
        "source.schema",
        "unknown type 'strng' for column 'name'",
    ),
    ("schema-duplicate", _set("source.schema", "a INT, a INT"), "source.schema", "duplicate"),
    ("schema-int", _set("source.schema", 5), "source.schema", "must be a string, got int"),
    ("schema-empty", _set("source.schema", ""), "source.schema", "is empty"),
    ("hints-malformed", _set("source.schema_hints", "a INT b"), "source.schema_hints", "expected"),
    (
        "schema-and-hints",
        lambda o: o["source"].update(schema="a INT", schema_hints="a BIGINT"),
        "source.schema_hints",
        "not both",
    ),
    ("watch-str", _set("source.watch", "yes"), "source.watch", "must be true or false, got str"),
    (
        "evolution-unknown",
        _set("target.schema_evolution_mode", "merge"),
        "target.schema_evolution_mode",
        "'merge' is not one of addNewColumns, failOnNewColumns, rescue, none",
    ),
    (
        "evolution-case",
        _set("target.schema_evolution_mode", "addnewcolumns"),
        "target.schema_evolution_mode",
        "did you mean 'addNewColumns'",
    ),
    (
        "evolution-add-with-schema",
        lambda o: (
            o["source"].update(schema="a INT"),
            o["target"].update(schema_evolution_mode="addNewColumns"),
        ),
        "target.schema_evolution_mode",
        "addNewColumns needs an inferred schema",
    ),
    ("on-empty-bad", _set("target.on_empty", "skip"), "target.on_empty", "is not one of fail"),
    ("schedule-bad-hour", _set("schedule", "0 25 * * *"), "schedule", "not a valid cron"),
    ("schedule-words", _set("schedule", "every day"), "schedule", "not a valid cron"),
    ("schedule-6-fields", _set("schedule", "0 0 6 * * *"), "schedule", "not a valid cron"),
    ("schedule-newline", _set("schedule", "0 6 * * *\n"), "schedule", "line breaks"),
    ("schedule-int", _set("schedule", 6), "schedule", "must be a string, got int"),
    ("retries-high", _set("retries", 11), "retries", "between 0 and 10, got 11"),
    ("retries-negative", _set("retries", -1), "retries", "between 0 and 10"),
    ("retries-str", _set("retries", "2"), "retries", "must be an integer, got str"),
    ("retries-float", _set("retries", 2.5), "retries", "must be an integer, got float"),
    ("retries-bool", _set("retries", True), "retries", "must be an integer, got bool"),
    # Table sources.
    ("table-source-format", _table_source(format="csv"), "source.format", "takes no format"),
    ("table-source-path", _table_source(path="x/*.csv"), "source.path", "takes no path"),
    ("table-source-watch", _table_source(watch=True), "source.watch", "watch needs a file source"),
    ("table-source-hints", _table_source(schema_hints="a INT"), "source.schema_hints", "files"),
    ("table-source-options", _table_source(options={"a": 1}), "source.options", "takes none"),
    (
        "table-source-append",
        lambda o: (_table_source()(o), o["target"].update(mode="append")),
        "target.mode",
        "append ingests files; a table source is overwritten",
    ),
    ("table-source-4-parts", _table_source(table="a.b.c.d"), "source.table", "not a table name"),
    ("table-source-space", _table_source(table="main.erp raw"), "source.table", "not a table"),
    ("table-source-sql", _table_source(table="x;drop"), "source.table", "not a table name"),
    ("table-source-newline", _table_source(table="main.x\n"), "source.table", "not a table"),
    ("table-source-int", _table_source(table=5), "source.table", "must be a string, got int"),
    ("format-table", _set("source.format", "table"), "source.format", "source.table"),
    ("missing-format", lambda o: o["source"].pop("format"), "source.format", "missing required"),
    ("config-file-key", _set("config_file", "x.yaml"), "config_file", "unknown field"),
    # Reader options that point Spark at another location than source.path.
    ("option-path", _set("source.options.path", "/etc"), "source.options.path", "location"),
    ("option-paths", _set("source.options.paths", '["/etc"]'), "source.options.paths", "location"),
    ("option-PATH", _set("source.options.PATH", "x"), "source.options.PATH", "location"),
    (
        "option-basePath",
        _set("source.options.basePath", "/"),
        "source.options.basePath",
        "location",
    ),
    (
        "option-badRecordsPath",
        _set("source.options.badRecordsPath", "/tmp/bad"),
        "source.options.badRecordsPath",
        "another location",
    ),
    (
        "option-checkpointLocation",
        _set("source.options.checkpointLocation", "/tmp/c"),
        "source.options.checkpointLocation",
        "another location",
    ),
    (
        "option-same-in-other-case",
        _set("source.options.HEADER", False),
        "source.options.HEADER",
        "same option as 'header'",
    ),
]


@pytest.mark.parametrize("case", BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
@pytest.mark.parametrize("shape", ["mapping", "list"])
def test_bad_field_is_reported_with_file_and_field(tmp_path, case, shape):
    _, mutate, field, words = case
    bad = good_object()
    mutate(bad)
    if shape == "mapping":
        write(tmp_path, "bad.yaml", bad)
        prefix = ""
    else:
        # A valid object first: the bad one is item [1] of the list.
        write(tmp_path, "bad.yaml", [good_object("ok", "first"), bad])
        prefix = "[1]."
    # Schedules as the Dagster side checks them (orchestration's ObjectConfigs).
    load = load_objects(tmp_path, cron_check=is_valid_cron_string)
    errors = [e for e in load.errors if e.field == prefix + field]
    assert errors, f"no error on {prefix + field}: {[str(e) for e in load.errors]}"
    assert all(e.file == "bad.yaml" for e in load.errors)
    assert any(words in e.message for e in errors), [e.message for e in errors]
    assert str(errors[0]).startswith(f"bad.yaml: {prefix}{field}: ")
    # The bad object is not loaded; a valid neighbour in the same file is.
    assert [obj.key for obj in load.objects] == ([] if shape == "mapping" else ["ok-first"])


@pytest.mark.parametrize("value", ["a" * MAX_IDENT_LEN, "0abc", "a_1"])
def test_identifier_edge_cases_that_are_valid(tmp_path, value):
    write(tmp_path, "ok.yaml", good_object(code=value, table="t"))
    load = load_objects(tmp_path)
    assert load.errors == ()
    assert load.objects[0].key == f"{value}-people"


def test_list_item_that_is_not_a_mapping(tmp_path):
    write(tmp_path, "mixed.yaml", [good_object(), "not an object"])
    load = load_objects(tmp_path)
    assert [obj.key for obj in load.objects] == ["hr-people"]
    assert [(e.file, e.field) for e in load.errors] == [("mixed.yaml", "[1]")]
    assert "expected an object" in load.errors[0].message


def test_every_error_of_an_object_is_reported(tmp_path):
    bad = good_object()
    bad["source"]["format"] = "xml"
    bad["target"]["mode"] = "merge"
    bad["name"] = "Bad Name"
    write(tmp_path, "bad.yaml", bad)
    fields = {e.field for e in load_objects(tmp_path).errors}
    assert {"source.format", "target.mode", "name"} <= fields


# --------------------------------------------------------------------------- across files


def test_duplicate_partition_key_across_files_rejects_both_and_names_both(tmp_path):
    write(tmp_path, "a.yaml", [good_object(table="t_a"), good_object("hr", "teams")])
    write(tmp_path, "b.yaml", good_object(table="t_b"))  # same key hr-people, other table
    load = load_objects(tmp_path)
    assert sorted(obj.key for obj in load.objects) == ["hr-teams"]
    dup = [e for e in load.errors if "duplicate partition key" in e.message]
    assert {e.file for e in dup} == {"a.yaml", "b.yaml"}
    for error in dup:
        other = "b.yaml" if error.file == "a.yaml" else "a.yaml"
        assert "hr-people" in error.message and other in error.message
        assert error.field == "hr-people"
    assert load.invalid_files == ["a.yaml", "b.yaml"]


def test_duplicate_target_table_across_files_rejects_both(tmp_path):
    write(tmp_path, "a.yaml", good_object("hr", "people", table="shared"))
    write(tmp_path, "b.yaml", good_object("crm", "people", table="shared"))
    write(tmp_path, "c.yaml", good_object("fin", "rates"))
    load = load_objects(tmp_path)
    assert [obj.key for obj in load.objects] == ["fin-rates"]
    dup = [e for e in load.errors if "duplicate table 'shared'" in e.message]
    assert {e.file for e in dup} == {"a.yaml", "b.yaml"}
    assert any("b.yaml" in e.message for e in dup if e.file == "a.yaml")
    assert any("a.yaml" in e.message for e in dup if e.file == "b.yaml")


def test_bad_files_do_not_hide_valid_objects_of_other_files(project):
    sample_keys = project.keys
    write(project.configs, "zz_malformed.yaml", "code: [\n")
    write(
        project.configs,
        "aa_bad_field.yaml",
        [good_object("hr", "a", **{"owner": "x"}), good_object("hr", "b")],
    )
    write(project.configs, "sub/empty.yml", "")
    load = load_objects(project.configs)
    assert sorted(obj.key for obj in load.objects) == sorted(sample_keys + ["hr-b"])
    assert load.invalid_files == ["aa_bad_field.yaml", "sub/empty.yml", "zz_malformed.yaml"]


def test_missing_configs_folder_is_an_error(tmp_path):
    load = load_objects(tmp_path / "nope")
    assert load.objects == ()
    assert "does not exist" in load.errors[0].message


def test_every_error_of_an_object_is_reported_with_the_rules_across_fields(tmp_path):
    bad = good_object(retries=99)
    bad["source"] = {"table": "main.erp_raw.x", "format": "csv", "watch": True}
    bad["target"]["mode"] = "append"
    bad["target"]["on_empty"] = "never"
    write(tmp_path, "bad.yaml", bad)
    fields = {e.field for e in load_objects(tmp_path).errors}
    assert fields == {
        "retries",
        "source.format",
        "source.watch",
        "target.mode",
        "target.on_empty",
    }


def test_a_trailing_newline_from_a_block_scalar_is_refused(tmp_path):
    write(
        tmp_path,
        "bad.yaml",
        "code: |\n  hr\nname: people\nsource: {format: csv, path: a.csv}\ntarget: {table: t}\n",
    )
    (error,) = load_objects(tmp_path).errors
    assert str(error).startswith("bad.yaml: code: 'hr\\n' is not a safe identifier")


# --------------------------------------------------------------------------- new fields


@pytest.mark.parametrize(
    "change, check",
    [
        (
            lambda o: o["source"].update(schema="id INT, amount DECIMAL(10,2), at TIMESTAMP"),
            lambda obj: (
                obj.source.schema == "id INT, amount DECIMAL(10,2), at TIMESTAMP"
                and obj.source.schema_columns
                == [("id", "int"), ("amount", "decimal(10,2)"), ("at", "timestamp")]
                and obj.target.schema_evolution_mode == "none"
            ),
        ),
        (
            lambda o: o["source"].update(schema_hints="amount DECIMAL(10,2)"),
            lambda obj: (
                obj.source.schema_hint_columns == [("amount", "decimal(10,2)")]
                and obj.source.schema is None
                and obj.source.schema_columns is None
                and obj.target.schema_evolution_mode == "addNewColumns"
            ),
        ),
        (lambda o: o["source"].update(watch=True), lambda obj: obj.source.watch is True),
        (lambda o: o["target"].update(mode="append"), lambda obj: obj.target.mode == "append"),
        (
            lambda o: o["target"].update(schema_evolution_mode="rescue"),
            lambda obj: obj.target.schema_evolution_mode == "rescue",
        ),
        (
            lambda o: (
                o["source"].update(schema="a INT"),
                o["target"].update(schema_evolution_mode="failOnNewColumns"),
            ),
            lambda obj: obj.target.schema_evolution_mode == "failOnNewColumns",
        ),
        (
            lambda o: o["target"].update(on_empty="allow"),
            lambda obj: obj.target.on_empty == "allow",
        ),
        (lambda o: o.update(schedule="0 6 * * *"), lambda obj: obj.schedule == "0 6 * * *"),
        (lambda o: o.update(schedule="*/15 * * * 1-5"), lambda obj: obj.schedule is not None),
        (lambda o: o.update(schedule="@daily"), lambda obj: obj.schedule == "@daily"),
        (lambda o: o.update(retries=0), lambda obj: obj.retries == 0),
        (lambda o: o.update(retries=10), lambda obj: obj.retries == 10),
    ],
)
def test_new_fields_accept_good_values(tmp_path, change, check):
    obj = good_object()
    change(obj)
    write(tmp_path, "ok.yaml", obj)
    load = load_objects(tmp_path)
    assert load.errors == ()
    assert check(load.objects[0])


def test_defaults_of_the_new_fields(tmp_path):
    write(tmp_path, "ok.yaml", GOOD)
    (obj,) = load_objects(tmp_path).objects
    assert obj.source.schema is None and obj.source.schema_hints is None
    assert obj.source.watch is False and obj.source.table is None
    assert obj.target.mode == "overwrite"
    assert obj.target.schema_evolution_mode == "addNewColumns"
    assert obj.target.on_empty == "fail"
    assert obj.schedule is None and obj.retries is None
    # Built in Python, the effective evolution mode follows the schema too.
    spec = ObjectConfig(
        code="a",
        name="b",
        source=SourceSpec("csv", "a/*.csv", schema="x INT"),
        target=TargetSpec(table="t"),
    )
    assert spec.target.schema_evolution_mode == "none"


def test_a_table_source(tmp_path):
    obj = good_object()
    obj["source"] = {"table": "main.erp_raw.customers", "schema": "id INT", "options": {}}
    write(tmp_path, "ok.yaml", [obj, good_object("hr", "teams")])
    load = load_objects(tmp_path)
    assert load.errors == ()
    table = load.by_key()["hr-people"]
    assert table.source.table == "main.erp_raw.customers"
    assert table.source.format == "table" and table.source.path == ""
    assert table.source.options == {} and table.source.schema == "id INT"
    assert table.target.mode == "overwrite"
    assert load.by_key()["hr-teams"].source.table is None
    for name in ("customers", "erp_raw.customers", "_x.Y_1.z"):
        assert SourceSpec(table=name).table == name


# --------------------------------------------------------------------------- hashes

# The object GOOD's config hash as the dataclass loader computed it: objects
# that use none of the new fields keep their hash, so none re-runs on deploy.
GOOD_HASH_BEFORE_PYDANTIC = "d4e66041b032365e"


def test_config_hash_of_an_object_without_new_fields_is_unchanged(tmp_path):
    write(tmp_path, "one.yaml", GOOD)
    assert load_objects(tmp_path).objects[0].config_hash == GOOD_HASH_BEFORE_PYDANTIC
    # Spelling out a default changes nothing.
    spelled = good_object(schedule=None, retries=None)
    spelled["source"].update(watch=False, schema=None, schema_hints=None, table=None)
    spelled["target"].update(schema_evolution_mode="addNewColumns", on_empty="fail")
    write(tmp_path / "spelled", "one.yaml", spelled)
    assert load_objects(tmp_path / "spelled").objects[0].config_hash == GOOD_HASH_BEFORE_PYDANTIC


SOURCE_CHANGES = [
    ("format", lambda o: o["source"].update(format="json")),
    ("path", lambda o: o["source"].update(path="hr/people/2026/*.csv")),
    ("options", lambda o: o["source"]["options"].update(sep=";")),
    ("schema", lambda o: o["source"].update(schema="a INT")),
    ("schema_hints", lambda o: o["source"].update(schema_hints="a INT")),
    ("table", lambda o: o.update(source={"table": "main.hr.people"})),
]
OTHER_CHANGES = [
    ("watch", lambda o: o["source"].update(watch=True)),
    ("target.mode", lambda o: o["target"].update(mode="append")),
    ("target.table", lambda o: o["target"].update(table="hr_people_v2")),
    ("schema_evolution_mode", lambda o: o["target"].update(schema_evolution_mode="rescue")),
    ("on_empty", lambda o: o["target"].update(on_empty="allow")),
    ("schedule", lambda o: o.update(schedule="0 6 * * *")),
    ("retries", lambda o: o.update(retries=3)),
    ("cluster", lambda o: o.update(cluster="heavy")),
]


def _hashes(folder: Path, obj: dict) -> tuple[str, str]:
    write(folder, "x.yaml", obj)
    load = load_objects(folder)
    assert load.errors == (), load.errors
    return load.objects[0].config_hash, load.objects[0].source_hash


@pytest.mark.parametrize("change", SOURCE_CHANGES + OTHER_CHANGES, ids=lambda c: c[0])
def test_config_hash_changes_with_every_field_source_hash_with_the_source_only(tmp_path, change):
    name, mutate = change
    base_config, base_source = _hashes(tmp_path / "base", good_object())
    changed = good_object()
    mutate(changed)
    config, source = _hashes(tmp_path / "changed", changed)
    assert len(config) == len(source) == 16
    assert config != base_config
    if (name, mutate) in SOURCE_CHANGES:
        assert source != base_source
    else:
        assert source == base_source


def test_hashes_ignore_how_a_schema_is_written(tmp_path):
    one = good_object()
    one["source"]["schema"] = "id INT, amount DECIMAL(10,2)"
    other = good_object()
    other["source"]["schema"] = "id  integer,\n  AMOUNT_x dec(10, 2)".replace("AMOUNT_x", "amount")
    assert _hashes(tmp_path / "a", one) == _hashes(tmp_path / "b", other)


# --------------------------------------------------------------------------- defaults

DEFAULTS_FILE = """\
defaults:
  cluster: heavy
  schedule: "0 6 * * *"
  retries: 2
  source: {watch: true, options: {header: true, sep: ";"}}
  target: {mode: append, schema_evolution_mode: rescue, on_empty: allow}
objects:
  - code: erp
    name: orders
    source: {format: csv, path: erp/orders/*.csv, options: {sep: ","}}
    target: {table: erp_orders}
  - code: erp
    name: stores
    source: {format: csv, path: erp/stores/*.csv, watch: false}
    target: {table: erp_stores, mode: overwrite, on_empty: fail}
    cluster: default
    schedule: "30 7 * * 1-5"
    retries: 0
  - code: erp
    name: customers
    source: {table: main.erp_raw.customers}
    target: {table: erp_customers, mode: overwrite}
"""


def test_defaults_are_merged_under_each_object_and_the_object_wins(tmp_path):
    write(tmp_path, "erp.yaml", DEFAULTS_FILE)
    load = load_objects(tmp_path)
    assert load.errors == ()
    orders, stores, customers = (
        load.by_key()[f"erp-{n}"] for n in ("orders", "stores", "customers")
    )

    assert (orders.cluster, orders.schedule, orders.retries) == ("heavy", "0 6 * * *", 2)
    assert orders.source.watch is True
    assert orders.source.options == {"header": True, "sep": ","}  # merged key by key
    assert orders.target.mode == "append"
    assert orders.target.schema_evolution_mode == "rescue"
    assert orders.target.on_empty == "allow"

    assert (stores.cluster, stores.schedule, stores.retries) == ("default", "30 7 * * 1-5", 0)
    assert stores.source.watch is False
    assert stores.source.options == {"header": True, "sep": ";"}
    assert (stores.target.mode, stores.target.on_empty) == ("overwrite", "fail")

    # Source defaults are for files: a table source takes none of them.
    assert customers.source.table == "main.erp_raw.customers"
    assert customers.source.options == {} and customers.source.watch is False
    assert customers.schedule == "0 6 * * *" and customers.target.on_empty == "allow"


def test_an_object_from_a_defaults_file_hashes_like_the_same_object_written_out(tmp_path):
    write(tmp_path / "a", "erp.yaml", DEFAULTS_FILE)
    from_defaults = load_objects(tmp_path / "a").by_key()["erp-orders"]
    written_out = {
        "code": "erp",
        "name": "orders",
        "source": {
            "format": "csv",
            "path": "erp/orders/*.csv",
            "options": {"sep": ",", "header": True},
            "watch": True,
        },
        "target": {
            "table": "erp_orders",
            "mode": "append",
            "schema_evolution_mode": "rescue",
            "on_empty": "allow",
        },
        "cluster": "heavy",
        "schedule": "0 6 * * *",
        "retries": 2,
    }
    write(tmp_path / "b", "moved.yaml", written_out)
    moved = load_objects(tmp_path / "b").objects[0]
    assert moved.config_hash == from_defaults.config_hash
    assert moved.model_copy(update={"config_file": "erp.yaml"}) == from_defaults


def test_errors_in_defaults_name_defaults_and_hold_the_objects_back(tmp_path):
    write(
        tmp_path,
        "bad.yaml",
        {
            "defaults": {
                "cluster": "Heavy",
                "retries": 20,
                "code": "hr",
                "source": {"format": "csv", "watch": "yes"},
                "target": {"mode": "merge"},
            },
            "objects": [good_object(), good_object("hr", "teams")],
        },
    )
    write(tmp_path, "ok.yaml", good_object("fin", "rates"))
    load = load_objects(tmp_path)
    assert [obj.key for obj in load.objects] == ["fin-rates"]
    by_field = {e.field: e.message for e in load.errors}
    assert set(by_field) == {
        "defaults.cluster",
        "defaults.retries",
        "defaults.code",
        "defaults.source.format",
        "defaults.source.watch",
        "defaults.target.mode",
        "objects",
    }
    assert by_field["defaults.code"] == (
        "unknown field (allowed: cluster, schedule, retries, source, target, expectations)"
    )
    assert by_field["defaults.source.format"] == "unknown field (allowed: options, watch)"
    assert "2 object(s) not loaded until defaults are fixed" in by_field["objects"]
    assert all(e.file == "bad.yaml" for e in load.errors)


def test_errors_in_objects_of_a_defaults_file_name_objects_i(tmp_path):
    bad = good_object("hr", "teams")
    bad["target"]["on_empty"] = "sometimes"
    write(
        tmp_path,
        "hr.yaml",
        {"defaults": {"retries": 1}, "objects": [good_object(), bad, "not an object"]},
    )
    load = load_objects(tmp_path)
    assert [obj.key for obj in load.objects] == ["hr-people"]
    assert load.objects[0].retries == 1
    assert [str(e) for e in load.errors] == [
        "hr.yaml: objects[1].target.on_empty: 'sometimes' is not one of fail, allow",
        "hr.yaml: objects[2]: expected an object (mapping), got str",
    ]


@pytest.mark.parametrize(
    "document, field, words",
    [
        ({"defaults": {"retries": 1}}, "objects", "missing required field"),
        ({"objects": []}, "objects", "empty list"),
        ({"objects": {"code": "hr"}}, "objects", "must be a list of objects, got dict"),
        ({"defaults": "x", "objects": [good_object()]}, "defaults", "must be a mapping, got str"),
        ({"objects": [good_object()], "owner": "me"}, "owner", "allowed: defaults, objects"),
    ],
)
def test_defaults_file_shape_problems(tmp_path, document, field, words):
    write(tmp_path, "bad.yaml", document)
    errors = [e for e in load_objects(tmp_path).errors if e.field == field]
    assert errors and words in errors[0].message, load_objects(tmp_path).errors


def test_objects_without_defaults_in_the_defaults_form(tmp_path):
    write(tmp_path, "ok.yaml", {"objects": [good_object()], "defaults": None})
    load = load_objects(tmp_path)
    assert load.errors == () and [o.key for o in load.objects] == ["hr-people"]


# --------------------------------------------------------------------------- clusters


def test_known_clusters_reject_an_undefined_cluster(tmp_path):
    write(
        tmp_path,
        "a.yaml",
        [
            good_object(),
            good_object("hr", "gpu_job", cluster="gpu"),
            good_object("hr", "big", cluster="heavy"),
        ],
    )
    load = load_objects(tmp_path, known_clusters={"default", "heavy"})
    assert sorted(obj.key for obj in load.objects) == ["hr-big", "hr-people"]
    assert [str(e) for e in load.errors] == [
        "a.yaml: [1].cluster: 'gpu' is not defined in clusters.yaml (defined: default, heavy)"
    ]
    # Without the list (the local target has no clusters file) every cluster passes.
    assert len(load_objects(tmp_path).objects) == 3
    # The implicit default cluster must be defined too.
    assert [e.field for e in load_objects(tmp_path, known_clusters=["heavy"]).errors] == [
        "[0].cluster",
        "[1].cluster",
    ]


# --------------------------------------------------------------------------- parse cache


def settle(*paths: Path) -> None:
    """Date files an hour back: the cache keeps only files not changed just now."""
    for path in paths:
        then = path.stat().st_mtime_ns - 3600 * 10**9
        os.utime(path, ns=(then, then))


def test_unchanged_files_are_not_parsed_again(tmp_path):
    a = write(tmp_path, "a.yaml", [good_object(), good_object("hr", "teams")])
    b = write(tmp_path, "sub/b.yml", good_object("fin", "rates"))
    settle(a, b)
    clear_parse_cache()
    first = load_objects(tmp_path)
    assert parse_cache_stats() == ParseCacheStats(hits=0, misses=2, files=2)
    second = load_objects(tmp_path)
    assert parse_cache_stats() == ParseCacheStats(hits=2, misses=2, files=2)
    assert second == first
    assert all(x is y for x, y in zip(first.objects, second.objects, strict=True))
    # parse_config_file (one file, on demand) does not use the cache.
    objects, errors = parse_config_file(a)
    assert [o.key for o in objects] == ["hr-people", "hr-teams"] and errors == []
    assert parse_cache_stats().misses == 2


def test_a_changed_file_is_read_again(tmp_path):
    a = write(tmp_path, "a.yaml", good_object())
    b = write(tmp_path, "b.yaml", good_object("fin", "rates"))
    settle(a, b)
    clear_parse_cache()
    load_objects(tmp_path)

    # Touched only: read again, same objects.
    os.utime(a, ns=(a.stat().st_mtime_ns + 10**9,) * 2)
    assert load_objects(tmp_path).by_key()["hr-people"].cluster == "default"
    assert parse_cache_stats()[:2] == (1, 3)  # b hit, a missed

    # Content changed (same size: only the time and inode tell).
    write(tmp_path, "a.yaml", good_object(cluster="heavy_1"))
    os.replace(write(tmp_path, "tmp.txt", good_object(cluster="heavy_2")), a)
    assert load_objects(tmp_path).by_key()["hr-people"].cluster == "heavy_2"

    # A file changed just now is read on every call until its time settles,
    # so a second change within the filesystem's time resolution is seen.
    misses = parse_cache_stats().misses
    load_objects(tmp_path)
    assert parse_cache_stats().misses == misses + 1
    settle(a)
    load_objects(tmp_path)
    load_objects(tmp_path)
    assert parse_cache_stats().misses == misses + 2


def test_duplicates_and_known_clusters_are_checked_on_every_load(tmp_path):
    a = write(tmp_path, "a.yaml", good_object(table="t_a", cluster="gpu"))
    settle(a)
    load_objects(tmp_path)
    assert load_objects(tmp_path, known_clusters=["gpu"]).errors == ()
    assert load_objects(tmp_path, known_clusters=["cpu"]).objects == ()
    write(tmp_path, "b.yaml", good_object(table="t_b", cluster="gpu"))  # same key, a cached
    load = load_objects(tmp_path)
    assert load.objects == ()
    assert {e.file for e in load.errors} == {"a.yaml", "b.yaml"}


def test_a_removed_file_is_gone_from_the_next_load(tmp_path):
    a = write(tmp_path, "a.yaml", good_object())
    b = write(tmp_path, "b.yaml", good_object("fin", "rates"))
    settle(a, b)
    assert len(load_objects(tmp_path).objects) == 2
    b.unlink()
    assert [o.key for o in load_objects(tmp_path).objects] == ["hr-people"]


# --------------------------------------------------------------------------- JSON Schema

SCHEMA_FILE = SAMPLE_CONFIGS / "object-config.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=./object-config.schema.json"


def test_the_shipped_json_schema_is_the_generated_one():
    assert json.loads(SCHEMA_FILE.read_text()) == config_file_json_schema(), (
        "regenerate: python -m fanout_dagster.core.objects --json-schema "
        "> configs/object-config.schema.json"
    )
    # The documented command prints exactly the shipped file.
    printed = subprocess.run(
        [sys.executable, "-m", "fanout_dagster.core.objects", "--json-schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == SCHEMA_FILE.read_text()


def test_every_sample_config_points_editors_at_the_schema():
    files = sorted(SAMPLE_CONFIGS.rglob("*.y*ml"))
    assert files
    for path in files:
        assert path.read_text().splitlines()[0] == SCHEMA_LINE, path.name
    # The schema itself is no config.
    load = load_objects(SAMPLE_CONFIGS)
    assert load.errors == () and "object-config.schema.json" not in load.invalid_files


def test_every_field_of_the_schema_has_a_description():
    schema = config_file_json_schema()
    for name, definition in schema["$defs"].items():
        assert definition.get("description"), name
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field}"
    assert "config_file" not in schema["$defs"]["ObjectConfig"]["properties"]


# Documents the loader and the schema must judge alike.
SCHEMA_CASES = [
    ("object", good_object(), True),
    ("list", [good_object(), good_object("hr", "teams")], True),
    ("defaults", {"defaults": {"retries": 1}, "objects": [good_object()]}, True),
    ("table source", good_object(source={"table": "main.erp.x"}), True),
    ("new fields", good_object(schedule="0 6 * * *", retries=3), True),
    ("unknown field", good_object(owner="me"), False),
    ("unknown in defaults", {"defaults": {"code": "hr"}, "objects": [good_object()]}, False),
    ("bad format", good_object(source={"format": "xml", "path": "a"}), False),
    ("no path", good_object(source={"format": "csv"}), False),
    ("table and path", good_object(source={"table": "a", "path": "b"}), False),
    ("table and watch", good_object(source={"table": "a", "watch": True}), False),
    ("bad code", good_object(code="H R"), False),
    ("bad table", good_object(table="A.b"), False),
    ("retries", good_object(retries=11), False),
    ("retries str", good_object(retries="1"), False),
    ("path **", good_object(source={"format": "csv", "path": "a/**"}), False),
    ("path ..", good_object(source={"format": "csv", "path": "../a"}), False),
    ("path braces", good_object(source={"format": "csv", "path": "{a,b}"}), False),
    ("empty list", [], False),
    ("empty objects", {"objects": []}, False),
    ("scalar", "just a string", False),
]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_the_schema_and_the_loader_agree(tmp_path, case):
    jsonschema = pytest.importorskip("jsonschema")
    _, document, valid = case
    validator = jsonschema.Draft202012Validator(config_file_json_schema())
    assert validator.is_valid(document) is valid
    write(tmp_path, "doc.yaml", document)
    load = load_objects(tmp_path)
    assert (load.errors == ()) is valid, load.errors


def test_every_sample_config_is_valid_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(SAMPLE_CONFIGS.rglob("*.y*ml")):
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, (path.name, [e.message for e in errors])
        # ... and the loader accepts the file too.
        objects, problems = parse_config_file(path)
        assert objects and not problems, (path.name, problems)


def test_other_reader_options_pass_through(tmp_path):
    options = {"header": True, "sep": ";", "pathGlobFilter": "*.csv", "recursiveFileLookup": True}
    write(
        tmp_path, "ok.yaml", good_object(source={"format": "csv", "path": "a", "options": options})
    )
    load = load_objects(tmp_path)
    assert load.errors == ()
    assert load.objects[0].source.options == options


def test_a_location_option_in_the_file_defaults_is_refused(tmp_path):
    write(
        tmp_path,
        "d.yaml",
        {"defaults": {"source": {"options": {"path": "/etc"}}}, "objects": [good_object()]},
    )
    load = load_objects(tmp_path)
    assert load.objects == ()
    assert {e.field for e in load.errors} == {"defaults.source.options.path", "objects"}


def test_the_source_hash_is_the_data_shape_of_the_schema(tmp_path):
    def with_schema(schema: str):
        obj = good_object(source={"format": "csv", "path": "a", "schema": schema})
        obj["target"]["schema_evolution_mode"] = "none"
        write(tmp_path, "x.yaml", obj)
        clear_parse_cache()
        (loaded,) = load_objects(tmp_path).objects
        return loaded

    plain = with_schema("id INT, tags STRUCT<a: INT, b: STRING>")
    annotated = with_schema(
        "id INT NOT NULL COMMENT 'key', tags STRUCT<a: INT NOT NULL COMMENT 'x', b: STRING>"
    )
    retyped = with_schema("id BIGINT, tags STRUCT<a: INT, b: STRING>")
    assert annotated.source_hash == plain.source_hash
    assert annotated.config_hash != plain.config_hash
    assert retyped.source_hash != plain.source_hash
    # Rows an earlier release loaded carry the hash with comments and NOT NULL in it.
    assert len(annotated.accepted_source_hashes) == 2
    assert plain.accepted_source_hashes == {plain.source_hash}


def test_without_dagster_a_schedule_is_checked_for_its_shape_only(tmp_path):
    # The Pipes remote side has no Dagster: the orchestrator checked the schedule
    # with Dagster's own check; here only its shape is (5 fields, or a macro).
    write(
        tmp_path,
        "a.yaml",
        [good_object(schedule="0 25 * * *"), good_object("hr", "x", schedule="@daily")],
    )
    write(tmp_path / "b", "b.yaml", good_object("hr", "y", schedule="every day"))
    assert load_objects(tmp_path / "b").errors[0].field == "schedule"
    (tmp_path / "b" / "b.yaml").unlink()
    load = load_objects(tmp_path)
    assert load.errors == () and len(load.objects) == 2
    checked = load_objects(tmp_path, cron_check=is_valid_cron_string)
    assert [e.field for e in checked.errors] == ["[0].schedule"]
