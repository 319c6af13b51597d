"""The UI journey in a real browser: backfill every object from the `bronze`
asset page, watch the run queue hold its limits, then let the object sensor
pick up a new config file.

A real `dagster dev` (webserver + daemon + code server) runs on a free
loopback port against a temporary DAGSTER_HOME (the repo's dagster.yaml with
tighter limits) and a temporary copy of the sample configs and data. Debian's
Chromium, driven by Playwright, does what a user does: switch the sensor on,
open the asset's Partitions tab, "Materialize…" -> All -> "Launch backfill",
and later reload the page to see the new object. The Dagster instance is only
read, to observe the queue (run records) and the outcome (materializations).

Screenshots go to test-artifacts/ui/ (git-ignored): the partitions view before
the backfill, the launch dialog, the view after the backfill and after the
sensor's run, the backfill's runs and one run page; `failure.png` (plus the
dagster dev log) when a step fails.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter

import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    SensorResult,
    build_sensor_context,
)
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.tags import BACKFILL_ID_TAG, SENSOR_NAME_TAG

from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.e2e.dagster_processes import (
    assert_packed,
    backfill_runs,
    configured_limits,
    describe_runs,
    max_overlap,
    run_keys,
    wait_for,
    write_dagster_home,
)
from fanout_dagster_tests.e2e.ui_helpers import (
    ARTIFACTS,
    DagsterDev,
    QueueObservation,
    chromium_path,
    dagster_env,
    launch_chromium,
    run_cli,
    screenshot,
)
from fanout_dagster_tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow

BRONZE = AssetKey("bronze")
SENSOR = "object_configs_sensor"
WORKSPACE = ["-w", str(REPO_ROOT / "workspace.yaml")]

# Limits low enough that every one of them binds: 8 runs (6 on `default`,
# 2 on `heavy`), at most 3 at once, 2 per default cluster, 1 heavy.
MAX_CONCURRENT_RUNS = 3
CLUSTER_LIMITS = {"default": 2, "heavy": 1}
# Two objects per backfill run: half the Spark start-ups of one run per object
# (the suite shares 2 cores), and the run coordinator has to resolve each
# run's partition *range* to objects and clusters, the path UI backfills take.
OBJECTS_PER_RUN = 2

# The object the sensor part adds: a copy of erp-stores under a new name and table.
NEW_CONFIG_FILE = "zz_ui_new_object.yaml"
NEW_OBJECT = {
    "code": "erp",
    "name": "stores_replica",
    "source": {"format": "csv", "path": "erp/stores/*.csv", "options": {"header": True}},
    "target": {"table": "erp_stores_replica", "mode": "overwrite"},
}
NEW_KEY = "erp-stores_replica"

# Generous: the suite's other end-to-end tests and benchmarks share the machine.
UI_TIMEOUT_MS = 90_000
BACKFILL_TIMEOUT_S = 900
SENSOR_RUN_TIMEOUT_S = 480
POLL_S = 0.5
ARTIFACT_NAMES = [
    "01-partitions-before-backfill.png",
    "02-launch-backfill-dialog.png",
    "03-partitions-after-backfill.png",
    "04-partitions-after-sensor.png",
    "05-backfill-runs.png",
    "06-run-page.png",
    "failure.png",
    "dagster_dev.log",
]


@pytest.mark.timeout(2400)
@pytest.mark.duration(240)
def test_ui_backfill_respects_run_queue_then_sensor_adds_new_object(project, tmp_path):
    chromium_path()  # skip (or fail under FANOUT_REQUIRE_BROWSER=1) before starting anything
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    timings: dict[str, float] = {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACT_NAMES:  # a passing run leaves no earlier failure behind
        (ARTIFACTS / stale).unlink(missing_ok=True)

    home = tmp_path / "dagster_home"
    write_dagster_home(home, max_concurrent_runs=MAX_CONCURRENT_RUNS, cluster_limits=CLUSTER_LIMITS)
    max_runs, limits = configured_limits(home)
    assert (max_runs, limits) == (MAX_CONCURRENT_RUNS, CLUSTER_LIMITS)
    # FANOUT_* from project.env() only (the parent's FANOUT_* are dropped).
    env = dagster_env(home, {**project.env(), "FANOUT_OBJECTS_PER_RUN": str(OBJECTS_PER_RUN)})

    objects = {obj.key: obj for obj in load_objects(project.configs).objects}
    sample_keys = set(objects)
    assert len(sample_keys) == 15, sorted(sample_keys)

    # --- Setting the stage: the backfill, not the sensor, ingests the samples.
    #
    # The object sensor is RUNNING by default: under `dagster dev` its first
    # tick would add the 15 partitions and request a run for each. It must not
    # here, yet the configs must stay in the folder (each run looks its
    # objects up there), and the sensor must still be live for the second part.
    # So, before `dagster dev` starts, the sensor's own first tick is evaluated
    # here (the product's code, on this instance) and what it decides is kept,
    # except its run requests:
    #   - the partitions it adds (same keys, same cluster-grouped order);
    #   - its cursor (the config hashes it has "seen"), stored for the sensor
    #     with Dagster's own CLI, `dagster sensor cursor --set`.
    # The cursor is the product's, whatever its format. The CLI stores the
    # sensor as STOPPED, so nothing ticks until the user switches it on in the
    # UI, first thing in the journey; from then on it runs throughout, finds
    # the 15 objects up to date (a skipped tick) and launches nothing for them.
    # The alternatives were worse: an empty configs folder fails every backfill
    # run ("no valid config"), and a sensor stopped and later restarted without
    # a cursor re-runs all 15 objects.
    with DagsterInstance.from_config(str(home)) as instance:
        first_tick = build_object_sensor()(
            build_sensor_context(
                instance=instance, resources={"object_configs": project.object_configs()}
            )
        )
        assert isinstance(first_tick, SensorResult), first_tick  # what the object sensor returns
        assert first_tick.run_requests is not None
        assert len(first_tick.run_requests) == len(sample_keys)
        partition_keys = list(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))
        assert set(partition_keys) == sample_keys, partition_keys
        assert first_tick.cursor
    run_cli(["sensor", "cursor", SENSOR, "--set", first_tick.cursor, *WORKSPACE], env, project.root)
    timings["stage set"] = time.monotonic() - started

    dev = DagsterDev(home=home, env=env, cwd=project.root, workspace_args=WORKSPACE)
    observation = QueueObservation(tag_key=CLUSTER_TAG)
    try:
        dev.start(timeout=240)
        timings["dagster dev ready"] = time.monotonic() - started
        with DagsterInstance.from_config(str(home)) as instance, sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            # dagster dev greets new browsers with a "Join the Dagster
            # community" modal, at a moment of its choosing: skip it whenever it shows.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda: page.get_by_role("button", name="Skip").click(),
            )

            def observe() -> None:
                observation.sample(instance.get_run_records())

            try:
                # 1. Switch the object sensor on (Automation -> the sensor -> "Running").
                page.goto(f"{dev.url}/automation")
                page.get_by_role("link").filter(has_text=SENSOR).first.click()
                running = page.get_by_role("row").filter(has_text="Running")
                switch = running.get_by_role("checkbox")
                expect(switch).not_to_be_checked()
                # The checkbox input is visually hidden; its label is the switch.
                running.locator("label").click()
                expect(switch).to_be_checked()
                tick = wait_for(
                    lambda: sensor_ticks(instance),
                    timeout=180,
                    what="the sensor's first tick after it was switched on",
                )[0]
                assert tick.status.value == "SKIPPED" and not tick.run_ids, (
                    f"the sensor should find the 15 sample objects up to date: {tick}"
                )
                timings["sensor on, first tick skipped"] = time.monotonic() - started

                # 2. The asset's Partitions tab lists every sample object.
                page.goto(f"{dev.url}/assets/bronze")
                page.get_by_role("tab", name="Partitions").click()
                expect(page.get_by_text(f"Missing ({len(sample_keys)})")).to_be_visible()
                for key in partition_keys:
                    expect(partition_row(page, key)).to_be_visible()
                screenshot(page, "01-partitions-before-backfill")

                # 3. Materialize… -> All -> Launch backfill.
                page.get_by_role("button", name=re.compile(r"Materialize(…|\.\.\.)")).click()
                dialog = page.get_by_role("dialog")
                expect(dialog).to_contain_text("Launch runs to materialize bronze")
                dialog.get_by_role("button", name="All", exact=True).click()
                expect(dialog).to_contain_text(f"{len(sample_keys)} partitions selected")
                expect(dialog).to_contain_text(f"maximum of {OBJECTS_PER_RUN} partitions per run")
                screenshot(page, "02-launch-backfill-dialog")
                dialog.get_by_role("button", name="Launch backfill").click()
                toast = page.get_by_text(re.compile(r"Created backfill \w+"))
                expect(toast).to_be_visible()
                created = re.search(r"Created backfill (\w+)", toast.inner_text())
                assert created is not None
                backfill_id = created.group(1)
                timings["backfill launched"] = time.monotonic() - started

                # 4. Watch the queue until every object is materialized.
                def backfill_done() -> bool:
                    done = instance.get_materialized_partitions(BRONZE) >= sample_keys
                    runs = [rec.dagster_run for rec in backfill_runs(instance, backfill_id)]
                    failed = [
                        r
                        for r in runs
                        if r.status != DagsterRunStatus.SUCCESS and r.status in FINISHED_STATUSES
                    ]
                    assert not failed, f"backfill runs failed:\n{describe_runs(instance)}"
                    return done and bool(runs) and all(r.status in FINISHED_STATUSES for r in runs)

                wait_for(
                    backfill_done,
                    timeout=BACKFILL_TIMEOUT_S,
                    what=f"backfill {backfill_id} to materialize every object",
                    interval=POLL_S,
                    on_poll=observe,
                )
                timings["backfill done"] = time.monotonic() - started

                check_backfill_runs(instance, backfill_id, objects, partition_keys)
                check_queue(instance, observation, max_runs, limits, backfill_id)

                page.reload()
                expect(page.get_by_text(f"Materialized ({len(sample_keys)})")).to_be_visible()
                expect(page.get_by_text("Missing (0)")).to_be_visible()
                screenshot(page, "03-partitions-after-backfill")

                # 5. A new config file: the running sensor adds its partition and runs it.
                (project.configs / NEW_CONFIG_FILE).write_text(
                    yaml.safe_dump(NEW_OBJECT, sort_keys=False)
                )
                assert NEW_KEY in {obj.key for obj in load_objects(project.configs).objects}
                wait_for(
                    lambda: NEW_KEY in instance.get_materialized_partitions(BRONZE),
                    timeout=SENSOR_RUN_TIMEOUT_S,
                    what=f"the sensor to add and materialize {NEW_KEY}",
                    interval=POLL_S,
                    on_poll=observe,
                )
                wait_for(
                    lambda: all(
                        r.dagster_run.status in FINISHED_STATUSES
                        for r in instance.get_run_records()
                    ),
                    timeout=120,
                    what="the sensor's run to finish",
                    interval=POLL_S,
                    on_poll=observe,
                )
                timings["sensor run done"] = time.monotonic() - started
                check_sensor_runs(instance, objects_cluster="default")
                check_queue(instance, observation, max_runs, limits, backfill_id)

                page.reload()
                expect(partition_row(page, NEW_KEY)).to_be_visible()
                expect(page.get_by_text(f"Materialized ({len(sample_keys) + 1})")).to_be_visible()
                screenshot(page, "04-partitions-after-sensor")

                # 6. The backfill's runs show the cluster the run queue placed them on.
                page.goto(f"{dev.url}/runs/b/{backfill_id}?tab=runs")
                expect(page.get_by_text("fanout/cluster: heavy").first).to_be_visible()
                expect(page.get_by_text("fanout/cluster: default").first).to_be_visible()
                screenshot(page, "05-backfill-runs")
                # A run of two objects: its page, as a user opens it from the backfill.
                pack = next(
                    rec.dagster_run
                    for rec in backfill_runs(instance, backfill_id)
                    if len(run_keys(rec)) > 1
                )
                page.get_by_role("link", name=pack.run_id[:8]).first.click()
                expect(page.get_by_text(pack.run_id[:8]).first).to_be_visible()
                expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
                screenshot(page, "06-run-page")
            except BaseException:
                screenshot(page, "failure")
                raise
            finally:
                browser.close()
    except BaseException:
        if dev.log_path and dev.log_path.exists():
            shutil.copy(dev.log_path, ARTIFACTS / "dagster_dev.log")
        raise
    finally:
        stragglers = dev.stop()
        timings["stopped"] = time.monotonic() - started
        print(
            f"\nUI backfill journey timings (s): { {k: round(v, 1) for k, v in timings.items()} }"
        )
        print(
            f"queue observation: {observation.samples} samples, peak {observation.max_in_progress} "
            f"in progress, per cluster {dict(observation.max_in_progress_by_tag)}, "
            f"queued while running: {observation.queued_while_running}"
        )
        if stragglers:
            print(f"killed processes that had left dagster dev's group: {stragglers}")


# --------------------------------------------------------------------------- UI


def partition_row(page, key: str):
    """A partition's row in the Partitions tab's list (its label is rendered
    twice, once hidden for measuring: take the visible one)."""
    return page.get_by_text(key, exact=True).filter(visible=True).first


# --------------------------------------------------------------------------- instance reads


def sensor_ticks(instance) -> list:
    """The object sensor's finished ticks, newest first."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
            return [t for t in ticks if t.status != TickStatus.STARTED]
    return []


def check_backfill_runs(instance, backfill_id, objects, partition_keys) -> None:
    runs = backfill_runs(instance, backfill_id)
    detail = describe_runs(instance)
    assert all(rec.dagster_run.status == DagsterRunStatus.SUCCESS for rec in runs), detail
    # Only the backfill ran the samples: the sensor launched nothing for them.
    assert not [r for r in instance.get_run_records() if SENSOR_NAME_TAG in r.dagster_run.tags], (
        detail
    )
    # Packs follow the partition order (the sensor's cluster grouping), and
    # the run coordinator tagged each run with its objects' cluster.
    clusters = {key: obj.cluster for key, obj in objects.items()}
    assert_packed(runs, partition_keys, clusters, OBJECTS_PER_RUN, detail)
    assert Counter(rec.dagster_run.tags[CLUSTER_TAG] for rec in runs) == Counter(
        {"default": 6, "heavy": 2}
    ), detail


def check_queue(instance, observation, max_runs, limits, backfill_id) -> None:
    detail = describe_runs(instance)
    # What polling saw (STARTING counts against the limits as much as STARTED).
    assert observation.max_in_progress <= max_runs, (observation, detail)
    for cluster, peak in observation.max_in_progress_by_tag.items():
        assert peak <= limits.get(cluster, max_runs), (cluster, observation, detail)
    assert observation.queued_while_running, ("no run was ever queued behind a running one", detail)
    assert observation.max_in_progress >= 2, ("runs never ran side by side", observation, detail)

    # And what the run records say afterwards, exactly: start..end of every run.
    records = instance.get_run_records()
    assert all(r.end_time for r in records), detail
    assert max_overlap(records) <= max_runs, detail
    for cluster, limit in limits.items():
        assert max_overlap(records, (CLUSTER_TAG, cluster)) <= limit, (cluster, detail)


def check_sensor_runs(instance, objects_cluster: str) -> None:
    detail = describe_runs(instance)
    sensor_runs = [
        r.dagster_run
        for r in instance.get_run_records()
        if r.dagster_run.tags.get(SENSOR_NAME_TAG) == SENSOR
    ]
    assert len(sensor_runs) == 1, ("the sensor should run only the new object", detail)
    run = sensor_runs[0]
    assert run.status == DagsterRunStatus.SUCCESS, detail
    assert run.tags.get(OBJECTS_TAG) == NEW_KEY, detail
    assert run.tags.get(CLUSTER_TAG) == objects_cluster, detail
    assert BACKFILL_ID_TAG not in run.tags, detail
    assert NEW_KEY in instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME)
