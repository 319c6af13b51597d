"""A key written twice in one YAML mapping is refused with file, line and key,
and only the object holding it is held back (PyYAML alone keeps the last one
and says nothing)."""

from __future__ import annotations

from pathlib import Path

from fanout_dagster.core.objects import load_objects
from fanout_dagster.core.objects.yaml_reader import load_yaml, repeated_keys

TWO_TARGETS = """\
- code: hr
  name: people
  source: {format: csv, path: hr/people/*.csv}
  target:
    table: hr_people
  target:
    table: hr_other
- code: hr
  name: teams
  source: {format: csv, path: hr/teams/*.csv}
  target: {table: hr_teams}
"""


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_a_repeated_key_is_refused_naming_file_line_and_key_and_the_rest_loads(tmp_path):
    write(tmp_path, "hr.yaml", TWO_TARGETS)
    load = load_objects(tmp_path)
    assert [obj.key for obj in load.objects] == ["hr-teams"]
    (error,) = load.errors
    assert error.file == "hr.yaml"
    assert error.field == "[0].target"
    assert "line 6" in error.message and "first on line 4" in error.message
    assert "'target'" in error.message
    assert str(error).startswith("hr.yaml: [0].target: line 6:")


def test_a_repeated_nested_key_names_its_path(tmp_path):
    write(
        tmp_path,
        "one.yaml",
        "code: hr\nname: people\nsource:\n  format: csv\n  path: a/*.csv\n"
        "  options:\n    header: true\n    sep: ';'\n    header: false\n"
        "target: {table: hr_people}\n",
    )
    load = load_objects(tmp_path)
    assert load.objects == ()
    (error,) = load.errors
    assert error.field == "source.options.header"
    assert "line 9" in error.message and "first on line 7" in error.message


def test_a_key_repeated_in_a_flow_mapping_is_found():
    repeated = repeated_keys(load_yaml("target: {table: a, table: b}\n"))
    assert [(r.path, r.key, r.first_line, r.line) for r in repeated] == [
        (("target",), "table", 1, 1)
    ]


def test_a_repeated_key_in_the_defaults_holds_back_the_file_with_a_reason(tmp_path):
    write(
        tmp_path,
        "d.yaml",
        "defaults:\n  cluster: default\n  cluster: heavy\nobjects:\n"
        "  - {code: hr, name: people, source: {format: csv, path: a/*.csv}, "
        "target: {table: hr_people}}\n",
    )
    load = load_objects(tmp_path)
    assert load.objects == ()
    fields = {error.field: error.message for error in load.errors}
    assert "line 3" in fields["defaults.cluster"]
    assert "not loaded until defaults are fixed" in fields["objects"]


def test_merge_keys_may_be_overridden_without_being_a_repetition(tmp_path):
    write(
        tmp_path,
        "m.yaml",
        "- &base {code: hr, name: people, source: {format: csv, path: a/*.csv}, "
        "target: {table: hr_people}}\n"
        "- <<: *base\n  name: teams\n  target: {table: hr_teams}\n",
    )
    load = load_objects(tmp_path)
    assert load.errors == ()
    assert sorted(obj.key for obj in load.objects) == ["hr-people", "hr-teams"]
