"""The pipes launch mode end to end: the real daemon and run queue, the real
databricks-sdk over HTTP, the project's workspace emulator without a DBFS root
(`--no-dbfs-root`), sources and staging on Unity Catalog volumes, tables in
`main.bronze`. Each Databricks run executes the uploaded bundle's entry script
with local PySpark: on an existing cluster, a job cluster, and serverless
(Spark Connect).

Lean on purpose: one deployment runs a pack on each kind of compute and checks
everything the step launcher gives (per-object events while the run goes,
per-cluster caps, an idempotent submit through a lost response, the remote
logs and traceback, no token anywhere, cleanup, the data); a second one
terminates a run.
"""

from __future__ import annotations

import json
import sysconfig
import threading
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterRunStatus

from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    all_runs_finished,
    describe_runs,
    max_overlap,
    wait_for,
)
from fanout_dagster_tests.e2e.test_databricks import (
    databricks_deployment,
    emulator_run,
    leftovers,
    run_logs,
    uc_table,
)
from fanout_dagster_tests.e2e.test_faults import alive, group_members, wait_for_remote_spark
from fanout_dagster_tests.helpers import expected_source_files, keep_objects, spark_source_count

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
VOLUME = "/Volumes/main/ops/fanout"
CLUSTERS = {
    "clusters": {
        "default": {"existing_cluster_id": "0000-000000-fanoutdefault"},
        "heavy": {
            "new_cluster": {
                "spark_version": "18.0.x-scala2.13",
                "node_type_id": "i3.xlarge",
                "num_workers": 1,
            }
        },
        "quick": {"serverless": {"environment_version": "4"}},
    }
}
# Which objects run where: a pack of three on the existing cluster (one of them
# broken), one object on a job cluster, two on serverless.
PLACEMENT = {
    "erp-customers": "default",
    "erp-products": "default",
    "erp-suppliers": "default",
    "erp-order_lines": "heavy",
    "erp-stores": "quick",
    "crm-campaigns": "quick",
}


# What the remote side may import besides the standard library and the bundle: the
# compute's pyspark (with what it needs) and what each run installs (dagster-pipes, and the
# libraries this package needs, given as FANOUT_CLUSTER_LIBRARIES: the emulator's runtime has
# no pydantic or pyyaml). The packages, as the task's site folder holds them.
REMOTE_PACKAGES = {
    "dagster_pipes",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "yaml",
    "_yaml",
    "pyspark",
    "py4j",
    "pandas",
    "numpy",
    "pyarrow",
    "grpc",
    "grpc_status",
    "google",
    "zstandard",
    "dateutil",
    "six",
}
CLUSTER_LIBRARIES = "pydantic>=2,<3 pyyaml"
# Once a year: a schedule the objects carry (validated on both sides) that never fires here.
YEARLY = "0 0 1 1 *"


def place_objects(
    project, placement: dict[str, str], schedules: dict[str, str] | None = None
) -> None:
    keep_objects(project, sorted(placement))
    path = project.configs / "objects.yaml"
    entries = yaml.safe_load(path.read_text())
    for entry in entries:
        key = f"{entry['code']}-{entry['name']}"
        entry["cluster"] = placement[key]
        if key in (schedules or {}):
            entry["schedule"] = (schedules or {})[key]
    path.write_text(yaml.safe_dump(entries, sort_keys=False))


def pipes_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(yaml.safe_dump(CLUSTERS))
    return {
        "FANOUT_DATABRICKS_LAUNCH": "pipes",
        "FANOUT_DATABRICKS_VOLUME": VOLUME,
        "FANOUT_CLUSTERS_FILE": str(clusters),
        "FANOUT_CLUSTER_LIBRARIES": CLUSTER_LIBRARIES,
        **extra,
    }


def import_source(where: str | None) -> str | None:
    """Where an imported module came from: `stdlib`, `bundle`, the package folder of the
    task's site folder it lies in, or None for anywhere else (a file the compute lacks)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    if where is None or where.startswith(stdlib):
        return "stdlib"  # builtins, compiled modules' runtime entries, the standard library
    if "/fanout_bundle_" in where:
        return "bundle"
    before, site, after = where.partition("/task-env/site/")
    return after.split("/")[1].partition(".")[0] if site else None  # a package or module


def remote_imports(emu) -> dict[str, dict[str, str | None]]:
    """Per Databricks task folder: the top-level modules its script imported, and from where."""
    return {
        str(path.parent.relative_to(emu.root)): json.loads(path.read_text())
        for path in (emu.root / "runs").rglob("imports.json")
    }


def volume_files(emu) -> list[Path]:
    root = emu.root / "volumes/main/ops/fanout"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.duration(150)
def test_pipes_runs_on_every_kind_of_compute_with_per_object_outcomes(project, tmp_path, spark):
    # A schedule on one object: every run's remote side validates the whole configs folder.
    place_objects(project, PLACEMENT, schedules={"erp-customers": YEARLY})
    (project.data / "erp/suppliers/suppliers.csv").unlink()  # fails remotely, alone
    objects = load_objects(project.configs).by_key()

    staged: set[str] = set()
    token_seen_in: set[str] = set()
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=3,
        cluster_limits={"default": 1, "heavy": 1, "quick": 1},
        max_runs=2,
        data_in="volume",
        dbfs_root=False,
        env=pipes_env(tmp_path, FANOUT_THREADS_PER_RUN="1", FANOUT_DATABRICKS_TIMEOUT_S="1800"),
    ) as (instance, emu, home):
        # The first runs/submit starts its run, then its response is lost; the SDK
        # retries it with the same idempotency token.
        emu.inject_faults(drop_submit_responses=1)
        token = emu.token.encode()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for path in volume_files(emu):
                    try:
                        staged.add(path.name)
                        if path.suffix != ".zip" and token in path.read_bytes():
                            token_seen_in.add(str(path))
                    except OSError:
                        pass  # removed meanwhile
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            wait_for(
                lambda: all_runs_finished(instance, 3),
                timeout=900,
                what="the pipes runs",
                on_timeout=lambda: (
                    describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-4000:]
                ),
            )
        finally:
            stop.set()
            watcher.join()
        stats = emu.stats()
        records = instance.get_run_records()
        by_cluster = {r.dagster_run.tags[CLUSTER_TAG]: r for r in records}
        databricks_runs = {
            run["run_id"]: emulator_run(emu, run["run_id"]) for run in emu.runs.list({})["runs"]
        }
        detail = describe_runs(instance) + f"\n{stats}"

        # One Databricks run per Dagster run, started once despite the lost response.
        assert sorted(by_cluster) == ["default", "heavy", "quick"], detail
        assert stats["faults_injected"].get("drop_submit_response") == 1, detail
        assert stats["api_calls"]["jobs/runs/submit"] == 4, detail
        assert stats["idempotent_replays"] == 1, detail
        assert stats["runs_submitted"] == stats["runs_started"] == 3, detail
        assert not [call for call in stats["api_calls"] if call.startswith("dbfs")], detail
        # The run queue's per-cluster caps held.
        for cluster in ("default", "heavy", "quick"):
            assert max_overlap(records, (CLUSTER_TAG, cluster)) <= 1, detail

        # Per-object truth.
        assert instance.get_materialized_partitions(BRONZE) == set(PLACEMENT) - {"erp-suppliers"}
        statuses = {name: r.dagster_run.status for name, r in by_cluster.items()}
        assert statuses == {
            "default": DagsterRunStatus.FAILURE,
            "heavy": DagsterRunStatus.SUCCESS,
            "quick": DagsterRunStatus.SUCCESS,
        }, detail

        for name, record in by_cluster.items():
            run = record.dagster_run
            keys = run.tags[OBJECTS_TAG].split(",")
            [(databricks_id, submitted)] = [
                (i, r) for i, r in databricks_runs.items() if run.run_id in r.run_name
            ]
            # Findable both ways, bounded in time, on the compute clusters.yaml names.
            assert all(key in submitted.run_name for key in keys), submitted.run_name
            assert submitted.timeout_seconds == 1800
            [task] = submitted.tasks
            compute = {
                "default": "existing_cluster_id",
                "heavy": "new_cluster",
                "quick": "environment_key",
            }[name]
            assert task.spec.get(compute), task.spec
            logs = "\n".join(run_logs(instance, run.run_id))
            page = f"/emulator/runs/{databricks_id}"
            assert page in logs
            # Each object's own event, linked to the Databricks run, arrived while it ran.
            end_s = emu.runs.get({"run_id": str(databricks_id)})["end_time"] / 1000
            events = [
                e
                for e in instance.all_logs(run.run_id)
                if e.dagster_event is not None
                and e.dagster_event.event_type
                in (DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION)
            ]
            assert sorted({e.dagster_event.partition for e in events}) == sorted(keys)
            for event in events:
                data = event.dagster_event.event_specific_data
                happened = getattr(data, "materialization", None) or data.asset_observation
                assert page in happened.metadata["databricks_run_url"].value
            if name == "default":
                first = min(e.timestamp for e in events)
                assert first < end_s - 1, (first, end_s)
            # The remote stdout reached the step's log.
            assert f"Databricks run {databricks_id} stdout" in logs
            assert "fanout_dagster: loading" in logs

        # The failed object: its error and traceback, the remote stderr and the
        # Databricks run's own error, all in the step's log; the step names it.
        failed_run = by_cluster["default"].dagster_run
        logs = "\n".join(run_logs(instance, failed_run.run_id))
        assert "erp-suppliers failed: SourceError: no source files match" in logs
        assert "Traceback (most recent call last)" in logs
        assert "stderr (last" in logs
        assert "ObjectsFailed: 1 of 3 object(s) failed: erp-suppliers" in logs
        [failure] = instance.get_records_for_run(
            failed_run.run_id, of_type=DagsterEventType.STEP_FAILURE
        ).records
        message = failure.event_log_entry.dagster_event.step_failure_data.error.message
        assert "1 of 3 object(s) failed (2 loaded): erp-suppliers" in message, message

        # The token appears nowhere: runs, events, Dagster's files, staged files, task logs.
        for record in records:
            assert emu.token not in repr(record.dagster_run.tags)
            for entry in instance.all_logs(record.dagster_run.run_id):
                assert emu.token not in repr(entry)
        for folder in (Path(home), emu.root / "runs"):
            for path in folder.rglob("*"):
                if path.is_file():
                    assert token not in path.read_bytes(), f"token found in {path}"
        assert {"bundle.zip", "pipes_entry.py", "context.json"} <= staged, staged
        assert not token_seen_in, token_seen_in
        # Staging and Pipes folders on the volume are gone.
        assert volume_files(emu) == []

        # The remote side imported nothing but the standard library, the compute's pyspark,
        # what the run installed and the bundle (no Dagster: the compute has none).
        imports = remote_imports(emu)
        assert len(imports) == 3, imports
        for task, modules in imports.items():
            sources = {name: import_source(where) for name, where in modules.items()}
            foreign = {name: modules[name] for name, source in sources.items() if not source}
            assert not foreign, (task, foreign)
            assert set(sources.values()) - {"stdlib", "bundle"} <= REMOTE_PACKAGES, sources
            assert "dagster" not in modules, (task, modules)
            assert "/fanout_bundle_" in str(modules["fanout_dagster"]), modules  # the bundle

        # The data, in main.bronze, read from the sources on the volume.
        for key in set(PLACEMENT) - {"erp-suppliers"}:
            obj = objects[key]
            table = uc_table(spark, emu, obj.target.table)
            expected = spark_source_count(spark, obj, expected_source_files(project.data, obj))
            assert table.count() == expected, key
            files = {r._source_file for r in table.select("_source_file").distinct().collect()}
            assert all("/Volumes/main/raw/landing/" in f for f in files), files

    assert leftovers(tmp_path) == []


def test_terminating_a_pipes_run_cancels_its_databricks_run(project, tmp_path):
    place_objects(project, {"erp-order_lines": "default"})
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        data_in="volume",
        dbfs_root=False,
        env=pipes_env(tmp_path),
    ) as (instance, emu, _home):
        databricks_run_id, pgid, members = wait_for_remote_spark(emu, instance, timeout=300)
        [run] = instance.get_runs()
        assert instance.run_launcher.terminate(run.run_id)

        wait_for(
            lambda: instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED,
            120,
            "the Dagster run to be canceled",
            on_timeout=lambda: describe_runs(instance),
        )
        body = emu.wait_for_run(databricks_run_id, timeout=60)
        assert (body["state"]["life_cycle_state"], body["state"]["result_state"]) == (
            "TERMINATED",
            "CANCELED",
        )
        assert emu.stats()["runs_by_result_state"] == {"CANCELED": 1}
        wait_for(
            lambda: not any(alive(pid) for pid in members),
            30,
            "the task processes to exit",
            interval=0.2,
            on_timeout=lambda: str(group_members(pgid)),
        )
        assert instance.get_materialized_partitions(BRONZE) == set()
        # Canceled, and cleaned up all the same.
        assert volume_files(emu) == []
    assert leftovers(tmp_path) == []
