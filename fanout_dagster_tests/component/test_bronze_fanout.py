"""The BronzeFanout component: attributes -> definitions, the FANOUT_* fallback,
`{{ env(...) }}` templating, scaffolding, and bad attributes named with their
defs.yaml file and line. Each test loads a real defs folder the way `dg` does
(Dagster's defs-folder sandbox: a project with a dg.toml and a defs/ module).

The user's whole journey (create-dagster, dg scaffold, a materialized
partition) is in e2e/test_component_adoption.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, Definitions, in_process_executor
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

from fanout_dagster.component.bronze_fanout import BronzeFanout, scaffold_yaml
from fanout_dagster.orchestration.resources.spark import LocalSparkResource, SparkConnectResource
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import REPO_ROOT, child_env

COMPONENT = "fanout_dagster.BronzeFanout"
PIPES = {
    "target": "databricks",
    "data_root": "/Volumes/main/raw/landing",
    "bronze_schema": "main.bronze",
    "databricks_launch": "pipes",
    "databricks_volume": "/Volumes/main/ops/fanout",
}


@pytest.fixture(autouse=True)
def no_fanout_environment(monkeypatch):
    """Each test decides which FANOUT_* variables exist; Databricks credentials
    are placeholders (databricks-sdk's business, never an attribute)."""
    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_HOST", "https://example.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-placeholder")


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as folder:
        yield folder


def write_defs_yaml(sandbox: DefsFolderSandbox, attributes: str) -> Path:
    """defs/bronze/defs.yaml with these attributes (YAML text, as a user writes it)."""
    folder = sandbox.defs_folder_path / "bronze"
    folder.mkdir(exist_ok=True)
    body = textwrap.indent(textwrap.dedent(attributes), "  ")
    path = folder / "defs.yaml"
    path.write_text(f"type: {COMPONENT}\nattributes:\n{body}")
    return path


@contextmanager
def loaded(sandbox: DefsFolderSandbox, attributes: str) -> Iterator[Definitions]:
    write_defs_yaml(sandbox, attributes)
    with sandbox.build_all_defs() as defs:
        yield defs


def load_error(sandbox: DefsFolderSandbox, attributes: str) -> str:
    """The error a defs.yaml with these attributes gets when the definitions load
    (the component's own, which Dagster wraps in its tree error)."""
    write_defs_yaml(sandbox, attributes)
    with pytest.raises(Exception) as raised, sandbox.build_all_defs():
        pass
    error: BaseException | None = raised.value
    messages = []
    while error is not None:
        messages.append(str(error))
        # The chain a traceback shows (`raise ... from None` hides the rest).
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    text = "\n".join(messages)
    assert "defs.yaml (BronzeFanout) (error)" in text, text  # Dagster's tree of the folder
    return text


def resources(defs: Definitions) -> dict:
    return dict(defs.resources or {})


# --------------------------------------------------------------------------- attributes -> defs


def test_the_component_builds_the_partitioned_asset_its_sensor_and_local_resources(sandbox):
    with loaded(
        sandbox,
        """
        configs_dir: my_configs
        data_root: /srv/landing
        bronze_schema: raw
        objects_per_run: 3
        threads_per_run: 2
        spark: connect
        spark_connect_url: sc://spark.internal:15010
        cluster_limits: {default: 2, heavy: 1}
        """,
    ) as defs:
        Definitions.validate_loadable(defs)
        repo = defs.get_repository_def()
        bronze = repo.assets_defs_by_key[AssetKey("bronze")]
        assert bronze.partitions_def is not None
        # Packing: a backfill puts objects_per_run objects in one run.
        assert bronze.backfill_policy is not None
        assert bronze.backfill_policy.max_partitions_per_run == 3
        assert [s.name for s in repo.sensor_defs] == ["object_configs_sensor"]
        res = resources(defs)
        # Relative paths resolve from the project's root, not fanout_dagster's.
        assert res["object_configs"].configs_dir == str(sandbox.project_root / "my_configs")
        assert res["object_configs"].data_root == "/srv/landing"
        assert res["bronze_tables"].schema_name == "raw"
        spark = res["spark"]
        assert isinstance(spark, SparkConnectResource)
        assert (spark.host, spark.port) == ("spark.internal", 15010)
        # The limits of the cluster pools the steps claim (orchestration/claims.py).
        assert res["object_loader"].cluster_limits == {"default": 2, "heavy": 1}
        assert defs.executor is in_process_executor


def test_the_embedded_spark_and_a_project_executor(sandbox):
    with loaded(
        sandbox,
        """
        spark: embedded
        spark_master: local[3]
        spark_warehouse: lake
        in_process_executor: false
        """,
    ) as defs:
        spark = resources(defs)["spark"]
        assert isinstance(spark, LocalSparkResource)
        assert spark.master == "local[3]"
        assert spark.warehouse_dir == str(sandbox.project_root / "lake")
        # The project's own executor (or Dagster's default) stays.
        assert defs.executor is None


def test_the_databricks_pipes_target_from_attributes(sandbox, tmp_path):
    from fanout_dagster.databricks.pipes import PipesObjectLoader

    clusters = tmp_path / "clusters.yaml"
    clusters.write_text("clusters:\n  default:\n    serverless: {}\n")
    with loaded(
        sandbox,
        f"""
        target: databricks
        data_root: /Volumes/main/raw/landing
        bronze_schema: main.bronze
        databricks_launch: pipes
        databricks_volume: /Volumes/main/ops/fanout
        clusters_file: {clusters}
        cluster_libraries: [pyyaml, "requests==2.32.3"]
        databricks_timeout_s: 600
        cluster_limits: {{default: 3}}
        """,
    ) as defs:
        Definitions.validate_loadable(defs)
        loader = resources(defs)["object_loader"]
        assert isinstance(loader, PipesObjectLoader)
        assert loader.volume == "/Volumes/main/ops/fanout"
        assert loader.clusters_file == str(clusters)
        assert loader.cluster_libraries == "pyyaml requests==2.32.3"
        assert loader.timeout_s == 600
        assert loader.bronze_schema == "main.bronze"
        # Pipes claims around the job run, in this process: with these limits.
        assert loader.cluster_limits == {"default": 3}


def test_every_setting_a_deployment_chooses_is_an_attribute():
    """A setting added to settings.py must be configurable from defs.yaml too (or be
    listed here as one the component does not take, with the reason)."""
    not_attributes = {
        "remote_step",  # internal: set on the Databricks side of a step
        "spark_ui_port",  # the local Spark Connect server's (`make dev`), not the runs'
        "spark_driver_memory",  # idem
        "spark_state_dir",  # idem
        "spark_connect_token",  # a secret: the environment's, never in defs.yaml (or the UI)
        "spark_connect_host",  # both in spark_connect_url
        "spark_connect_port",
    }
    attributes = set(BronzeFanout.model_fields)
    assert set(Settings.model_fields) - not_attributes <= attributes
    assert attributes - set(Settings.model_fields) == {"spark_connect_url", "in_process_executor"}


# --------------------------------------------------------------------------- the environment


def test_an_attribute_left_out_falls_back_to_its_variable_then_to_the_default(sandbox, monkeypatch):
    monkeypatch.setenv("FANOUT_OBJECTS_PER_RUN", "7")
    monkeypatch.setenv("FANOUT_BRONZE_SCHEMA", "from_env")
    monkeypatch.setenv("FANOUT_CONFIGS_DIR", "env_configs")
    monkeypatch.setenv("FANOUT_CLUSTER_LIMITS", '{"heavy": 1}')
    with loaded(sandbox, "bronze_schema: from_yaml\n") as defs:
        bronze = defs.get_repository_def().assets_defs_by_key[AssetKey("bronze")]
        assert bronze.backfill_policy is not None
        assert bronze.backfill_policy.max_partitions_per_run == 7  # the variable
        res = resources(defs)
        assert res["bronze_tables"].schema_name == "from_yaml"  # the attribute wins
        assert res["object_loader"].cluster_limits == {"heavy": 1}  # the variable (JSON)
        # A path from the environment resolves from the project root too.
        assert res["object_configs"].configs_dir == str(sandbox.project_root / "env_configs")
        assert res["object_configs"].data_root == str(sandbox.project_root / "data")  # default
        spark = res["spark"]
        assert (spark.host, spark.port) == ("127.0.0.1", 15002)


def test_values_come_from_the_environment_through_templates(sandbox, monkeypatch, tmp_path):
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text("clusters:\n  default:\n    existing_cluster_id: abc\n")
    monkeypatch.setenv("BRONZE_STAGING_VOLUME", "/Volumes/main/ops/staging")
    monkeypatch.setenv("LANDING", "/Volumes/main/raw/landing")
    monkeypatch.setenv("PACK", "5")
    with loaded(
        sandbox,
        f"""
        target: databricks
        data_root: "{{{{ env('LANDING') }}}}"
        bronze_schema: main.bronze
        objects_per_run: "{{{{ env('PACK') }}}}"
        databricks_launch: pipes
        databricks_volume: "{{{{ env('BRONZE_STAGING_VOLUME') }}}}"
        clusters_file: {clusters}
        """,
    ) as defs:
        loader = resources(defs)["object_loader"]
        assert loader.volume == "/Volumes/main/ops/staging"
        assert loader.data_root == "/Volumes/main/raw/landing"
        bronze = defs.get_repository_def().assets_defs_by_key[AssetKey("bronze")]
        assert bronze.backfill_policy is not None
        assert bronze.backfill_policy.max_partitions_per_run == 5


def test_a_template_naming_an_unset_variable_names_it(sandbox):
    error = load_error(sandbox, "databricks_volume: \"{{ env('NOT_SET_ANYWHERE') }}\"\n")
    assert "NOT_SET_ANYWHERE is not set" in error


# --------------------------------------------------------------------------- bad attributes


@pytest.mark.parametrize(
    ("attributes", "line", "attribute", "says"),
    [
        ("target: kubernetes\n", 3, "target", "'local' or 'databricks'"),
        ("spark: remote\n", 3, "spark", "'connect' or 'embedded'"),
        (
            "configs_dir: c\nobjects_per_run: 0\n",
            4,
            "objects_per_run",
            "greater than or equal to 1",
        ),
        ("threads_per_run: many\n", 3, "threads_per_run", "valid integer"),
        (
            "cluster_limits: {default: 2, heavy: -1}\n",
            3,
            "cluster_limits",
            "greater than or equal to 0",
        ),
        ("bronze_schema: bronze tables\n", 3, "bronze_schema", "should match pattern"),
        ("spark_connect_url: http://spark:15002\n", 3, "spark_connect_url", "sc://<host>:<port>"),
        (
            "databricks_volume: /dbfs/tmp/fanout\n",
            3,
            "databricks_volume",
            "'/dbfs/tmp/fanout' is not a Unity Catalog volume folder",
        ),
    ],
)
def test_a_bad_attribute_is_named_with_its_file_and_line(
    sandbox, attributes, line, attribute, says
):
    error = load_error(sandbox, attributes)
    defs_yaml = sandbox.defs_folder_path / "bronze" / "defs.yaml"
    assert f"{defs_yaml}:{line} attributes.{attribute}: " in error, error
    assert says in error, error
    # Where the value came from is the attribute, not an environment variable.
    assert f"FANOUT_{attribute.upper()}" not in error.split(f"attributes.{attribute}")[1]


def test_an_unknown_attribute_is_named(sandbox):
    error = load_error(sandbox, "configs: my_configs\n")
    assert "attributes.configs" in error and "Extra inputs are not permitted" in error


def test_a_bad_variable_behind_a_missing_attribute_names_the_variable(sandbox, monkeypatch):
    monkeypatch.setenv("FANOUT_THREADS_PER_RUN", "0")
    error = load_error(sandbox, "objects_per_run: 2\n")
    assert "FANOUT_THREADS_PER_RUN='0': Input should be greater than or equal to 1" in error


@pytest.mark.parametrize(
    ("attributes", "attribute", "says"),
    [
        (
            {k: v for k, v in PIPES.items() if k != "databricks_volume"},
            "databricks_volume",
            "`databricks_launch: pipes` needs `databricks_volume`",
        ),
        (
            {k: v for k, v in PIPES.items() if k != "data_root"},
            "data_root",
            "`target: databricks` needs `data_root`",
        ),
        (
            # The step launcher has the cluster rebuild the definitions from
            # fanout_dagster's code bundle, which this project is not part of.
            {**PIPES, "databricks_launch": "step_launcher"},
            "databricks_launch",
            "use `databricks_launch: pipes`",
        ),
    ],
)
def test_what_a_databricks_deployment_lacks_is_named(sandbox, attributes, attribute, says):
    error = load_error(sandbox, yaml.safe_dump(attributes))
    assert f"attributes.{attribute}: " in error, error
    assert says in error, error


# --------------------------------------------------------------------------- scaffolding


def test_the_scaffolded_defs_yaml_loads_and_says_what_it_sets(sandbox):
    path = sandbox.scaffold_component(
        BronzeFanout, defs_path="bronze", scaffold_params={"configs_dir": "objects"}
    )
    text = (path / "defs.yaml").read_text()
    # The type as the scaffold request names it (`dg scaffold defs` passes what the
    # user typed, fanout_dagster.BronzeFanout: e2e/test_component_adoption.py).
    type_name = "fanout_dagster.component.bronze_fanout.BronzeFanout"
    assert text == scaffold_yaml(type_name, "objects")
    document = yaml.safe_load(text)
    assert document["type"] == type_name
    assert document["attributes"]["configs_dir"] == "objects"
    with sandbox.build_all_defs() as defs:
        res = resources(defs)
        assert res["object_configs"].configs_dir == str(sandbox.project_root / "objects")
        # Nothing else to run for a first `dg dev`: a Spark in each run's process.
        assert isinstance(res["spark"], LocalSparkResource)


# --------------------------------------------------------------------------- the package


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_core_imports_no_dagster(tmp_path):
    """The Pipes remote side imports fanout_dagster.core on compute without Dagster:
    importing the package must not import Dagster (the component is loaded lazily)."""
    done = run_python(
        "import sys, fanout_dagster, fanout_dagster.core.objects, fanout_dagster.core.loading\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_dg_lists_the_component_type(tmp_path):
    """Registered by the package's entry point: found from any folder (any project)."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "list", "components", "--json"],
        cwd=tmp_path,
        env=child_env(DAGSTER_DG_UPDATE_CHECK_ENABLED="0", DAGSTER_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entries = {entry["key"] for entry in json.loads(done.stdout)["items"]}
    assert COMPONENT in entries, sorted(entries)


def test_docs_component_md_lists_every_attribute():
    documented = (REPO_ROOT / "docs" / "component.md").read_text()
    missing = [name for name in BronzeFanout.model_fields if f"| `{name}` |" not in documented]
    assert missing == [], f"docs/component.md lacks a row for {missing}"


def test_the_repository_registers_the_component_as_a_dg_project():
    import tomllib

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["dg"]["project"]["root_module"] == "fanout_dagster"
    entry_points = pyproject["project"]["entry-points"]["dagster_dg_cli.registry_modules"]
    assert entry_points == {"fanout_dagster": "fanout_dagster"}
    instance = yaml.safe_load(
        (REPO_ROOT / "fanout_dagster" / "defs" / "bronze" / "defs.yaml").read_text()
    )
    assert instance["type"] == COMPONENT
