"""Refresh beyond config changes, tick by tick against a real Dagster instance:
cron schedules, watched sources (local folders, and Unity Catalog volumes
through the Files API of the project's workspace emulator), and the run retry
tags an object's `retries` puts on its runs."""

from __future__ import annotations

import io
import logging
import os
import time
from datetime import UTC, datetime

import pytest
from dagster import AssetKey, DagsterEventType, materialize
from databricks.sdk import WorkspaceClient

from databricks_emulator import run_emulator
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster.orchestration.tags import (
    OBJECTS_TAG,
    RETRIES_TAG,
    RETRY_STRATEGY_TAG,
    TRIGGER_TAG,
)
from fanout_dagster_tests.helpers import keep_objects
from fanout_dagster_tests.orchestration.test_sensor import covered_keys, partitions, tick

BRONZE = AssetKey("bronze")


class Clock:
    """The time the sensor compares cron ticks with, set by the test."""

    def __init__(self, when: str):
        self.now = self.at(when)

    @staticmethod
    def at(when: str) -> float:
        return datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()

    def set(self, when: str) -> None:
        self.now = self.at(when)

    def __call__(self) -> float:
        return self.now


def requested_keys(result, instance) -> list[list[str]]:
    order = partitions(instance)
    return [covered_keys(r, order) for r in result.run_requests]


SCHEDULED = """\
defaults:
  schedule: "0 6 * * *"
  source: {options: {header: true}}
objects:
  - code: hr
    name: people
    source: {format: csv, path: erp/employees/*.csv}
    target: {table: hr_people}
  - code: hr
    name: stores
    source: {format: csv, path: erp/stores/*.csv}
    target: {table: hr_stores}
"""


def test_a_scheduled_object_runs_on_each_cron_tick_once_packed(instance, project):
    (project.configs / "hr.yaml").write_text(SCHEDULED)
    clock = Clock("2026-03-02 05:00:00")
    sensor = build_object_sensor(objects_per_run=4, clock=clock)
    first = tick(instance, project, sensor=sensor)  # every object is new: one run each pack
    assert len(first.run_requests) > 0

    clock.set("2026-03-02 05:59:59")
    before = tick(instance, project, cursor=first.cursor, sensor=sensor)
    assert before.skipped, before.run_requests

    # Within one sensor interval (15 s) of the 06:00 tick: one packed run for both.
    clock.set("2026-03-02 06:00:10")
    due = tick(instance, project, cursor=before.cursor, sensor=sensor)
    assert requested_keys(due, instance) == [["hr-people", "hr-stores"]]
    [request] = due.run_requests
    assert request.tags[TRIGGER_TAG] == "schedule"
    assert request.tags[OBJECTS_TAG] == "hr-people,hr-stores"
    tick_0600 = int(Clock.at("2026-03-02 06:00:00"))

    clock.set("2026-03-02 06:00:25")
    again = tick(instance, project, cursor=due.cursor, sensor=sensor)
    assert again.skipped

    # The sensor was off for three days: the missed ticks make one run, not three.
    clock.set("2026-03-05 07:30:00")
    late = tick(instance, project, cursor=again.cursor, sensor=sensor)
    assert requested_keys(late, instance) == [["hr-people", "hr-stores"]]
    assert late.run_requests[0].run_key != request.run_key
    assert tick(instance, project, cursor=late.cursor, sensor=sensor).skipped

    # The run key names the object and the cron tick (one run per tick, ever).
    single = build_object_sensor(objects_per_run=1, clock=clock)
    clock.set("2026-03-06 06:00:01")
    next_day = tick(instance, project, cursor=late.cursor, sensor=single)
    keys = sorted(r.run_key for r in next_day.run_requests)
    tick_0306 = int(Clock.at("2026-03-06 06:00:00"))
    assert keys == [f"hr-people:at{tick_0306}", f"hr-stores:at{tick_0306}"], keys
    assert tick_0306 > tick_0600


def test_an_object_with_neither_schedule_nor_watch_runs_only_when_its_config_changes(
    instance, project
):
    clock = Clock("2026-03-02 05:00:00")
    sensor = build_object_sensor(clock=clock)
    cursor = tick(instance, project, sensor=sensor).cursor
    for when in ("2026-03-02 06:00:05", "2026-03-03 00:00:05", "2026-04-01 00:00:05"):
        clock.set(when)
        later = tick(instance, project, cursor=cursor, sensor=sensor)
        assert later.skipped, (when, later.run_requests)
        cursor = later.cursor


WATCHED = """\
code: crm
name: web_events
source:
  format: json
  path: crm/web_events/day=*.jsonl
  watch: true
target:
  table: crm_web_events
  mode: append
cluster: heavy
"""


def test_a_watched_folder_is_ingested_when_a_file_arrives_or_changes(
    instance, project, spark_resource
):
    keep_objects(project, ["erp-stores"])
    (project.configs / "crm.yaml").write_text(WATCHED)
    first = tick(instance, project)
    assert sorted(r.partition_key for r in first.run_requests) == ["crm-web_events", "erp-stores"]
    # The first load of the watched object: every file.
    bronze = build_bronze_asset()
    loaded = materialize(
        [bronze],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key="crm-web_events",
    )
    assert files_read(loaded) == 7
    assert tick(instance, project, cursor=first.cursor).skipped

    # A new file: a run within the next tick, which reads that file only.
    events = project.data / "crm" / "web_events"
    source = (events / "day=2026-06-30.jsonl").read_text()
    (events / "day=2026-07-01.jsonl").write_text(source)
    arrived = tick(instance, project, cursor=first.cursor)
    [request] = arrived.run_requests
    assert (request.partition_key, request.tags[TRIGGER_TAG]) == ("crm-web_events", "files")
    run = materialize(
        [bronze],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
    )
    assert files_read(run) == 1
    quiet = tick(instance, project, cursor=arrived.cursor)
    assert quiet.skipped

    # A changed file (new size and time): another run. A file Spark skips: none.
    (events / "day=2026-06-24.jsonl").write_text(source + source)
    changed = tick(instance, project, cursor=quiet.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["crm-web_events"]
    assert changed.run_requests[0].run_key != request.run_key
    (events / "_SUCCESS").write_text("")
    assert tick(instance, project, cursor=changed.cursor).skipped


def files_read(result) -> int:
    [event] = [
        e for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
    ]
    return event.step_materialization_data.materialization.metadata["source_files_read"].value


VOLUME_OBJECT = """\
code: erp
name: orders
source:
  format: csv
  path: {path}
  options: {{header: true}}
  watch: true
target:
  table: erp_orders
  mode: append
"""


@pytest.mark.parametrize("path", ["erp/orders/*.csv", "erp/orders"])
def test_a_watched_volume_is_listed_with_the_files_api(instance, tmp_path, path):
    """The databricks target: the data root is a Unity Catalog volume the Dagster
    host does not mount; the sensor lists it with databricks-sdk's Files API."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "erp.yaml").write_text(VOLUME_OBJECT.format(path=path))
    root = "/Volumes/main/raw/landing"
    with run_emulator(root=tmp_path / "emu", volumes=["main.raw.landing"]) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        ws.files.upload(f"{root}/erp/orders/orders_2026-01.csv", io.BytesIO(b"id\n1\n"))
        ws.files.upload(f"{root}/erp/other.csv", io.BytesIO(b"id\n9\n"))
        project = VolumeProject(configs, root)
        sensor = build_object_sensor(
            workspace_client=lambda: WorkspaceClient(host=emu.host, token=emu.token)
        )
        first = tick(instance, project, sensor=sensor)
        assert [r.partition_key for r in first.run_requests] == ["erp-orders"]
        assert not first.logs.messages(logging.ERROR)
        assert tick(instance, project, cursor=first.cursor, sensor=sensor).skipped

        ws.files.upload(f"{root}/erp/orders/orders_2026-02.csv", io.BytesIO(b"id\n2\n"))
        arrived = tick(instance, project, cursor=first.cursor, sensor=sensor)
        assert [(r.partition_key, r.tags[TRIGGER_TAG]) for r in arrived.run_requests] == [
            ("erp-orders", "files")
        ]
        quiet = tick(instance, project, cursor=arrived.cursor, sensor=sensor)
        assert quiet.skipped
        # Files outside the pattern and hidden ones change nothing.
        ws.files.upload(f"{root}/erp/other.csv", io.BytesIO(b"id\n9\n10\n"))
        ws.files.upload(f"{root}/erp/orders/_committed_123", io.BytesIO(b"x"))
        assert tick(instance, project, cursor=quiet.cursor, sensor=sensor).skipped
        # A file rewritten with other content.
        time.sleep(0.01)
        ws.files.upload(f"{root}/erp/orders/orders_2026-01.csv", io.BytesIO(b"id\n1\n3\n"))
        rewritten = tick(instance, project, cursor=quiet.cursor, sensor=sensor)
        assert [r.partition_key for r in rewritten.run_requests] == ["erp-orders"]


class VolumeProject:
    """Configs in a folder, sources in a workspace volume (what `tick` needs of a project)."""

    def __init__(self, configs, data_root: str):
        self.configs = configs
        self.data_root = data_root

    def object_configs(self) -> ObjectConfigs:
        return ObjectConfigs(configs_dir=str(self.configs), data_root=self.data_root)


@pytest.mark.parametrize(
    "data_root,expected",
    [
        ("dbfs:/landing", "the data root dbfs:/landing is a URI"),
        ("abfss://raw@account.dfs.core.windows.net/landing", "is a URI"),
        ("/nowhere/landing", "the data root /nowhere/landing is not a folder of the Dagster host"),
    ],
)
def test_a_watch_that_cannot_be_listed_is_a_config_error_at_the_tick(
    instance, project, data_root, expected
):
    (project.configs / "crm_watch.yaml").write_text(
        WATCHED.replace("name: web_events", "name: web_events_watched").replace(
            "table: crm_web_events", "table: crm_web_events_watched"
        )
    )
    configs = ObjectConfigs(configs_dir=str(project.configs), data_root=data_root)
    result = tick(instance, VolumeProject(project.configs, data_root), sensor=None)
    # Every object is still added and requested (config changes need no listing)...
    assert sorted(r.partition_key for r in result.run_requests) == project.keys
    assert configs.load().errors == ()
    # ...and the watch is reported with its file and field, every tick.
    [error] = result.logs.messages(logging.ERROR)
    assert error.startswith(
        "invalid object config: crm_watch.yaml: crm-web_events_watched: source.watch: "
    ), error
    assert expected in error, error
    later = tick(instance, VolumeProject(project.configs, data_root), cursor=result.cursor)
    assert later.skipped
    assert "1 config error(s) in crm_watch.yaml" in later.skip_message
    assert len(later.logs.messages(logging.ERROR)) == 1


def test_a_watch_that_could_not_be_listed_runs_once_it_can(instance, project, tmp_path):
    """The data root appears after the object (a mount that was late, say): the
    first listing that works runs the object, as a change would."""
    root = tmp_path / "late_root"
    keep_objects(project, ["erp-stores"])
    (project.configs / "crm.yaml").write_text(WATCHED)
    late = VolumeProject(project.configs, str(root))
    first = tick(instance, late)
    assert sorted(r.partition_key for r in first.run_requests) == ["crm-web_events", "erp-stores"]
    assert "is not a folder of the Dagster host" in first.logs.messages(logging.ERROR)[0]
    (root / "crm" / "web_events").mkdir(parents=True)
    (root / "crm" / "web_events" / "day=2026-07-01.jsonl").write_text("{}\n")
    listed = tick(instance, late, cursor=first.cursor)
    assert [(r.partition_key, r.tags[TRIGGER_TAG]) for r in listed.run_requests] == [
        ("crm-web_events", "files")
    ]
    assert not listed.logs.messages(logging.ERROR)
    assert tick(instance, late, cursor=listed.cursor).skipped


def test_a_watch_under_a_symlink_leading_outside_the_root_is_reported(instance, project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "day=2026-07-09.jsonl").write_text("{}\n")
    os.symlink(outside, project.data / "crm" / "leak")
    (project.configs / "leak.yaml").write_text(
        WATCHED.replace("name: web_events", "name: leak")
        .replace("crm/web_events/day=*.jsonl", "crm/leak/*.jsonl")
        .replace("table: crm_web_events", "table: crm_leak")
    )
    result = tick(instance, project)
    errors = result.logs.messages(logging.ERROR)
    assert any(
        "leak.yaml: crm-leak: source.watch: cannot list" in m and "outside the data root" in m
        for m in errors
    ), errors
    assert "crm-leak" in {r.partition_key for r in result.run_requests}


RETRYING = """\
- code: hr
  name: people
  retries: 3
  source: {format: csv, path: erp/employees/*.csv, options: {header: true}}
  target: {table: hr_people}
- code: hr
  name: stores
  source: {format: csv, path: erp/stores/*.csv, options: {header: true}}
  target: {table: hr_stores}
- code: hr
  name: teams
  retries: 3
  source: {format: csv, path: erp/stores/*.csv, options: {header: true}}
  target: {table: hr_teams}
"""


def test_retries_set_dagster_run_retry_tags_and_split_packs(instance, project):
    keep_objects(project, ["erp-suppliers"])
    (project.configs / "hr.yaml").write_text(RETRYING)
    first = tick(instance, project, sensor=build_object_sensor(objects_per_run=10))
    # Packs break where `retries` changes: a run is retried as its objects declare.
    assert requested_keys(first, instance) == [
        ["erp-suppliers"],
        ["hr-people"],
        ["hr-stores"],
        ["hr-teams"],
    ]
    retried = [r for r in first.run_requests if RETRIES_TAG in r.tags]
    assert sorted(r.tags[OBJECTS_TAG] for r in retried) == ["hr-people", "hr-teams"]
    for request in retried:
        assert request.tags[RETRIES_TAG] == "3"
        assert request.tags[RETRY_STRATEGY_TAG] == "ALL_STEPS"
    # Objects that declare none take the deployment's `run_retries` (no tag).
    for request in first.run_requests:
        if request not in retried:
            assert RETRIES_TAG not in request.tags and RETRY_STRATEGY_TAG not in request.tags
    assert set(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME)) == set(project.keys)
