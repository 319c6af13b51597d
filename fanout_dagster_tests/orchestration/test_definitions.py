"""The code location loads for every target, in seconds (a broken target fails here,
not only in the slow end-to-end tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, Definitions

from fanout_dagster.databricks.step_launcher import code_bundle
from fanout_dagster.definitions import build_definitions
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS

# Settings' fields by name (their values are validated by pydantic, as the environment's are).
PLACEHOLDERS: dict[str, dict[str, Any]] = {
    "local": {},
    "databricks": {"data_root": "/Volumes/main/raw/landing", "bronze_schema": "main.bronze"},
}


@pytest.mark.parametrize("target", sorted(PLACEHOLDERS))
def test_every_target_loads_its_definitions(target, monkeypatch):
    # Credentials are databricks-sdk's business; placeholders are enough to load.
    monkeypatch.setenv("DATABRICKS_HOST", "https://example.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-placeholder")
    defs = build_definitions(Settings(target=target, **PLACEHOLDERS[target]))
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.asset_graph.get(AssetKey("bronze")).partitions_def is not None
    assert [s.name for s in repo.sensor_defs] == ["object_configs_sensor"]
    assert set(repo.get_top_level_resources()) >= {"spark", "bronze_tables", "object_configs"}


def test_the_databricks_code_bundle_holds_the_package_and_the_configs_only():
    bundle = Path(code_bundle(str(SAMPLE_CONFIGS)))
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files, "empty bundle"
    assert {f.split("/")[0] for f in files} == {"fanout_dagster", "configs"}, files
    assert "fanout_dagster/definitions.py" in files
    assert not [f for f in files if "emulator" in f or f.endswith(".pyc")], files
    # The configs folder as it is: the YAML files and their JSON Schema (for editors).
    configs = sorted(
        p.relative_to(SAMPLE_CONFIGS).as_posix() for p in SAMPLE_CONFIGS.rglob("*") if p.is_file()
    )
    assert "object-config.schema.json" in configs
    assert [f.removeprefix("configs/") for f in files if f.startswith("configs/")] == configs
