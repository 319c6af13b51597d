"""Faults, each with its proof: real Spark, real Dagster processes, the real
step launcher against the Databricks emulator. Nothing is mocked.

1. The Dagster daemon (alone, or its whole process group) is SIGKILLed in the
   middle of a UI backfill and restarted.
2. A run worker is SIGKILLed: its run is failed within two minutes and retried;
   killed in the middle of a Delta write, that write never commits.
3. The Databricks API answers 429 and 503 for a while.
4. A remote run dies at the cluster level (its driver process group is killed).
5. A Dagster run is terminated while its Databricks run is RUNNING.
(An object's Spark write failing half way is in ../test_faults.py.)

1 and 2 (the faults of Dagster's own processes) run on SQLite and on PostgreSQL
storage; for 1, PostgreSQL runs the process-group kill, the scenario where the
new daemon's run monitoring must find the dead worker in the storage. 3 to 5
are faults of the Databricks side, on the default SQLite storage.

Every scenario runs on both configurations of the instance (accelerated: the
repo's dagster.yaml; stock: Dagster's own run queue and launcher), except the
process-group kill: Dagster's DefaultRunLauncher cannot see a worker lost with
its code server (no health check; docs/operations.md, "Stock or accelerated"),
so on a stock single host that run waits for an operator. Each scenario also
checks the steps' claims: held one run at a time per object, and released, or
freed by run monitoring once a run whose worker died has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG

from databricks_emulator.faults import path_under
from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.claims import lock_pool
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.tags import OBJECTS_TAG, RETRIES_TAG, RETRY_STRATEGY_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    DEPLOYMENTS,
    all_runs_finished,
    assert_claims_within,
    claim_holds,
    dagster_daemon,
    describe_runs,
    run_objects,
    wait_for,
    waited_for,
    write_dagster_home,
)
from fanout_dagster_tests.e2e.test_databricks import databricks_deployment, uc_table
from fanout_dagster_tests.helpers import (
    expected_source_files,
    keep_objects,
    spark_source_count,
)
from fanout_dagster_tests.postgres import STORAGES

BRONZE = AssetKey("bronze")


# --------------------------------------------------------------------------- 1. daemon killed mid-backfill

BACKFILL_OBJECTS = ["erp-payments", "erp-stores", "erp-suppliers"]  # payments: an append table


def step_failure_messages(instance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    return [r.event_log_entry.dagster_event.step_failure_data.error.message for r in records]


def run_statuses(instance) -> list[str]:
    return sorted(run.status.value for run in instance.get_runs())


def materializations_per_partition(instance) -> dict[str, list[str]]:
    records = instance.fetch_materializations(BRONZE, limit=1000).records
    runs: dict[str, list[str]] = {}
    for record in records:
        runs.setdefault(record.partition_key, []).append(record.run_id)
    return runs


def run_failure(instance, run_id: str) -> str:
    events = instance.all_logs(
        run_id,
        of_type={
            DagsterEventType.RUN_FAILURE,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.ENGINE_EVENT,
        },
    )
    return "\n".join(f"  {e.dagster_event.event_type_value}: {e.user_message}" for e in events)


def kill_leftover_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this test started (orphans of a killed daemon)."""
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("deployment", "kill_scope", "storage"),
    [
        ("accelerated", "daemon_process", "sqlite"),
        ("accelerated", "process_group", "sqlite"),
        ("accelerated", "process_group", "postgres"),
        ("stock", "daemon_process", "sqlite"),
        ("stock", "daemon_process", "postgres"),
    ],
)
@pytest.mark.duration(150)
def test_a_daemon_killed_mid_backfill_and_restarted_completes_the_backfill_exactly_once(
    project, tmp_path, spark, kill_scope, dagster_storage, deployment
):
    """A UI backfill of 3 objects, one run each, one run at a time. Once the
    first run has succeeded, the second is STARTED and the third QUEUED, the
    daemon is SIGKILLed and a new daemon is started; the backfill must complete
    with every object loaded exactly once and no run left STARTED. The objects
    declare `retries: 1`.

    kill_scope:
    - daemon_process: the daemon process alone (a daemon crash: OOM kill,
      kill -9). Its code server and the in-flight run worker are separate
      processes (same process group, not killed) and keep going: the run
      completes, nothing is retried.
    - process_group: the daemon's whole process group (a host or container
      loss): daemon, code server, the in-flight run worker and its Spark JVM.
      The new daemon's run monitoring finds the worker gone (the run launcher
      checks its pid) and marks the run failed, freeing its queue slot; the
      run retries daemon runs it again (the coordinator tagged the backfill's
      runs with the objects' retries).
    """
    from dagster._core.execution.backfill import BulkActionStatus

    from fanout_dagster.orchestration.placement import record_clusters
    from fanout_dagster_tests.e2e.test_packed_backfill import wait_backfill
    from fanout_dagster_tests.e2e.webserver import (
        backfill_status,
        dagster_webserver,
        launch_asset_backfill,
        stop_sensor,
        wait_until_loaded,
    )

    keep_objects(project, BACKFILL_OBJECTS)
    set_retries(project, 1)
    objects = load_objects(project.configs).by_key()
    keys = sorted(objects)
    home = write_dagster_home(
        tmp_path / "dagster_home",
        max_concurrent_runs=1,
        cluster_limits={"default": 1, "heavy": 1},
        storage=dagster_storage,
        deployment=deployment,
    )
    env = {**project.env(), "FANOUT_OBJECTS_PER_RUN": "1", "FANOUT_THREADS_PER_RUN": "1"}
    daemon_log, web_log = tmp_path / "daemon.log", tmp_path / "webserver.log"

    def logs() -> str:
        return "\n--- daemon.log (tail)\n" + daemon_log.read_text(errors="replace")[-5000:]

    with DagsterInstance.from_config(str(home)) as instance:
        # The UI: switch the sensor off (the backfill is the only launcher),
        # register the objects as the sensor would, backfill every partition.
        with dagster_webserver(home, env, web_log) as (web, gql):
            wait_until_loaded(gql, web, timeout=180, log_path=web_log)
            assert stop_sensor(gql, "object_configs_sensor") == "STOPPED"
            instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
            record_clusters(instance, {key: obj.cluster for key, obj in objects.items()})
            backfill_id = launch_asset_backfill(gql, ["bronze"], all_partitions=True)
            assert backfill_status(gql, backfill_id)["numPartitions"] == len(keys)

        killed_pgid = None
        try:
            with dagster_daemon(home, env, daemon_log) as first_daemon:
                killed_pgid = first_daemon.pid

                def one_done_one_running_one_queued() -> bool:
                    statuses = run_statuses(instance)
                    return statuses == ["QUEUED", "STARTED", "SUCCESS"]

                wait_for(
                    one_done_one_running_one_queued,
                    300,
                    "a finished, a started and a queued run",
                    interval=0.2,
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
                at_kill = {run.run_id: run.status for run in instance.get_runs()}
                [in_flight] = [
                    run_id for run_id, st in at_kill.items() if st == DagsterRunStatus.STARTED
                ]
                processes = group_members(killed_pgid)
                if kill_scope == "daemon_process":
                    os.kill(first_daemon.pid, signal.SIGKILL)
                else:
                    os.killpg(killed_pgid, signal.SIGKILL)
                first_daemon.wait()
            survivors = group_members(killed_pgid)
            backfill = instance.get_backfill(backfill_id)
            assert backfill is not None and backfill.status == BulkActionStatus.REQUESTED

            with dagster_daemon(home, env, daemon_log):
                # A run whose worker died must not stay STARTED: within two minutes
                # of the restart it has finished (its orphaned worker completed it)
                # or been marked failed (and is retried).

                def left_started() -> bool:
                    current = instance.get_run_by_id(in_flight)
                    assert current is not None
                    return current.status != DagsterRunStatus.STARTED

                wait_for(
                    left_started,
                    120,
                    "the run in flight at the kill to leave STARTED",
                    interval=0.5,
                    on_timeout=lambda: (
                        f"survivors of the kill: {survivors}\n" + describe_runs(instance)
                    ),
                )
                status = wait_backfill(
                    instance,
                    backfill_id,
                    timeout=300,
                    on_timeout=lambda: describe_runs(instance) + logs(),
                )
        finally:
            if killed_pgid is not None:
                kill_leftover_group(killed_pgid)

        detail = (
            f"at kill: {at_kill}\nprocesses: {processes}\nsurvivors: {survivors}\n"
            + describe_runs(instance)
            + "".join(
                f"\n{run.run_id[:8]}: {run_failure(instance, run.run_id)}"
                for run in instance.get_runs()
                if run.status != DagsterRunStatus.SUCCESS
            )
        )
        assert status == BulkActionStatus.COMPLETED_SUCCESS, detail + logs()
        runs = instance.get_runs()
        retried = []
        if kill_scope == "process_group":
            # The run whose worker died failed, naming it, and was retried once.
            dead = instance.get_run_by_id(in_flight)
            assert dead is not None and dead.status == DagsterRunStatus.FAILURE, detail
            assert "is gone" in run_messages(instance, in_flight), run_messages(instance, in_flight)
            assert dead.tags[RETRIES_TAG] == "1", dead.tags  # the coordinator tagged it
            retried = [run for run in runs if run.tags.get(PARENT_RUN_ID_TAG) == in_flight]
            assert [run.tags.get(RETRY_NUMBER_TAG) for run in retried] == ["1"], detail
            assert retried[0].tags[OBJECTS_TAG] == dead.tags[OBJECTS_TAG], detail
            runs = [run for run in runs if run.run_id != in_flight]
        # One run per object, none left STARTED, none launched twice.
        assert len(runs) == len(keys), detail
        assert all(run.status == DagsterRunStatus.SUCCESS for run in runs), detail
        records = instance.get_run_records(filters=RunsFilter(run_ids=[r.run_id for r in runs]))
        assert sorted(key for rec in records for key in run_objects(instance, rec)) == keys, detail
        # Every run's step held its claims (the dead one's until it was failed), one
        # run per object at a time, none left held.
        assert_claims_within(claim_holds(instance), {"default": 1, "heavy": 1}, detail)
        assert_no_claims_held(instance, keys)
        # Each partition materialized exactly once, by its run.
        per_partition = materializations_per_partition(instance)
        assert sorted(per_partition) == keys and all(len(v) == 1 for v in per_partition.values()), (
            per_partition
        )

    # The data: each table holds its source once, written by that one run.
    for key, obj in objects.items():
        table_df = spark.read.format("delta").load(str(project.process_table(obj.target.table)))
        assert table_df.count() == spark_source_count(
            spark, obj, expected_source_files(project.data, obj)
        ), key
        writers = {
            r._dagster_run_id for r in table_df.select("_dagster_run_id").distinct().collect()
        }
        assert writers == set(per_partition[key]), (key, writers)
    print(
        f"\n{kill_scope}: killed with runs {sorted(s.value for s in at_kill.values())}; "
        f"processes {processes}; survivors {survivors}; retries {len(retried)}"
    )


def run_status(instance, run_id: str) -> DagsterRunStatus | None:
    run = instance.get_run_by_id(run_id)
    return run.status if run else None


def run_messages(instance, run_id: str) -> str:
    """The messages of a run's engine and failure events (Dagster's own, not user logs)."""
    events = instance.all_logs(
        run_id, of_type={DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT}
    )
    return "\n".join(e.dagster_event.message or "" for e in events if e.dagster_event)


def set_retries(project, retries: int) -> None:
    """Give every object of the project's objects.yaml (keep_objects) `retries`."""
    path = project.configs / "objects.yaml"
    entries = yaml.safe_load(path.read_text())
    for entry in entries:
        entry["retries"] = retries
    path.write_text(yaml.safe_dump(entries, sort_keys=False))


# --------------------------------------------------------------------------- 2. run worker killed


@pytest.mark.slow
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize("storage", STORAGES)
def test_a_run_whose_worker_is_killed_is_failed_within_two_minutes_and_retried(
    project, tmp_path, spark, dagster_storage, deployment
):
    """SIGKILL of the run worker alone (an OOM kill, say) while its run is
    STARTED, the daemon alive. Within two minutes the run is marked failed (by
    the code server that started the worker, or by run monitoring when the run
    launcher finds the worker's pid gone), freeing the only queue slot; the
    object declares `retries: 1`, so the daemon's automatic re-execution runs it
    again, and the object is loaded once, by the retry. The killed step never
    released its claims: the retry takes them only once run monitoring has freed
    those of the ended run."""
    key = "erp-stores"
    keep_objects(project, [key])
    set_retries(project, 1)
    obj = load_objects(project.configs).by_key()[key]
    home = write_dagster_home(
        tmp_path / "dagster_home",
        max_concurrent_runs=1,
        cluster_limits={"default": 1},
        storage=dagster_storage,
        deployment=deployment,
    )
    log = tmp_path / "daemon.log"

    def logs() -> str:
        return "\n--- daemon.log (tail)\n" + log.read_text(errors="replace")[-4000:]

    with (
        DagsterInstance.from_config(str(home)) as instance,
        dagster_daemon(home, project.env(), log),
    ):
        # The sensor's run, once its worker has reported its pid.
        found: dict = {}

        def worker_running() -> bool:
            runs = instance.get_runs()
            if len(runs) != 1 or runs[0].status != DagsterRunStatus.STARTED:
                return False
            for entry in instance.all_logs(runs[0].run_id, of_type=DagsterEventType.ENGINE_EVENT):
                message = entry.dagster_event.message if entry.dagster_event else ""
                match = re.match(r"Started process for run \(pid: (\d+)\)", message or "")
                if match:
                    found.update(run=runs[0], pid=int(match.group(1)))
            return bool(found)

        wait_for(
            worker_running,
            300,
            "the sensor's run to start",
            interval=0.2,
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        run, pid = found["run"], found["pid"]
        assert run.tags[RETRIES_TAG] == "1" and run.tags[RETRY_STRATEGY_TAG] == "ALL_STEPS"
        assert alive(pid)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        wait_for(
            lambda: run_status(instance, run.run_id) == DagsterRunStatus.FAILURE,
            120,
            "run monitoring to fail the run whose worker was killed",
            interval=0.5,
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        detected = time.monotonic() - killed
        # Who noticed: the code server that started the worker (it reports a
        # child killed under it), or run monitoring (the run launcher finds the
        # pid gone; the only way when the code server went down too, see
        # test_a_daemon_killed_mid_backfill... with the process_group scope).
        messages = run_messages(instance, run.run_id)
        assert (
            "was terminated by signal 9 (SIGKILL)" in messages
            or f"run worker process {pid} is gone" in messages
        ), messages

        def retry_done():
            retries = [
                r for r in instance.get_runs() if r.tags.get(PARENT_RUN_ID_TAG) == run.run_id
            ]
            return retries if retries and retries[0].status in FINISHED_STATUSES else None

        [retry] = wait_for(
            retry_done,
            300,
            "the automatic retry to finish",
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        assert retry.status == DagsterRunStatus.SUCCESS, describe_runs(instance) + logs()
        assert retry.tags[RETRY_NUMBER_TAG] == "1"
        assert retry.tags[OBJECTS_TAG] == key
        assert len(instance.get_runs()) == 2, describe_runs(instance)
        [mat] = instance.fetch_materializations(BRONZE, limit=10).records
        assert mat.run_id == retry.run_id
        # The killed step's claims were held until its run had ended and been swept;
        # the retry held its own after that, and released them.
        holds = {hold.run_id: hold for hold in claim_holds(instance)}
        killed_run = instance.get_run_record_by_id(run.run_id)
        assert killed_run is not None and killed_run.end_time is not None
        assert holds[retry.run_id].start >= killed_run.end_time, (holds, killed_run.end_time)
        assert_claims_within(list(holds.values()), {"default": 1}, describe_runs(instance))
        assert_no_claims_held(instance, [key])
        waits = waited_for(instance, retry.run_id)
        assert all(run.run_id[:8] in message for message in waits), waits

    table_df = spark.read.format("delta").load(str(project.process_table(obj.target.table)))
    assert table_df.count() == spark_source_count(
        spark, obj, expected_source_files(project.data, obj)
    )
    assert {r._dagster_run_id for r in table_df.select("_dagster_run_id").distinct().collect()} == {
        retry.run_id
    }
    print(f"\nworker {pid} killed; run failed {detected:.1f} s later; retried by {retry.run_id}")


def assert_no_claims_held(instance: DagsterInstance, keys: list[str]) -> None:
    """No run holds a claim on these objects' locks any more (nor waits for one)."""
    for key in keys:
        info = instance.event_log_storage.get_concurrency_info(lock_pool(f"object/{key}"))
        assert (info.claimed_slots, info.pending_steps) == ([], []), (key, info)


def killed_run_commits(table_dir: Path, run_id: str) -> list[int]:
    """Versions of a Delta table committed by this run (its commits' userMetadata)."""
    versions = []
    for commit in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            info = json.loads(line).get("commitInfo")
            if info and run_id in (info.get("userMetadata") or ""):
                versions.append(int(commit.stem))
    return versions


def running_jobs(server, tag: str) -> list[dict] | None:
    """The Spark jobs running on the Connect server for operations that carry `tag`
    (None: the Spark UI did not answer in time, on a busy machine: nothing seen)."""
    from fanout_dagster_tests.e2e.test_cancel import server_jobs

    try:
        jobs = server_jobs(server)
    except OSError:
        return None
    return [
        job
        for job in jobs
        if job["status"] == "RUNNING" and any(tag in t for t in job.get("jobTags", []))
    ]


@pytest.mark.slow
def test_a_worker_killed_mid_write_leaves_no_commit_once_its_run_is_failed(project, tmp_path):
    """SIGKILL of a run worker while its Delta write runs on the Spark Connect
    server. The server does not stop an operation whose client went away: until
    issue 20 the write committed there after the run had been failed and its
    object freed for the next run (seconds later). Now run monitoring stops the
    run's session on the server (interrupts its operations and waits until they
    have ended) before it fails the run: once the run is failed, nothing of it
    runs on the server and it committed nothing; the retry loads the object once."""
    from fanout_dagster.core.connect_sessions import run_session_id, stop_session
    from fanout_dagster.single_host.worker_identity import read_record
    from fanout_dagster_tests.e2e.test_cancel import add_big_object

    for path in project.configs.glob("*.yaml"):  # the big object alone
        path.unlink()
    key = add_big_object(project)
    config = project.configs / "big.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "retries": 1}))
    server = project.spark_server
    home = write_dagster_home(tmp_path / "dagster_home", max_concurrent_runs=1)
    instance_config = yaml.safe_load((home / "dagster.yaml").read_text())
    # Checked every second: the write (tens of seconds) is still running when
    # the check finds its worker gone (asserted below, from the check's message).
    instance_config["run_monitoring"]["poll_interval_seconds"] = 1
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    log = tmp_path / "daemon.log"
    table_dir = project.process_table("big_events")

    def logs() -> str:
        return "\n--- daemon.log (tail)\n" + log.read_text(errors="replace")[-4000:]

    with (
        DagsterInstance.from_config(str(home)) as instance,
        dagster_daemon(home, project.env(), log),
    ):
        run = wait_for(
            lambda: next(
                (r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED), None
            ),
            300,
            "the sensor's run to start",
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        assert run is not None  # wait_for returns a truthy value
        run_tag = f"fanout-run-{run.run_id}"
        wait_for(
            lambda: any(
                "write_operation" in job.get("description", "")
                for job in running_jobs(server, run_tag) or []
            ),
            300,
            "the object's Delta write to run on the server",
            interval=0.2,
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        record = read_record(instance, run.run_id)
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)

        wait_for(
            lambda: run_status(instance, run.run_id) == DagsterRunStatus.FAILURE,
            120,
            "run monitoring to fail the run whose worker was killed",
            interval=0.2,
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        # When it was failed, nothing of it ran on the server any more: its
        # session was stopped and released (an orphaned write would still be
        # running: stopping the session now would find it).
        assert stop_session(server.address, run_session_id(run.run_id), token=server.token) == 0, (
            logs()
        )
        wait_for(
            lambda: running_jobs(server, run_tag) == [],
            120,
            "the UI's job list to show the failed run's jobs ended",
            interval=0.2,
        )
        assert killed_run_commits(table_dir, run.run_id) == [], logs()
        messages = run_messages(instance, run.run_id)
        assert f"run worker process {record.pid} is gone" in messages, messages
        assert "Spark operation(s) still running on" in messages, messages  # stopped mid-write

        [retry] = wait_for(
            lambda: [
                r
                for r in instance.get_runs()
                if r.tags.get(PARENT_RUN_ID_TAG) == run.run_id and r.status in FINISHED_STATUSES
            ],
            600,
            "the retry to finish",
            on_timeout=lambda: describe_runs(instance) + logs(),
        )
        assert retry.status == DagsterRunStatus.SUCCESS, describe_runs(instance) + logs()
        assert instance.get_materialized_partitions(BRONZE) == {key}
    # The killed run never committed, not even later; the retry did, once.
    assert killed_run_commits(table_dir, run.run_id) == []
    assert len(killed_run_commits(table_dir, retry.run_id)) == 1
    print(f"\nworker {record.pid} killed mid-write; {messages.splitlines()[-1][:300]}")


# --------------------------------------------------------------------------- Databricks target helpers


def group_members(pgid: int) -> dict[int, str]:
    """pid -> command name of every live process in a process group (from /proc)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members[int(entry.name)] = comm
    return members


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def only_emulator_run(emu) -> tuple[int, str]:
    """(run id, task key) of the one run the emulator has."""
    [run] = emu.runs.list({})["runs"]
    page = emu.run_page(run["run_id"])
    [task_key] = page["task_logs"]
    return run["run_id"], task_key


def wait_for_remote_spark(emu, instance, timeout: float) -> tuple[int, int, dict[int, str]]:
    """Until the one Databricks run is RUNNING with a Spark JVM in its task's process group.

    Returns (databricks run id, task pid = process group id, group members).
    """
    found: dict = {}

    def ready() -> bool:
        runs = emu.runs.list({})["runs"] if emu.stats()["runs_submitted"] else []
        if not runs:
            return False
        run_id, task_key = only_emulator_run(emu)
        page = emu.run_page(run_id)
        state = page["state"]["life_cycle_state"]
        assert state in ("PENDING", "RUNNING"), (
            f"the Databricks run ended before the fault: {page['state']}"
        )
        pid = page["task_logs"][task_key]["pid"]
        if state != "RUNNING" or not pid:
            return False
        members = group_members(pid)
        if "java" not in members.values():
            return False
        found.update(run_id=run_id, pid=pid, members=members)
        return True

    wait_for(
        ready,
        timeout,
        "the Databricks run to be RUNNING with its Spark JVM",
        interval=0.1,
        on_timeout=lambda: describe_runs(instance) + "\n" + str(emu.stats()),
    )
    return found["run_id"], found["pid"], found["members"]


def the_dagster_run(instance, timeout: float):
    wait_for(lambda: len(instance.get_runs()) == 1, timeout, "the sensor's run")
    return instance.get_runs()[0]


# --------------------------------------------------------------------------- 3. 429 / 503

# Every call kind each launch mode makes, as (HTTP method, path prefix): the step launcher
# stages on DBFS, submits, polls the run and its events file, and removes its staging; Pipes
# stages on a volume, submits, polls, reads the Pipes messages and the run's output, cleans up.
THROTTLED_CALLS = {
    "step_launcher": [
        ("POST", "/api/2.0/dbfs/create"),
        ("POST", "/api/2.0/dbfs/add-block"),
        ("POST", "/api/2.0/dbfs/close"),
        ("POST", "/api/2.2/jobs/runs/submit"),
        ("GET", "/api/2.2/jobs/runs/get"),
        ("GET", "/api/2.0/dbfs/read"),
        ("GET", "/api/2.0/dbfs/get-status"),
        ("POST", "/api/2.0/dbfs/delete"),
        ("GET", "/api/2.0/dbfs/list"),
    ],
    "pipes": [
        ("PUT", "/api/2.0/fs/directories"),
        ("PUT", "/api/2.0/fs/files"),
        ("POST", "/api/2.2/jobs/runs/submit"),
        ("GET", "/api/2.2/jobs/runs/get"),
        ("GET", "/api/2.0/fs/files"),
        ("GET", "/api/2.2/jobs/runs/get-output"),
        ("GET", "/api/2.0/fs/directories"),
        ("DELETE", "/api/2.0/fs/files"),
        ("DELETE", "/api/2.0/fs/directories"),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize("launch", ["step_launcher", "pipes"])
def test_throttling_and_unavailability_of_the_databricks_api_are_ridden_out(
    project, tmp_path, spark, launch, deployment
):
    """Every call kind of the launch mode is refused twice before it is served: a 429
    (with Retry-After on half of them, without on the others) and a 503; and the submit is
    answered 503 after Databricks had started the run. The run succeeds, one Databricks run
    does the work, once: an append table holds each source file's rows once."""
    from fanout_dagster_tests.e2e.test_databricks_pipes import pipes_env

    key, table = "erp-payments", "erp_payments"  # append: a second load would add rows
    keep_objects(project, [key])
    # Pipes: sources and staging on volumes, no DBFS root; the step launcher: DBFS.
    options: dict[str, Any] = (
        {"data_in": "volume", "dbfs_root": False, "env": pipes_env(tmp_path)}
        if launch == "pipes"
        else {}
    )
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        deployment=deployment,
        **options,
    ) as (instance, emu, _home):
        calls = THROTTLED_CALLS[launch]
        for index, (method, path) in enumerate(calls):
            retry_after = 1 if index % 2 == 0 else None
            emu.inject_faults(
                http_429=1, retry_after_seconds=retry_after, path_prefix=path, method=method
            )
            emu.inject_faults(http_503=1, retry_after_seconds=None, path_prefix=path, method=method)
        emu.inject_faults(unavailable_after_submit=1)
        wait_for(
            lambda: all_runs_finished(instance, 1),
            600,
            "the run",
            on_timeout=lambda: describe_runs(instance) + str(emu.stats()),
        )
        stats = emu.stats()
        pending = emu.faults.pending()
        served = emu.faults.served()
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS, describe_runs(instance) + "\n".join(
            step_failure_messages(instance, run.run_id)
        )
        # Every call kind met its faults: all were served, two per call kind.
        assert pending == dict.fromkeys(pending, 0), (pending, stats["api_calls"])
        met = {(f["method"], f["path"]) for f in served}
        for method, path in calls:
            hits = [f for f in served if f["method"] == method and path_under(f["path"], path)]
            assert [f["status"] for f in hits] == [429, 503], (method, path, met)
        assert stats["faults_injected"] == {
            "http_429": len(calls),
            "http_503": len(calls),
            "unavailable_after_submit": 1,
        }, stats
        # One Databricks run, started once although its submit was retried four times.
        assert stats["api_calls"]["jobs/runs/submit"] == 4, stats["api_calls"]
        assert stats["runs_submitted"] == stats["runs_started"] == 1, stats
        assert stats["idempotent_replays"] == 1, stats
        assert stats["runs_by_result_state"] == {"SUCCESS": 1}
        assert instance.get_materialized_partitions(BRONZE) == {key}
        # The launching process held the step's claims around the Databricks run.
        [hold] = claim_holds(instance)
        assert lock_pool(f"object/{key}") in hold.pools
        assert_no_claims_held(instance, [key])

    # The work, done once: each source file's rows once, one load per file, one writer.
    obj = load_objects(project.configs).by_key()[key]
    files = expected_source_files(project.data, obj)
    table_df = uc_table(spark, emu, table)
    assert table_df.count() == spark_source_count(spark, obj, files)
    assert table_df.select("_load_id").distinct().count() == len(files)
    assert table_df.select("_dagster_run_id").distinct().count() == 1


# --------------------------------------------------------------------------- 4. cluster-level failure


@pytest.mark.slow
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_a_remote_run_killed_at_the_cluster_level_fails_the_step_with_the_databricks_message(
    project, tmp_path, deployment
):
    """The driver of the Databricks run (the emulator's task: its python and
    Spark JVM) is SIGKILLed while the step is loading: no Python exception of
    ours is involved. The Databricks run ends FAILED with a state message, and
    that message reaches the Dagster step's failure."""
    key = "erp-order_lines"
    keep_objects(project, [key])
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        deployment=deployment,
    ) as (instance, emu, _home):
        databricks_run_id, pgid, members = wait_for_remote_spark(emu, instance, timeout=300)
        os.killpg(pgid, signal.SIGKILL)

        body = emu.wait_for_run(databricks_run_id, timeout=60)
        state = body["state"]
        assert (state["life_cycle_state"], state.get("result_state")) in (
            ("TERMINATED", "FAILED"),
            ("INTERNAL_ERROR", None),
            ("INTERNAL_ERROR", "FAILED"),
        ), state
        assert state["state_message"], state
        assert emu.stats()["runs_by_result_state"] == {
            state.get("result_state") or "INTERNAL_ERROR": 1
        }

        run = the_dagster_run(instance, 5)
        wait_for(
            lambda: instance.get_run_by_id(run.run_id).status in FINISHED_STATUSES,
            120,
            "the Dagster run to finish",
            on_timeout=lambda: describe_runs(instance),
        )
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        [message] = step_failure_messages(instance, run.run_id)
        assert f"Run `{databricks_run_id}` failed with result state" in message, message
        assert state["state_message"] in message, (state["state_message"], message)
        assert instance.get_materialized_partitions(BRONZE) == set()
        assert_no_claims_held(instance, [key])  # released by the failed step
        # Nothing of the killed driver is left.
        assert not any(alive(pid) for pid in members), group_members(pgid)
    print(f"\nkilled driver {members}; step failure: {message.splitlines()[0][:400]}")


# --------------------------------------------------------------------------- 5. terminate from Dagster


@pytest.mark.slow
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_terminating_a_dagster_run_cancels_its_running_databricks_run_and_its_processes(
    project, tmp_path, deployment
):
    """Terminate (the UI's button) while the Databricks run is RUNNING with a
    Spark JVM: the Databricks run ends CANCELED and its python and JVM are gone."""
    key = "erp-order_lines"
    keep_objects(project, [key])
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        deployment=deployment,
    ) as (instance, emu, _home):
        databricks_run_id, pgid, members = wait_for_remote_spark(emu, instance, timeout=300)
        assert sorted(members.values()).count("java") == 1 and pgid in members, members
        run = the_dagster_run(instance, 5)
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
        assert emu.run_state_history(databricks_run_id)[-3:] == [
            "RUNNING",
            "TERMINATING",
            "TERMINATED",
        ]
        assert emu.stats()["runs_by_result_state"] == {"CANCELED": 1}
        assert emu.stats()["running_now"] == 0
        # The driver's python and its JVM are gone, not orphaned.
        wait_for(
            lambda: not any(alive(pid) for pid in members),
            30,
            "the task processes to exit",
            interval=0.2,
            on_timeout=lambda: str(group_members(pgid)),
        )
        assert instance.get_materialized_partitions(BRONZE) == set()
        assert_no_claims_held(instance, [key])  # released by the terminated step
