"""Cancelling a local run from Dagster: the objects of its pack that have not
started never start, and the Spark operations it has running on the Spark
Connect server are interrupted (by the run's tag), through the real daemon,
run worker and server."""

from __future__ import annotations

import json
import random
import time
import urllib.request

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from fanout_dagster.local_spark.catalog import has_commits
from fanout_dagster.orchestration.tags import OBJECTS_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    dagster_daemon,
    describe_runs,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.helpers import keep_objects

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
SMALL = ["erp-stores", "erp-suppliers", "erp-products"]


def add_big_object(project, rows: int = 1_500_000) -> str:
    """An object whose load takes a while on 2 cores (tens of seconds)."""
    folder = project.data / "big" / "events"
    folder.mkdir(parents=True)
    rng = random.Random(7)
    with open(folder / "events.csv", "w") as out:
        out.write("id,customer,amount,channel,note\n")
        for i in range(rows):
            out.write(f"{i},{rng.randrange(10**6)},{rng.random() * 1000:.2f},web,row {i}\n")
    (project.configs / "big.yaml").write_text(
        yaml.safe_dump(
            {
                "code": "big",
                "name": "events",
                "source": {
                    "format": "csv",
                    "path": "big/events/*.csv",
                    "options": {"header": True},
                },
                "target": {"table": "big_events"},
            }
        )
    )
    return "big-events"


def server_jobs(server) -> list[dict]:
    api = f"http://{server.host}:{server.ui_port}/api/v1/applications"
    [app] = json.load(urllib.request.urlopen(api, timeout=60))
    return json.load(urllib.request.urlopen(f"{api}/{app['id']}/jobs", timeout=60))


def test_terminating_a_local_run_interrupts_its_spark_work_and_skips_the_rest_of_its_pack(
    project, tmp_path
):
    keep_objects(project, SMALL)
    big = add_big_object(project)
    server = project.spark_server
    home = write_dagster_home(tmp_path / "dagster_home", max_concurrent_runs=1)
    env = {
        **project.env(),
        # One run for all four objects, one at a time: the big one first
        # (partitions are added in cluster, key order: "big-events" sorts first).
        "FANOUT_OBJECTS_PER_RUN": "4",
        "FANOUT_THREADS_PER_RUN": "1",
    }
    with (
        DagsterInstance.from_config(str(home)) as instance,
        dagster_daemon(home, env, tmp_path / "daemon.log"),
    ):
        run = wait_for(
            lambda: next(
                (r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED), None
            ),
            timeout=240,
            what="the packed run to start",
            on_timeout=lambda: (
                describe_runs(instance) + (tmp_path / "daemon.log").read_text()[-3000:]
            ),
        )
        assert run is not None  # wait_for returns a truthy value
        assert run.tags[OBJECTS_TAG].split(",")[0] == big
        run_tag = f"fanout-run-{run.run_id}"

        def big_load_running() -> bool:
            return any(
                j["status"] == "RUNNING" and any(run_tag in t for t in j.get("jobTags", []))
                for j in server_jobs(server)
            )

        wait_for(big_load_running, timeout=240, what="the big object's Spark job", interval=0.5)
        terminated_at = time.monotonic()
        assert instance.run_launcher.terminate(run.run_id)

        def cancelled() -> bool:
            current = instance.get_run_by_id(run.run_id)
            assert current is not None
            return current.status == DagsterRunStatus.CANCELED

        wait_for(
            cancelled,
            timeout=120,
            what="the run to be cancelled",
            on_timeout=lambda: describe_runs(instance),
        )
        cancelled_after = time.monotonic() - terminated_at

    # Nothing of the pack was loaded: the big object was interrupted, the small
    # ones never started.
    assert instance.get_materialized_partitions(BRONZE) == set()
    # (The big object's interrupted first write may leave data files and an
    # empty _delta_log: no version, no table; its next load clears them.)
    for key in [big, *SMALL]:
        table = key.replace("-", "_")
        assert not has_commits(project.process_table(table)), key
    # On the server: the run's jobs ended (cancelled), none is still running.
    mine = [j for j in server_jobs(server) if any(run_tag in t for t in j.get("jobTags", []))]
    assert mine and all(j["status"] != "RUNNING" for j in mine), mine
    # The big object's job was interrupted (FAILED), not waited for.
    assert any(j["status"] == "FAILED" for j in mine), [j["status"] for j in mine]
    print(f"\ncancelled {cancelled_after:.1f} s after terminate")
