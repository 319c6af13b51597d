"""A Dagster user adopts fanout_dagster in a project of their own, as README's
"Add it to your Dagster project" says: `create-dagster project`, `dg scaffold
defs fanout_dagster.BronzeFanout`, a configs folder and a defs.yaml pointing at
it, `dg check defs`, then `dg dev`, whose sensor adds the object's partition
and materializes it into a Delta table on the shared Spark Connect server.

The project uses this test's Python environment (fanout_dagster installed, as
`pip install` would) and is put on the path rather than installed into it, so
the shared virtualenv stays as it is. No network: dg's PyPI version check is
off, and create-dagster is told not to run `uv sync`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import PARTITION_NAME_TAG

from fanout_dagster_tests.e2e.dagster_processes import (
    describe_runs,
    start_in_own_group,
    stop_process_group,
    wait_for,
)
from fanout_dagster_tests.helpers import (
    child_env,
    expected_source_files,
    free_port,
    keep_objects,
    replace_once,
    sample_object,
    spark_source_count,
)

VENV_BIN = Path(sys.executable).parent
KEY = "erp-customers"


def user_env(home: Path, project_src: Path, spark_url: str) -> dict[str, str]:
    """The user's shell: no FANOUT_* variables (the defs.yaml configures everything),
    their project importable, this venv active, dg offline."""
    env = {k: v for k, v in child_env().items() if not k.startswith("FANOUT_")}
    env.update(
        DAGSTER_HOME=str(home),
        VIRTUAL_ENV=str(VENV_BIN.parent),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(project_src), env.get("PYTHONPATH")])),
        DAGSTER_DG_UPDATE_CHECK_ENABLED="0",
        # The Spark Connect server, from the environment through a template.
        SPARK_REMOTE_URL=spark_url,
    )
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_new_dagster_project_adopts_the_component_and_materializes_an_object(
    tmp_path, project, spark
):
    keep_objects(project, [KEY])
    server = project.spark_server
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    root = tmp_path / "lakehouse"
    env = user_env(home, root / "src", f"sc://127.0.0.1:{server.port}")

    # 1. A fresh project, laid out by create-dagster.
    run([str(VENV_BIN / "create-dagster"), "project", str(root), "--no-uv-sync"], tmp_path, env)
    dg_project = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["dg"]
    assert dg_project["project"]["root_module"] == "lakehouse"
    dg = [str(VENV_BIN / "dg")]

    # 2. The component type is there to scaffold, and scaffolds a defs.yaml.
    components = json.loads(run([*dg, "list", "components", "--json"], root, env))["items"]
    assert "fanout_dagster.BronzeFanout" in {c["key"] for c in components}
    run(
        [
            *dg,
            "scaffold",
            "defs",
            "fanout_dagster.BronzeFanout",
            "bronze",
            "--configs-dir",
            "configs",
        ],
        root,
        env,
    )
    defs_yaml = root / "src" / "lakehouse" / "defs" / "bronze" / "defs.yaml"
    assert "configs_dir: configs" in defs_yaml.read_text()

    # 3. The user's configs and data in their project; the defs.yaml edited to a
    # run per object, this test's Spark Connect server and a schema of its own.
    shutil.copytree(project.configs, root / "configs")
    shutil.copytree(project.data, root / "data")
    replace_once(defs_yaml, "bronze_schema: bronze", f"bronze_schema: {project.schema}")
    replace_once(defs_yaml, "objects_per_run: 4", "objects_per_run: 1")
    replace_once(defs_yaml, "spark: embedded", "spark: connect")
    replace_once(
        defs_yaml,
        "# spark_connect_url: sc://127.0.0.1:15002",
        "spark_connect_url: \"{{ env('SPARK_REMOTE_URL') }}\"",
    )

    # 4. dg checks and lists the definitions.
    run([*dg, "check", "defs"], root, env)
    listed = json.loads(run([*dg, "list", "defs", "--json"], root, env))
    assert [asset["asset_key"] for asset in listed["assets"]] == ["bronze"]
    assert [sensor["name"] for sensor in listed["sensors"]] == ["object_configs_sensor"]

    # 5. dg dev: the sensor adds the object's partition and runs it.
    log = tmp_path / "dg-dev.log"
    dev = start_in_own_group(
        [*dg, "dev", "-h", "127.0.0.1", "-p", str(free_port())], env=env, cwd=root, log_path=log
    )
    try:
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            run_record = wait_for(
                lambda: _finished_run(instance, KEY),
                timeout=600,
                what=f"a finished run of {KEY}",
                interval=2,
                on_timeout=lambda: describe_runs(instance) + "\n" + log.read_text()[-4000:],
            )
            assert run_record.dagster_run.status == DagsterRunStatus.SUCCESS, (
                describe_runs(instance) + "\n" + log.read_text()[-4000:]
            )
            materializations = instance.get_records_for_run(
                run_record.dagster_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            ).records
            assert [record.partition_key for record in materializations] == [KEY]
    finally:
        stop_process_group(dev)

    # 6. The object's Delta table holds its sources' rows.
    obj = sample_object(project.configs, KEY)
    files = expected_source_files(project.data, obj)
    assert spark.table(project.table(obj.target.table)).count() == spark_source_count(
        spark, obj, files
    )


def _finished_run(instance: DagsterInstance, key: str):
    records = instance.get_run_records(filters=RunsFilter(tags={PARTITION_NAME_TAG: key}))
    finished = [r for r in records if r.dagster_run.is_finished]
    return finished[0] if finished else None
