"""The code location loads for every target, in seconds (a broken target fails here,
not only in the slow end-to-end tests): through this repository's defs folder and
its BronzeFanout component, configured by the FANOUT_* environment as deployments
and the tests configure it; and on the Databricks side of a step, from the code
bundle alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions, in_process_executor

from fanout_dagster.databricks.submission import code_bundle, remote_env
from fanout_dagster.definitions import defs
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import REPO_ROOT, SAMPLE_CONFIGS, child_env

# FANOUT_* variables per target (their values are validated by pydantic).
PLACEHOLDERS: dict[str, dict[str, str]] = {
    "local": {},
    "databricks": {
        "FANOUT_TARGET": "databricks",
        "FANOUT_DATA_ROOT": "/Volumes/main/raw/landing",
        "FANOUT_BRONZE_SCHEMA": "main.bronze",
    },
}


@pytest.fixture
def environment(monkeypatch):
    """No FANOUT_* but what a test sets; placeholder Databricks credentials
    (databricks-sdk's business; enough to load)."""
    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_HOST", "https://example.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-placeholder")
    return monkeypatch


@pytest.mark.parametrize("target", sorted(PLACEHOLDERS))
def test_every_target_loads_its_definitions(target, environment):
    for name, value in PLACEHOLDERS[target].items():
        environment.setenv(name, value)
    loaded = defs()
    Definitions.validate_loadable(loaded)
    repo = loaded.get_repository_def()
    assert repo.asset_graph.get(AssetKey("bronze")).partitions_def is not None
    assert [s.name for s in repo.sensor_defs] == ["object_configs_sensor"]
    assert set(repo.get_top_level_resources()) >= {"spark", "bronze_tables", "object_configs"}
    assert loaded.executor is in_process_executor
    if target == "databricks":  # the step launcher, in this repository's own project
        assert repo.get_top_level_resources()["pyspark_step_launcher"] is not None


def test_the_daemon_reads_the_configs_the_code_location_loads(environment, tmp_path):
    """The run coordinator (in the daemon, without the code location) reads the
    configs folder from the FANOUT_* settings; the repository's defs.yaml sets no
    attribute, so the component resolves the same folder."""
    configs = tmp_path / "configs"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    environment.setenv("FANOUT_CONFIGS_DIR", str(configs))
    resources = defs().resources or {}
    assert resources["object_configs"].configs_path == Settings().configs_path == str(configs)
    # Unset, both resolve the default from the repository root.
    environment.delenv("FANOUT_CONFIGS_DIR")
    resources = defs().resources or {}
    assert resources["object_configs"].configs_path == Settings().configs_path
    assert Settings().configs_path == str(REPO_ROOT / "configs")


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
    shutil.rmtree(bundle)


def test_the_remote_step_rebuilds_the_definitions_from_the_bundle_alone(tmp_path):
    """The step launcher's cluster side imports fanout_dagster.definitions from the
    unpacked bundle: no pyproject.toml there (no defs folder to discover), only the
    settings the launching side passed in the environment."""
    settings = Settings(
        target="databricks", data_root="/Volumes/main/raw/landing", bronze_schema="main.bronze"
    )
    bundle = Path(code_bundle(str(SAMPLE_CONFIGS)))
    cluster_copy = tmp_path / "cluster" / "bundle"
    shutil.copytree(bundle, cluster_copy)
    shutil.rmtree(bundle)
    env = {k: v for k, v in child_env().items() if not k.startswith(("FANOUT_", "DATABRICKS_"))}
    env.update(remote_env(settings), PYTHONPATH=str(cluster_copy))
    script = (
        "import fanout_dagster\n"
        f"assert fanout_dagster.__file__.startswith({str(cluster_copy)!r}), fanout_dagster.__file__\n"
        "from dagster import AssetKey\n"
        "from fanout_dagster.definitions import defs\n"
        "loaded = defs()\n"
        "repo = loaded.get_repository_def()\n"
        "assert repo.asset_graph.get(AssetKey('bronze')).partitions_def is not None\n"
        "resources = loaded.resources\n"
        "print(resources['object_configs'].configs_path)\n"
        "print(resources['bronze_tables'].schema_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path / "cluster",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    configs_path, schema = done.stdout.split()
    assert configs_path == str(cluster_copy / "configs")
    assert schema == "main.bronze"
