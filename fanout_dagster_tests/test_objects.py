"""The object config loader: sample configs, keys, config hashes, and every
kind of bad input reported with its file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fanout_dagster.objects import (
    MAX_IDENT_LEN,
    SOURCE_FORMATS,
    WRITE_MODES,
    ConfigError,
    load_objects,
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
    load = load_objects(tmp_path)
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
