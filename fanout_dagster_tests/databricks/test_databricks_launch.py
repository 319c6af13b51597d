"""The databricks target without a workspace: what each launch mode hands Databricks
(cluster, code bundle, environment, run name, timeout), and the errors a broken
deployment gets at definitions load. The runs themselves are in e2e/."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterRun, InitResourceContext, SensorResult, build_sensor_context

from fanout_dagster.core.objects import load_objects
from fanout_dagster.databricks.submission import code_bundle, remote_env
from fanout_dagster.databricks.target import databricks_target_resources
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS, ListHandler

DATABRICKS: dict[str, Any] = {
    "target": "databricks",
    "data_root": "/Volumes/main/raw/landing",
    "bronze_schema": "main.bronze",
}


@pytest.fixture
def workspace_env(monkeypatch):
    # Credentials are databricks-sdk's business; placeholders are enough here.
    monkeypatch.setenv("DATABRICKS_HOST", "https://example.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-placeholder")
    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)


def step_launcher_for(settings: Settings, tags: dict[str, str], run_id: str = "0" * 36):
    """The step launcher the databricks target builds for a run with these tags."""
    resources = databricks_target_resources(settings)
    run = DagsterRun(job_name="__ASSET_JOB", run_id=run_id, tags=tags)
    launcher_def = resources["pyspark_step_launcher"]
    context = InitResourceContext(
        resource_config=None,
        resources=None,  # type: ignore[arg-type]
        resource_def=launcher_def,
        all_resource_defs={},
        dagster_run=run,
    )
    return launcher_def.resource_fn(context)


# --------------------------------------------------------------------------- defect a


def test_the_remote_step_reads_the_configs_of_the_uploaded_bundle(tmp_path, workspace_env):
    """FANOUT_CONFIGS_DIR names a folder of the launching machine; the cluster has
    only the uploaded bundle. The remote side must find every object there."""
    configs = tmp_path / "launching-machine" / "configs"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    settings = Settings(**DATABRICKS, configs_dir=str(configs))
    keys = sorted(obj.key for obj in load_objects(configs).objects)

    # What the cluster gets: the bundle (unzipped where the cluster likes) and the env.
    bundle = Path(code_bundle(str(configs)))
    cluster_copy = tmp_path / "cluster" / "bundle"
    shutil.copytree(bundle, cluster_copy)
    shutil.rmtree(bundle)
    shutil.rmtree(configs.parent)  # not on the cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DATABRICKS_"))}
    env.update(remote_env(settings), PYTHONPATH=str(cluster_copy))
    script = (
        "import fanout_dagster, sys\n"
        f"assert fanout_dagster.__file__.startswith({str(cluster_copy)!r}), fanout_dagster.__file__\n"
        "from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs\n"
        "from fanout_dagster.settings import Settings\n"
        f"found, missing = ObjectConfigs.from_settings(Settings()).lookup({keys!r})\n"
        "print('missing:', missing)\n"
        "sys.exit(1 if missing else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path / "cluster",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- defects d, e


def test_the_step_launcher_run_carries_a_timeout_and_a_findable_name(workspace_env):
    settings = Settings(**DATABRICKS, databricks_timeout_s=900)
    run_id = "6f1c2d3e-0000-4000-8000-00000000abcd"
    keys = ["erp-customers", "erp-products"]
    launcher = step_launcher_for(
        settings, {CLUSTER_TAG: "default", OBJECTS_TAG: ",".join(keys)}, run_id
    )
    # d: Databricks stops the run itself when the Dagster side is gone.
    assert launcher.run_config.get("timeout_seconds") == 900
    # e: the Dagster run id and the objects, so either side finds the other.
    name = launcher.run_config["run_name"]
    assert run_id in name and all(key in name for key in keys), name


# --------------------------------------------------------------------------- defect g


def test_an_object_on_a_cluster_clusters_yaml_does_not_define_is_a_config_error(
    tmp_path, workspace_env, instance
):
    configs = tmp_path / "configs"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    (configs / "stray.yaml").write_text(
        "code: hr\nname: people\ncluster: gpu_xl\n"
        "source: {format: csv, path: erp/employees/*.csv, options: {header: true}}\n"
        "target: {table: hr_people}\n"
    )
    settings = Settings(**DATABRICKS, configs_dir=str(configs))
    object_configs = databricks_target_resources(settings)["object_configs"]
    context = build_sensor_context(instance=instance, resources={"object_configs": object_configs})
    logs = ListHandler()
    context.log.addHandler(logs)
    result = build_object_sensor()(context)

    errors = [m for m in logs.messages(logging.ERROR) if "stray.yaml" in m]
    assert errors and "cluster" in errors[0] and "gpu_xl" in errors[0], logs.messages()
    assert "clusters.yaml" in errors[0], errors
    assert isinstance(result, SensorResult)
    requested = {r.partition_key for r in result.run_requests or []}
    assert "hr-people" not in requested and requested  # the others still run


# --------------------------------------------------------------------------- the pipes mode

PIPES: dict[str, Any] = {
    **DATABRICKS,
    "databricks_launch": "pipes",
    "databricks_volume": "/Volumes/main/ops/fanout",
}
CLUSTERS_YAML = """\
clusters:
  default:
    existing_cluster_id: "0000-000000-fanoutdefault"
  heavy:
    new_cluster:
      spark_version: "18.0.x-scala2.13"
      nodes: {node_types: {node_type_id: "i3.xlarge"}}
      size: {num_workers: 2}
  quick:
    serverless: {dependencies: ["pyyaml"]}
"""


def clusters_file(tmp_path: Path, text: str = CLUSTERS_YAML) -> str:
    path = tmp_path / "clusters.yaml"
    path.write_text(text)
    return str(path)


def submission_for(cluster: str, tmp_path: Path, **settings_overrides):
    from fanout_dagster.databricks.clusters import cluster_for_run, load_cluster_definitions
    from fanout_dagster.databricks.pipes import Submission
    from fanout_dagster.databricks.submission import databricks_run_name, idempotency_token

    clusters = load_cluster_definitions(clusters_file(tmp_path))
    settings = Settings(**PIPES, **settings_overrides)
    keys = [f"erp-object_{i:02d}" for i in range(30)]
    run_id = "6f1c2d3e-0000-4000-8000-00000000abcd"
    return Submission(
        token=idempotency_token(run_id, "bronze", 0),
        run_name=databricks_run_name(run_id, keys, cluster),
        timeout_s=settings.databricks_timeout_s,
        staging="/Volumes/main/ops/fanout/staging/x/bronze-0",
        cluster=cluster_for_run(clusters, {CLUSTER_TAG: cluster}),
        libraries=["dagster-pipes==1.13.27"],
        clusters_file="clusters.yaml",
    ).request({"--dagster-pipes-context": "c", "--dagster-pipes-messages": "m"}), run_id


@pytest.mark.parametrize("cluster", ["default", "heavy", "quick"])
def test_the_pipes_submit_on_each_kind_of_compute(cluster, tmp_path, workspace_env):
    request, run_id = submission_for(cluster, tmp_path, databricks_timeout_s=1200)
    [task] = [t.as_dict() for t in request["tasks"]]
    # Idempotent, bounded, findable.
    assert 0 < len(request["idempotency_token"]) <= 64
    assert request["timeout_seconds"] == 1200
    name = request["run_name"]
    assert run_id in name and "erp-object_00" in name and name.endswith("more"), name
    assert len(name) <= 200
    # The entry script and the bundle from the staging folder, the Pipes params as arguments.
    python_task = task["spark_python_task"]
    assert python_task["python_file"].endswith("/staging/x/bronze-0/pipes_entry.py")
    assert python_task["parameters"][:2] == [
        "--fanout-bundle",
        "/Volumes/main/ops/fanout/staging/x/bronze-0/bundle.zip",
    ]
    assert "--dagster-pipes-context" in python_task["parameters"]
    if cluster == "default":
        assert task["existing_cluster_id"] == "0000-000000-fanoutdefault"
        assert task["libraries"] == [{"pypi": {"package": "dagster-pipes==1.13.27"}}]
    elif cluster == "heavy":  # the launcher's shape, as Databricks takes it
        assert task["new_cluster"]["node_type_id"] == "i3.xlarge"
        assert task["new_cluster"]["num_workers"] == 2
        assert "nodes" not in task["new_cluster"]
    else:
        assert "libraries" not in task and "existing_cluster_id" not in task
        [environment] = [e.as_dict() for e in request["environments"]]
        assert task["environment_key"] == environment["environment_key"]
        assert environment["spec"]["dependencies"] == ["pyyaml", "dagster-pipes==1.13.27"]
        assert environment["spec"]["environment_version"]
    assert "dapi" not in repr(request)


# --------------------------------------------------------------------------- bad input at load


def test_an_unknown_launch_mode_names_the_setting(workspace_env, monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("FANOUT_DATABRICKS_LAUNCH", "connect")
    with pytest.raises(ValidationError, match="FANOUT_DATABRICKS_LAUNCH='connect'"):
        Settings()


def test_a_volume_setting_that_is_no_volume_folder_names_the_setting(workspace_env, monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("FANOUT_DATABRICKS_VOLUME", "/dbfs/tmp/fanout")
    with pytest.raises(ValidationError, match="FANOUT_DATABRICKS_VOLUME='/dbfs/tmp/fanout'"):
        Settings()


def test_the_pipes_mode_without_a_volume_fails_at_load(workspace_env):
    from fanout_dagster.definitions import build_definitions

    with pytest.raises(ValueError, match="FANOUT_DATABRICKS_VOLUME") as raised:
        build_definitions(Settings(**{**PIPES, "databricks_volume": ""}))
    assert "FANOUT_DATABRICKS_LAUNCH=pipes" in str(raised.value)


def test_serverless_under_the_step_launcher_fails_at_load(tmp_path, workspace_env):
    from fanout_dagster.definitions import build_definitions

    settings = Settings(**DATABRICKS, clusters_file=clusters_file(tmp_path))
    with pytest.raises(ValueError, match=r"clusters\.quick\.serverless") as raised:
        build_definitions(settings)
    assert "FANOUT_DATABRICKS_LAUNCH=pipes" in str(raised.value)


def test_the_pipes_mode_loads_with_every_kind_of_compute(tmp_path, workspace_env):
    from dagster import Definitions

    from fanout_dagster.databricks.pipes import PipesObjectLoader
    from fanout_dagster.definitions import build_definitions

    defs = build_definitions(Settings(**PIPES, clusters_file=clusters_file(tmp_path)))
    Definitions.validate_loadable(defs)
    assert isinstance((defs.resources or {})["object_loader"], PipesObjectLoader)


# --------------------------------------------------------------------------- bad input at run start


def pipes_step_failure(tmp_path, project, emu, instance, monkeypatch, cluster="default", **over):
    """Materialize one object in the pipes mode against the emulator; the step's error text."""
    from dagster import DagsterEventType, materialize

    from fanout_dagster.orchestration.bronze import build_bronze_asset
    from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME

    monkeypatch.setenv("DATABRICKS_HOST", emu.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", emu.token)
    settings = Settings(
        **{
            **PIPES,
            "configs_dir": str(project.configs),
            "clusters_file": clusters_file(tmp_path),
            "databricks_poll_s": 0.2,
            **over,
        }
    )
    resources = databricks_target_resources(settings)
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-customers"])
    result = materialize(
        [build_bronze_asset()],
        resources={k: resources[k] for k in ("object_loader", "pyspark_step_launcher")},
        partition_key="erp-customers",
        instance=instance,
        tags={CLUSTER_TAG: cluster, OBJECTS_TAG: "erp-customers"},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    error = failure.step_failure_data.error
    assert error is not None
    return error.to_string()


def test_a_missing_volume_fails_the_run_naming_the_setting(
    tmp_path, project, instance, monkeypatch, workspace_env
):
    from databricks_emulator import run_emulator

    with run_emulator(root=tmp_path / "emu", volumes=["main.ops.fanout"]) as emu:
        error = pipes_step_failure(
            tmp_path,
            project,
            emu,
            instance,
            monkeypatch,
            databricks_volume="/Volumes/main/ops/gone",
        )
        assert emu.stats()["runs_submitted"] == 0
    assert "FANOUT_DATABRICKS_VOLUME=/Volumes/main/ops/gone: no such Unity Catalog volume" in error
    assert "Volume 'main.ops.gone' does not exist" in error


def test_a_volume_folder_that_cannot_be_written_fails_the_run_naming_the_setting(
    tmp_path, project, instance, monkeypatch, workspace_env
):
    from databricks_emulator import run_emulator

    with run_emulator(root=tmp_path / "emu", volumes=["main.ops.fanout"]) as emu:
        # A file where the staging folder would go.
        (emu.root / "volumes/main/ops/fanout/blocked").write_text("not a folder")
        error = pipes_step_failure(
            tmp_path,
            project,
            emu,
            instance,
            monkeypatch,
            databricks_volume="/Volumes/main/ops/fanout/blocked",
        )
        assert emu.stats()["runs_submitted"] == 0
    assert "FANOUT_DATABRICKS_VOLUME=/Volumes/main/ops/fanout/blocked: not writable" in error


def test_serverless_on_a_workspace_without_it_fails_the_run_naming_the_cluster(
    tmp_path, project, instance, monkeypatch, workspace_env
):
    from databricks_emulator import run_emulator

    with run_emulator(root=tmp_path / "emu", volumes=["main.ops.fanout"], serverless=False) as emu:
        error = pipes_step_failure(tmp_path, project, emu, instance, monkeypatch, cluster="quick")
        assert emu.stats()["runs_submitted"] == 0
        staged = [p for p in (emu.root / "volumes/main/ops/fanout").rglob("*") if p.is_file()]
    assert "clusters.quick.serverless" in error and "FANOUT_CLUSTERS_FILE" in error, error
    assert "no serverless compute" in error
    assert staged == []  # the code it had staged is gone


# --------------------------------------------------------------------------- the Pipes remote side


REMOTE_LOAD = """
import json, sys
from fanout_dagster.core import objects
loaded = objects.load_objects(sys.argv[1])
print(json.dumps({"keys": sorted(loaded.by_key()), "errors": [str(e) for e in loaded.errors],
                  "dagster": "dagster" in sys.modules, "from": objects.__file__}))
"""


def load_where_pipes_runs(tmp_path: Path, configs: Path) -> dict[str, Any]:
    """Load a configs folder as the Pipes remote side does: the bundle's package on an
    interpreter with the standard library, pyspark and what each run installs (dagster-pipes,
    pydantic, pyyaml: built as the emulator builds a task's libraries), no Dagster."""
    import json

    from databricks_emulator.task_libraries import SiteFolders

    site, notes = SiteFolders(tmp_path / "site").for_task(
        ["dagster-pipes", "pydantic>=2,<3", "pyyaml"]
    )
    assert not notes, notes
    bundle = Path(code_bundle(str(configs)))
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-s", "-c", REMOTE_LOAD, str(bundle / "configs")],
            env={"PYTHONPATH": os.pathsep.join([str(bundle), str(site)]), "PATH": os.defpath},
            cwd=tmp_path,  # not the repository: its package must not shadow the bundle's
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(bundle)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert loaded.pop("from").startswith(str(bundle)), done.stdout
    return loaded


def test_objects_with_a_schedule_load_on_the_pipes_remote_side_which_has_no_dagster(tmp_path):
    """Issue 20.1: the cron check imported Dagster, so on the compute (dagster-pipes,
    pydantic, pyyaml only) any object with a `schedule` crashed the remote side of every
    run. There the schedule is not checked again; here Dagster's own check still refuses a
    bad one, naming file and field."""
    import yaml

    configs = tmp_path / "configs"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    path = configs / "erp.yaml"
    document = yaml.safe_load(path.read_text())
    entries = document["objects"] if isinstance(document, dict) else document
    entries[0]["schedule"] = "0 6 * * *"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    expected = sorted(load_objects(configs).by_key())

    remote = load_where_pipes_runs(tmp_path, configs)
    assert remote == {"keys": expected, "errors": [], "dagster": False}

    entries[0]["schedule"] = "0 6 31 2 *"  # Dagster refuses the 31st of February
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    # what the Dagster side loads with (ObjectConfigs: Dagster's cron check)
    [error] = ObjectConfigs(configs_dir=str(configs)).load().errors
    assert "erp.yaml" in str(error) and "schedule" in str(error), error
