"""The object sensor's state: one entry per object in the instance's key-value
store, a cursor of a few bytes, consistent with the ticks Dagster commits, what
ran recorded from the loads themselves, and the state of removed objects pruned.
Real Dagster instances throughout (SQLite and PostgreSQL storage); 10,000 configs
where scale is the point."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import yaml
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterEvent,
    DagsterEventType,
    Definitions,
    instance_for_test,
    materialize,
)
from dagster._core.events import StepMaterializationData

from bench.data import write_scale_configs
from fanout_dagster.core.objects import load_objects, parse_cache_stats
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.locks import registered_locks
from fanout_dagster.orchestration.object_state import KV_PREFIX, delete_kv, set_kv
from fanout_dagster.orchestration.placement import Placement, recorded_placements
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster_tests.helpers import keep_objects, replace_once
from fanout_dagster_tests.orchestration.test_refresh import VolumeProject
from fanout_dagster_tests.orchestration.test_sensor import partitions, tick
from fanout_dagster_tests.postgres import STORAGES, storage_overrides
from fanout_dagster_tests.sensor_daemon import sensor_daemon
from fanout_dagster_tests.single_host.test_run_coordinator import repo_queue

BRONZE = AssetKey("bronze")


@pytest.fixture(params=STORAGES)
def storage(request) -> str:
    """The tests here that take an instance run on both storages."""
    return request.param


def kv_entries(instance, keys) -> dict[str, dict]:
    """The raw key-value entries of these objects (absent ones left out)."""
    rows = instance.run_storage.get_cursor_values({KV_PREFIX + key for key in keys})
    return {name[len(KV_PREFIX) :]: json.loads(value) for name, value in rows.items()}


def test_state_lives_in_the_key_value_store_and_the_cursor_stays_small(instance, project):
    first = tick(instance, project)
    objects = load_objects(project.configs).by_key()
    assert len(first.cursor) < 100, first.cursor
    entries = kv_entries(instance, objects)
    assert sorted(entries) == sorted(objects)
    for key, entry in entries.items():
        assert (entry["h"], entry["g"], entry["t"]) == (objects[key].config_hash, 1, 1)
        assert entry["f"] == objects[key].config_file
    # A tick with nothing to do writes nothing.
    second = tick(instance, project, cursor=first.cursor)
    assert second.skipped
    assert kv_entries(instance, objects) == entries


@pytest.mark.duration(100)
def test_ten_thousand_objects_steady_ticks_write_nothing_and_prune_in_one_line(instance, tmp_path):
    configs, data = write_scale_configs(tmp_path / "scale", 10_000, 100)
    # Files older than the parse cache's settle window, so that it keeps them.
    past = time.time() - 60
    for path in configs.iterdir():
        os.utime(path, (past, past))
    project = VolumeProject(configs, str(data))
    sensor = build_object_sensor(objects_per_run=100, max_runs_per_tick=100)

    first = tick(instance, project, sensor=sensor)
    assert len(first.run_requests) == 100  # every object requested, 100 a run
    assert len(first.cursor) < 10_000, len(first.cursor)

    before = parse_cache_stats()
    started = time.perf_counter()
    steady = tick(instance, project, cursor=first.cursor, sensor=sensor)
    elapsed = time.perf_counter() - started
    after = parse_cache_stats()
    assert steady.skipped
    assert "10000 object(s) up to date" in steady.skip_message
    assert len(steady.cursor) < 10_000
    keys = partitions(instance)
    assert {entry["t"] for entry in kv_entries(instance, keys).values()} == {1}  # untouched
    print(f"\nsteady tick over 10,000 configs: {elapsed:.2f} s; cursor {steady.cursor!r}")
    # What keeps a steady tick cheap: no config file parsed again (the time itself
    # is the benchmark's, measured on a quiet machine: bench/scale.py).
    assert after.misses == before.misses and after.hits > before.hits

    # A file of 100 objects removed: one line, and their entries pruned.
    (configs / "system_007.yaml").unlink()
    pruned = tick(instance, project, cursor=steady.cursor, sensor=sensor)
    removed = [m for m in pruned.logs.messages(logging.WARNING) if "removed" in m]
    assert len(removed) == 1, removed
    assert removed[0].startswith("100 object(s) removed (no config any more): bench-scale_00700,")
    assert removed[0].count("bench-scale_") == 10 and "and 90 more" in removed[0]
    assert len(kv_entries(instance, keys)) == 9_900
    assert pruned.skipped
    assert not tick(instance, project, cursor=pruned.cursor, sensor=sensor).logs.messages(
        logging.WARNING
    )


def test_a_tick_whose_cursor_was_not_stored_is_redone_with_the_same_run_keys(instance, project):
    first = tick(instance, project)
    replace_once(
        project.configs / "erp.yaml",
        "path: erp/customers/*.csv\n    options:\n      header: true\n",
        "path: erp/customers/*.csv\n    options:\n      header: true\n      inferSchema: true\n",
    )
    # The tick's state is written, but the daemon never stores its cursor
    # (it died before reserving the runs, say)...
    lost = tick(instance, project, cursor=first.cursor)
    [lost_request] = lost.run_requests
    assert kv_entries(instance, ["erp-customers"])["erp-customers"]["t"] == 2
    # ...so the next tick, from the stored cursor, makes the same request again,
    # and Dagster creates its run once (same run key).
    redone = tick(instance, project, cursor=first.cursor)
    assert [(r.partition_key, r.run_key) for r in redone.run_requests] == [
        (lost_request.partition_key, lost_request.run_key)
    ]
    assert lost_request.run_key.startswith("erp-customers:2:")
    assert tick(instance, project, cursor=redone.cursor).skipped


def test_a_cursor_of_the_first_format_moves_into_the_store_without_rerunning(instance, project):
    objects = load_objects(project.configs).by_key()
    legacy = json.dumps({key: [obj.config_hash, 3] for key, obj in objects.items()})
    migrated = tick(instance, project, cursor=legacy)
    assert migrated.skipped and migrated.run_requests == []
    assert {entry["g"] for entry in kv_entries(instance, objects).values()} == {3}
    replace_once(
        project.configs / "erp.yaml",
        "table: erp_customers\n    mode: overwrite",
        "table: erp_customers\n    mode: append",
    )
    changed = tick(instance, project, cursor=migrated.cursor)
    assert [r.run_key.split(":")[:2] for r in changed.run_requests] == [["erp-customers", "4"]]


def test_the_sensor_records_the_config_a_run_loaded_not_the_one_it_requested(
    instance, project, spark_resource
):
    keep_objects(project, ["erp-stores"])
    first = tick(instance, project)
    [request] = first.run_requests
    requested = load_objects(project.configs).by_key()["erp-stores"].config_hash

    # The config changes while the run waits in the queue; the run loads the
    # newest valid config when it starts.
    objects_yaml = project.configs / "objects.yaml"
    entries = yaml.safe_load(objects_yaml.read_text())
    entries[0]["source"]["options"]["inferSchema"] = True
    objects_yaml.write_text(yaml.safe_dump(entries, sort_keys=False))
    current = load_objects(project.configs).by_key()["erp-stores"].config_hash
    assert current != requested
    result = materialize(
        [build_bronze_asset()],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key="erp-stores",
        tags=request.tags,
    )
    [event] = [
        e for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
    ]
    assert event.step_materialization_data.materialization.metadata["config_hash"].value == current

    # What ran is recorded: nothing is requested for the config that already ran.
    after = tick(instance, project, cursor=first.cursor)
    assert after.skipped, after.run_requests
    entry = kv_entries(instance, ["erp-stores"])["erp-stores"]
    assert (entry["h"], entry["l"]) == (current, current)


def test_a_load_by_a_run_older_than_the_request_does_not_settle_it(
    instance, project, spark_resource
):
    keep_objects(project, ["erp-stores"])
    first = tick(instance, project)
    old_hash = load_objects(project.configs).by_key()["erp-stores"].config_hash
    # A run of the object is created (a UI launch, say)...
    job = Definitions(
        assets=[build_bronze_asset()], resources=project.resources(spark_resource)
    ).resolve_implicit_global_asset_job_def()
    older = instance.create_run_for_job(job, tags={"dagster/partition": "erp-stores"})
    # ...then the config changes and the sensor requests a run for it...
    objects_yaml = project.configs / "objects.yaml"
    entries = yaml.safe_load(objects_yaml.read_text())
    entries[0]["source"]["options"]["inferSchema"] = True
    objects_yaml.write_text(yaml.safe_dump(entries, sort_keys=False))
    new_hash = load_objects(project.configs).by_key()["erp-stores"].config_hash
    changed = tick(instance, project, cursor=first.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["erp-stores"]
    # ...and the older run, which had started with the old config, loads it.
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name=older.job_name,
            event_specific_data=StepMaterializationData(
                AssetMaterialization(
                    asset_key=BRONZE, partition="erp-stores", metadata={"config_hash": old_hash}
                )
            ),
        ),
        run_id=older.run_id,
    )
    # Recorded as loaded, but the object stays settled on the run requested
    # after it: no second request for the new config.
    later = tick(instance, project, cursor=changed.cursor)
    assert later.skipped, later.run_requests
    entry = kv_entries(instance, ["erp-stores"])["erp-stores"]
    assert (entry["h"], entry["l"]) == (new_hash, old_hash)


def test_objects_of_an_invalid_file_keep_their_state_until_it_is_fixed(instance, project):
    first = tick(instance, project)
    erp = project.configs / "erp.yaml"
    good = erp.read_text()
    erp.write_text(good + "\n- code: [unclosed\n")
    broken = tick(instance, project, cursor=first.cursor)
    assert broken.skipped
    warnings = [r.getMessage() for r in broken.logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        "10 object(s) not scheduled while their config file is invalid (state kept"
    ), warnings
    assert len(kv_entries(instance, partitions(instance))) == len(partitions(instance))
    erp.write_text(good)
    assert tick(instance, project, cursor=broken.cursor).skipped  # nothing re-runs


def test_the_cursor_reports_no_config_folder_without_pruning(instance, project, tmp_path):
    first = tick(instance, project)
    missing = ObjectConfigs(configs_dir=str(tmp_path / "gone"), data_root=str(project.data))
    holder = VolumeProject(tmp_path / "gone", str(project.data))
    assert missing.load().errors
    gone = tick(instance, holder, cursor=first.cursor)
    assert gone.skipped
    assert len(kv_entries(instance, partitions(instance))) == len(project.keys)


# --------------------------------------------------------------------------- through the daemon


@pytest.fixture
def queued_instance(dagster_storage):
    """An instance with the repo's run queue: the daemon's runs wait there (QUEUED)."""
    with instance_for_test(
        overrides={**repo_queue(), **storage_overrides(dagster_storage)}
    ) as inst:
        yield inst


def partitions_of(runs) -> list[str]:
    return sorted(run.tags["dagster/partition"] for run in runs)


def test_a_config_removed_and_added_back_runs_again_once(queued_instance, project, monkeypatch):
    keep_objects(project, ["erp-products", "erp-stores"])
    objects_yaml = project.configs / "objects.yaml"
    both = yaml.safe_load(objects_yaml.read_text())
    with sensor_daemon(queued_instance, project, monkeypatch) as daemon:
        assert partitions_of(daemon.tick()) == ["erp-products", "erp-stores"]
        assert daemon.tick() == []

        # erp-stores removed: its state is pruned, nothing runs.
        objects_yaml.write_text(yaml.safe_dump(both[:1], sort_keys=False))
        assert [e["name"] for e in both[:1]] == ["products"]
        assert daemon.tick() == []
        assert kv_entries(queued_instance, ["erp-stores"]) == {}

        # Added back as it was: it runs again (Dagster skips a run key used
        # before, so the request must not reuse the first one), and once.
        objects_yaml.write_text(yaml.safe_dump(both, sort_keys=False))
        assert partitions_of(daemon.tick()) == ["erp-stores"]
        assert daemon.tick() == []
        first, again = daemon.run_keys("erp-stores")
        assert first != again


def test_a_revert_after_a_removal_runs(queued_instance, project, monkeypatch):
    keep_objects(project, ["erp-products", "erp-stores"])
    objects_yaml = project.configs / "objects.yaml"
    config_a = yaml.safe_load(objects_yaml.read_text())
    assert [e["name"] for e in config_a] == ["products", "stores"]
    config_b = yaml.safe_load(objects_yaml.read_text())
    config_b[1]["source"]["options"]["inferSchema"] = True
    with sensor_daemon(queued_instance, project, monkeypatch) as daemon:
        assert partitions_of(daemon.tick()) == ["erp-products", "erp-stores"]  # A
        objects_yaml.write_text(yaml.safe_dump(config_b, sort_keys=False))
        assert partitions_of(daemon.tick()) == ["erp-stores"]  # B
        objects_yaml.write_text(yaml.safe_dump(config_a[:1], sort_keys=False))
        assert daemon.tick() == []  # removed, and pruned
        assert kv_entries(queued_instance, ["erp-stores"]) == {}
        objects_yaml.write_text(yaml.safe_dump(config_a, sort_keys=False))
        assert partitions_of(daemon.tick()) == ["erp-stores"]  # A again: a change, a run
        assert daemon.tick() == []
        assert len(set(daemon.run_keys("erp-stores"))) == 3


def test_resetting_the_cursor_reruns_nothing(queued_instance, project, monkeypatch):
    keep_objects(project, ["erp-products", "erp-stores"])
    objects_yaml = project.configs / "objects.yaml"
    both = yaml.safe_load(objects_yaml.read_text())
    objects_yaml.write_text(yaml.safe_dump(both[:1], sort_keys=False))
    with sensor_daemon(queued_instance, project, monkeypatch) as daemon:
        assert partitions_of(daemon.tick()) == ["erp-products"]
        objects_yaml.write_text(yaml.safe_dump(both, sort_keys=False))
        assert partitions_of(daemon.tick()) == ["erp-stores"]  # new on a later tick
        assert daemon.tick() == []

        # The cursor cleared (`dagster sensor cursor --delete`, or by hand in the
        # UI): the objects' state is in the store, nothing runs again...
        daemon.reset_cursor()
        assert daemon.tick() == []
        assert daemon.tick() == []
        # ...and a change after it still runs, once.
        changed = yaml.safe_load(objects_yaml.read_text())
        changed[1]["source"]["options"]["inferSchema"] = True
        objects_yaml.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert partitions_of(daemon.tick()) == ["erp-stores"]
        assert daemon.tick() == []


def test_placements_recorded_before_tables_were_get_their_tables_without_a_run(instance, project):
    first = tick(instance, project)
    objects = load_objects(project.configs).by_key()
    # The store as an earlier version left it: no table in the entries, no table records.
    entries = kv_entries(instance, objects)
    for key, entry in entries.items():
        assert entry.pop("b") == objects[key].target.table
    set_kv(
        instance,
        {KV_PREFIX + key: json.dumps(entry) for key, entry in entries.items()},
        existing={KV_PREFIX + key for key in entries},
    )
    delete_kv(instance, [f"fanout_dagster/table/{key}" for key in objects])
    assert {p.table for p in recorded_placements(instance, objects).values()} == {None}

    second = tick(instance, project, cursor=first.cursor)
    assert second.skipped, second.run_requests
    assert recorded_placements(instance, objects) == {
        key: Placement(obj.cluster, obj.retries, obj.target.table) for key, obj in objects.items()
    }
    assert sorted(registered_locks(instance)) == sorted(
        f"table/{obj.target.table}" for obj in objects.values()
    )
    # Once: the next tick writes nothing.
    written = kv_entries(instance, objects)
    assert tick(instance, project, cursor=second.cursor).skipped
    assert kv_entries(instance, objects) == written
