"""The databricks target end to end: the real daemon, the real dagster-databricks
step launcher and databricks-sdk, real HTTP to the project's workspace emulator,
which runs each step as a local PySpark process."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from databricks_emulator import run_emulator
from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.tags import CLUSTER_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    all_runs_finished,
    dagster_daemon,
    describe_runs,
    max_overlap,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.helpers import (
    expected_source_files,
    keep_objects,
    spark_source_count,
)

pytestmark = pytest.mark.slow

LAUNCH_MODE = "FANOUT_DATABRICKS_LAUNCH"

BRONZE = AssetKey("bronze")


UC_SCHEMA = "main.bronze"
LANDING_VOLUME = "main.raw.landing"  # sources, when the data root is a volume
OPS_VOLUME = "main.ops.fanout"  # the Pipes mode's staging
# The step launcher's cluster needs Dagster's libraries and this package's own dependencies
# (the emulator's clusters have pyspark only, as a runtime without them would): attached to
# each run, as docs/databricks.md says.
STEP_LAUNCHER_LIBRARIES = {
    "FANOUT_INSTALL_DEFAULT_LIBRARIES": "1",
    "FANOUT_CLUSTER_LIBRARIES": f"pydantic-settings=={version('pydantic-settings')}",
}


@contextmanager
def databricks_deployment(
    project,
    tmp_path: Path,
    *,
    objects_per_run: int,
    cluster_limits: dict[str, int],
    max_runs: int = 3,
    cluster_start_seconds: float = 0.0,
    data_in: str = "local",
    env: dict[str, str] | None = None,
    **emulator_options,
):
    """Emulator + daemon with FANOUT_TARGET=databricks; yields (instance, emulator, home).

    Bronze tables go to Unity Catalog (`main.bronze`, read them with `uc_table`).
    data_in: where the sources are, as the cluster reads them: `local` (the
    project's data folder), `dbfs` (copied to `dbfs:/landing`) or `volume`
    (copied to `/Volumes/main/raw/landing`). Run workers get a temp folder of
    their own (`tmp_path/run-tmp`), so what a run leaves there is seen.
    """
    home = write_dagster_home(
        tmp_path / "dagster_home", max_concurrent_runs=max_runs, cluster_limits=cluster_limits
    )
    run_tmp = tmp_path / "run-tmp"
    run_tmp.mkdir()
    volumes = sorted({*emulator_options.pop("volumes", []), LANDING_VOLUME, OPS_VOLUME})
    with run_emulator(
        root=tmp_path / "emulator",
        cluster_start_seconds=cluster_start_seconds,
        volumes=volumes,
        **emulator_options,
    ) as emu:
        if data_in == "dbfs":
            shutil.copytree(project.data, emu.dbfs_root / "landing")
            data_root = "dbfs:/landing"
        elif data_in == "volume":
            shutil.copytree(project.data, emu.root / "volumes/main/raw/landing", dirs_exist_ok=True)
            data_root = "/Volumes/main/raw/landing"
        else:
            data_root = str(project.data)
        deployment_env = {
            **project.env(),
            "FANOUT_TARGET": "databricks",
            "FANOUT_DATA_ROOT": data_root,
            "FANOUT_BRONZE_SCHEMA": UC_SCHEMA,
            "FANOUT_OBJECTS_PER_RUN": str(objects_per_run),
            "FANOUT_DATABRICKS_POLL_S": "0.5",
            "DATABRICKS_HOST": emu.host,
            "DATABRICKS_TOKEN": emu.token,
            "TMPDIR": str(run_tmp),
            **(STEP_LAUNCHER_LIBRARIES if (env or {}).get(LAUNCH_MODE) != "pipes" else {}),
            **(env or {}),
        }
        with (
            DagsterInstance.from_config(str(home)) as instance,
            dagster_daemon(home, deployment_env, tmp_path / "daemon.log"),
        ):
            yield instance, emu, home


def uc_table(spark, emu, table: str):
    """A bronze table of the emulated workspace (`main.bronze.<table>`), read from its storage."""
    return spark.read.format("delta").load(str(emu.root / "unity-catalog/main/bronze" / table))


def leftovers(tmp_path: Path) -> list[str]:
    """What the deployment's processes left in their temp folder (code bundles, ...);
    read once the daemon has stopped (its processes keep temp files while they run)."""
    return sorted(p.name for p in (tmp_path / "run-tmp").iterdir())


def emulator_run(emu, run_id: int):
    """The emulator's record of a Databricks run (what was submitted)."""
    return emu.runs._find_run(run_id)


def run_logs(instance, run_id: str) -> list[str]:
    return [entry.user_message or "" for entry in instance.all_logs(run_id)]


def test_packs_run_on_databricks_with_per_object_outcomes_and_no_leaked_token(
    project, tmp_path, spark
):
    """The step launcher on a workspace with a DBFS root, sources on `dbfs:/landing`
    (listed and read by Spark as URIs), tables in `main.bronze`."""
    keep_objects(project, ["erp-customers", "erp-products", "erp-suppliers", "erp-order_lines"])
    # erp-suppliers' source disappears: its object must fail on the cluster, alone.
    shutil.rmtree(project.data / "erp" / "suppliers")
    objects = load_objects(project.configs).by_key()

    observations: list[tuple[int, int]] = []  # (materializations so far, emulator runs RUNNING)
    staged: set[str] = set()  # every file seen staged on DBFS while the runs went on
    token_seen_in: set[str] = set()
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=2,
        cluster_limits={"default": 1, "heavy": 1},
        data_in="dbfs",
    ) as (instance, emu, home):
        stop = threading.Event()
        staging = emu.dbfs_root / "dagster_staging"
        token = emu.token.encode()

        def watch():
            # Events must stream back while the Databricks run is still going.
            while not stop.is_set():
                count = len(instance.fetch_materializations(BRONZE, limit=100).records)
                observations.append((count, emu.stats()["running_now"]))
                for path in staging.rglob("*") if staging.exists() else []:
                    try:
                        if path.is_file():
                            staged.add(path.relative_to(staging).as_posix())
                            if path.suffix != ".zip" and token in path.read_bytes():
                                token_seen_in.add(str(path))
                    except OSError:
                        pass  # removed meanwhile
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            # default: a pack of 2 + a pack of 1; heavy: 1 run.
            wait_for(
                lambda: all_runs_finished(instance, 3),
                timeout=600,
                what="the databricks runs",
                on_timeout=lambda: (
                    describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-3000:]
                ),
            )
        finally:
            stop.set()
            watcher.join()
        stats = emu.stats()
        records = instance.get_run_records()
        databricks_runs = {
            run["run_id"]: emulator_run(emu, run["run_id"]) for run in emu.runs.list({})["runs"]
        }

        # One Databricks run per Dagster run, each on its cluster, within the limits.
        assert stats["runs_submitted"] == len(records) == 3, describe_runs(instance)
        assert stats["max_concurrent_running_per_cluster"]["0000-000000-fanoutdefault"] <= 1
        assert max_overlap(records, (CLUSTER_TAG, "default")) <= 1
        assert {r.dagster_run.tags[CLUSTER_TAG] for r in records} == {"default", "heavy"}

        # Per-object truth: the healthy objects materialized, the broken one did not.
        assert instance.get_materialized_partitions(BRONZE) == {
            "erp-customers",
            "erp-products",
            "erp-order_lines",
        }
        failed = [r for r in records if r.dagster_run.status == DagsterRunStatus.FAILURE]
        assert len(failed) == 1 and "erp-suppliers" in failed[0].dagster_run.tags["fanout/objects"]
        failed_logs = "\n".join(run_logs(instance, failed[0].dagster_run.run_id))
        # The remote error and traceback reach the Dagster step.
        assert "erp-suppliers failed: SourceError: no source files match" in failed_logs
        assert "Traceback (most recent call last)" in failed_logs
        step_failures = instance.get_records_for_run(
            failed[0].dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE
        ).records
        assert (
            "erp-suppliers"
            in step_failures[0].event_log_entry.dagster_event.step_failure_data.error.message
        )

        for record in records:
            run = record.dagster_run
            logs = run_logs(instance, run.run_id)
            # The remote stdout (captured on the cluster, read back from DBFS) is in the logs.
            assert any("Captured stdout for step bronze" in line for line in logs)
            assert any("Running dagster job" in line for line in logs)
            # The Databricks run is named after the Dagster run and its objects, carries a
            # timeout, and its page is linked from the step's log.
            [(databricks_id, submitted)] = [
                (i, r) for i, r in databricks_runs.items() if run.run_id in r.run_name
            ]
            assert all(key in submitted.run_name for key in run.tags["fanout/objects"].split(","))
            assert submitted.timeout_seconds == 3600
            assert any(f"/emulator/runs/{databricks_id}" in line for line in logs), logs

        # Secrets: the token appears in no event, tag, metadata value or captured log.
        for record in records:
            run = record.dagster_run
            assert emu.token not in repr(run.tags) and emu.token not in repr(run.run_config)
            for entry in instance.all_logs(run.run_id):
                assert emu.token not in repr(entry)
        for path in Path(home).rglob("*"):
            if path.is_file():
                assert token not in path.read_bytes(), f"token found in {path}"
        assert staged and not token_seen_in, token_seen_in

        # Nothing is left behind: no staging on DBFS (nor a bundle in temp folders, below).
        assert not [p for p in staging.rglob("*") if p.is_file()], list(staging.rglob("*"))

        # The data landed in main.bronze, exactly once per object.
        for key in ("erp-customers", "erp-products", "erp-order_lines"):
            obj = objects[key]
            expected = spark_source_count(spark, obj, expected_source_files(project.data, obj))
            table = uc_table(spark, emu, obj.target.table)
            assert table.count() == expected, key
            # Read as URIs under dbfs:/landing (ingest.is_uri_root), not as local paths.
            files = {r._source_file for r in table.select("_source_file").distinct().collect()}
            assert files and all(f.startswith("dbfs:/landing/") for f in files), files

    assert any(count > 0 and running > 0 for count, running in observations), (
        "no materialization arrived while a Databricks run was still running"
    )
    assert leftovers(tmp_path) == []


def test_terminating_the_dagster_run_cancels_the_databricks_run(project, tmp_path):
    keep_objects(project, ["erp-customers"])
    # A slow cluster start keeps the Databricks run PENDING long enough to cancel it.
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        cluster_start_seconds=120,
    ) as (instance, emu, _home):
        wait_for(
            lambda: emu.stats()["runs_submitted"] == 1,
            300,
            "the Databricks submit",
            on_timeout=lambda: describe_runs(instance),
        )
        (run,) = instance.get_runs()
        assert instance.run_launcher.terminate(run.run_id)
        wait_for(
            lambda: instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED,
            120,
            "the Dagster run to be canceled",
        )
        wait_for(
            lambda: emu.stats()["runs_by_result_state"].get("CANCELED") == 1,
            60,
            "the Databricks run to be canceled",
            on_timeout=lambda: str(emu.stats()),
        )
        assert emu.stats()["running_now"] == 0
        assert emu.stats()["runs_started"] == 0


def test_a_lost_submit_response_never_runs_an_object_twice(project, tmp_path, spark):
    keep_objects(project, ["erp-payments"])  # append mode: a second load would add rows
    with databricks_deployment(
        project, tmp_path, objects_per_run=1, cluster_limits={"default": 1}
    ) as (instance, emu, _home):
        # The first runs/submit creates the run, then its response is dropped;
        # databricks-sdk retries the POST with the same idempotency token.
        emu.inject_faults(drop_submit_responses=1)
        wait_for(
            lambda: all_runs_finished(instance, 1),
            600,
            "the run",
            on_timeout=lambda: describe_runs(instance),
        )
        stats = emu.stats()
        assert instance.get_runs()[0].status == DagsterRunStatus.SUCCESS, describe_runs(instance)

    assert stats["faults_injected"].get("drop_submit_response") == 1, stats
    assert stats["api_calls"]["jobs/runs/submit"] == 2
    assert stats["idempotent_replays"] == 1
    assert stats["runs_started"] == 1
    # Exactly once: each source file's rows appear once (append keeps one load per file).
    table = uc_table(spark, emu, "erp_payments")
    source = spark.read.option("header", "true").csv(str(project.data / "erp/payments"))
    assert table.count() == source.count()
    assert table.select("_load_id").distinct().count() == len(
        list((project.data / "erp/payments").glob("*.csv"))
    )
