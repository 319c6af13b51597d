"""Claims on the databricks target, on a stock deployment (Dagster's own run queue
and launcher): the process that drives a Databricks run holds the step's claims
before it submits anything, in both launch modes. Under the step launcher that
is the launching process (the step's remote side sees a stand-in instance);
under Pipes, the run's own process. The real daemon, the real databricks-sdk
over HTTP, the workspace emulator."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterRunStatus
from dagster._core.storage.tags import SENSOR_NAME_TAG

from fanout_dagster.orchestration.claims import lock_pool
from fanout_dagster_tests.e2e.dagster_processes import (
    claim_holds,
    describe_runs,
    wait_for,
    waited_for,
)
from fanout_dagster_tests.e2e.test_databricks import databricks_deployment
from fanout_dagster_tests.e2e.test_databricks_pipes import pipes_env
from fanout_dagster_tests.helpers import keep_objects
from fanout_dagster_tests.orchestration.test_claims import Step, sample

pytestmark = pytest.mark.slow

KEY = "erp-stores"


@pytest.mark.parametrize("launch", ["step_launcher", "pipes"])
def test_a_databricks_step_submits_only_once_it_holds_its_claims(project, tmp_path, launch):
    """Another run is loading erp-stores (it holds the object's lock). The sensor's
    run of erp-stores starts, says it waits for that run, and submits nothing to
    Databricks; once the other run lets go, it claims, submits one run, loads, and
    releases its claims."""
    keep_objects(project, [KEY])
    options: dict = (
        {"data_in": "volume", "dbfs_root": False, "env": pipes_env(tmp_path)}
        if launch == "pipes"
        else {}
    )
    with databricks_deployment(
        project,
        tmp_path,
        objects_per_run=1,
        cluster_limits={"default": 1},
        deployment="stock",
        **options,
    ) as (instance, emu, _home):
        loading = Step(instance, [sample(KEY)], status=DagsterRunStatus.STARTED)
        loading.start()
        try:
            assert loading.holding.wait(120), loading.error

            def sensor_run_waiting():
                runs = [r for r in instance.get_runs() if SENSOR_NAME_TAG in r.tags]
                return runs and waited_for(instance, runs[0].run_id) and runs[0]

            run = wait_for(
                sensor_run_waiting,
                300,
                "the sensor's run to wait for the object",
                on_timeout=lambda: describe_runs(instance),
            )
            assert waited_for(instance, run.run_id) == [
                f"Waiting for object {KEY} (in use by run {loading.run_id[:8]})"
            ]
            assert emu.stats()["runs_submitted"] == 0
        finally:
            loading.finish()

        def finished():
            current = instance.get_run_by_id(run.run_id)
            return current if current and current.is_finished else None

        done = wait_for(
            finished, 300, "the sensor's run", on_timeout=lambda: describe_runs(instance)
        )
        assert done.status == DagsterRunStatus.SUCCESS, describe_runs(instance)
        assert emu.stats()["runs_submitted"] == 1
        assert instance.get_materialized_partitions(AssetKey("bronze")) == {KEY}
        holds = {hold.run_id: hold for hold in claim_holds(instance)}
        assert holds[loading.run_id].end <= holds[run.run_id].start
        info = instance.event_log_storage.get_concurrency_info(lock_pool(f"object/{KEY}"))
        assert (info.claimed_slots, info.pending_steps) == ([], [])
