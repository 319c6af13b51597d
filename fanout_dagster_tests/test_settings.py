"""Settings: one typed declaration, documented from the same source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from fanout_dagster.settings import Settings, settings_table
from fanout_dagster_tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "fanout_dagster"


def test_docs_settings_table_is_generated_from_the_settings_module():
    documented = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert documented == settings_table(), (
        "docs/settings.md is stale: run `python -m fanout_dagster.settings > docs/settings.md`"
    )
    for name in Settings.model_fields:
        assert f"`{Settings.env_name(name)}`" in documented


def test_settings_are_read_from_the_environment_with_types(monkeypatch):
    monkeypatch.setenv("FANOUT_OBJECTS_PER_RUN", "7")
    monkeypatch.setenv("FANOUT_INSTALL_DEFAULT_LIBRARIES", "1")
    settings = Settings()
    assert settings.objects_per_run == 7
    assert settings.install_default_libraries is True


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("FANOUT_TARGET", "kubernetes")
    with pytest.raises(ValidationError, match="target"):
        Settings()


def _environment_reads(path: Path) -> list[str]:
    """Places in a module that read a variable from the environment: os.getenv(...),
    os.environ.get(...), os.environ[...] (passing the environment on to a child
    process is not reading a setting)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func  # os.getenv(...) / os.environ.get(...)
            if target.attr == "get":
                target = target.value if isinstance(target.value, ast.Attribute) else None
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            target = node.value  # os.environ[...]
        if (
            isinstance(node, (ast.Call, ast.Subscript))  # (always, when target is set)
            and isinstance(target, ast.Attribute)
            and target.attr in ("environ", "getenv")
            and isinstance(target.value, ast.Name)
            and target.value.id == "os"
        ):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_nothing_but_the_settings_module_reads_fanout_settings_from_the_environment():
    reads = [
        place
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "settings.py"
        for place in _environment_reads(path)
    ]
    # Java's own variable, checked to explain a missing Java in one line.
    allowed = {"fanout_dagster/orchestration/resources/spark.py"}
    assert [p for p in reads if p.split(":")[0] not in allowed] == []
