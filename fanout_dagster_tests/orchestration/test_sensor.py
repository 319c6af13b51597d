"""The object sensor, evaluated against a real Dagster instance, tick by tick, on
SQLite and on PostgreSQL storage."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import yaml
from dagster import SensorResult, SkipReason, build_sensor_context
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fanout_dagster.core.ingest import ingest_object
from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.object_state import ObjectStateStore
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import record_clusters, recorded_clusters
from fanout_dagster.orchestration.sensor import build_object_sensor
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster_tests.helpers import ListHandler, replace_once, table_state, tree_snapshot
from fanout_dagster_tests.postgres import STORAGES


@pytest.fixture(params=STORAGES)
def storage(request) -> str:
    """The tests here that take an instance run on both storages."""
    return request.param


NEW_OBJECT = """\
code: hr
name: people
cluster: heavy
source:
  format: csv
  path: hr/people/*.csv
  options: {header: true}
target:
  table: hr_people
"""


class Tick:
    def __init__(self, result, logs: ListHandler, added_partitions: list[str]):
        self.result = result
        self.logs = logs
        # The sensor adds new partitions itself, in one insert.
        self.added_partitions = added_partitions

    @property
    def skipped(self) -> bool:
        return isinstance(self.result, SkipReason) or not self.result.run_requests

    @property
    def skip_message(self) -> str:
        reason = self.result if isinstance(self.result, SkipReason) else self.result.skip_reason
        return (reason.skip_message or "") if reason else ""

    @property
    def run_requests(self):
        return [] if isinstance(self.result, SkipReason) else list(self.result.run_requests)

    @property
    def cursor(self):
        # Every tick stores its cursor (the tick number commits its state writes).
        return None if isinstance(self.result, SkipReason) else self.result.cursor


def tick(instance, project, cursor=None, sensor=None) -> Tick:
    """One sensor evaluation against the instance, as the sensor daemon runs it."""
    sensor = sensor or build_object_sensor()
    before = partitions(instance)
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"object_configs": project.object_configs()}
    )
    logs = ListHandler()
    context.log.addHandler(logs)
    result = sensor(context)
    assert isinstance(result, (SensorResult, SkipReason)), result
    if isinstance(result, SensorResult):
        assert not result.dynamic_partitions_requests
    after = partitions(instance)
    assert after[: len(before)] == before, "existing partitions keep their order"
    return Tick(result, logs, after[len(before) :])


def partitions(instance) -> list[str]:
    return list(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME))


def test_first_tick_adds_every_object_and_requests_one_run_each(instance, project):
    objects = load_objects(project.configs).by_key()
    first = tick(instance, project)

    assert sorted(first.added_partitions) == project.keys == sorted(objects)
    assert len(first.added_partitions) == len(set(first.added_partitions))
    assert sorted(partitions(instance)) == project.keys
    # Added grouped by cluster, so packed ranges tend to stay on one cluster.
    clusters_in_order = [objects[key].cluster for key in partitions(instance)]
    assert clusters_in_order == sorted(clusters_in_order)

    requests = first.run_requests
    assert sorted(r.partition_key for r in requests) == project.keys
    for request in requests:
        obj = objects[request.partition_key]
        assert request.run_key == f"{obj.key}:{obj.config_hash}"
        assert request.tags[CLUSTER_TAG] == obj.cluster
    assert {objects[k].cluster for k in objects} >= {"default", "heavy"}

    # The clusters are recorded for the run coordinator.
    assert recorded_clusters(instance, project.keys) == {k: o.cluster for k, o in objects.items()}


def test_second_tick_with_the_cursor_has_nothing_new(instance, project):
    first = tick(instance, project)
    second = tick(instance, project, cursor=first.cursor)
    assert second.skipped
    assert f"{len(project.keys)} object(s) up to date" in second.skip_message
    assert sorted(partitions(instance)) == project.keys


def test_reformatting_a_file_requests_nothing(instance, project):
    first = tick(instance, project)
    erp = project.configs / "erp.yaml"
    erp.write_text(
        yaml.safe_dump(yaml.safe_load(erp.read_text()), default_flow_style=True, width=60)
    )
    assert tick(instance, project, cursor=first.cursor).skipped


def test_changing_one_config_requests_exactly_one_run(instance, project):
    first = tick(instance, project)
    replace_once(
        project.configs / "erp.yaml",
        "path: erp/customers/*.csv\n    options:\n      header: true\n",
        "path: erp/customers/*.csv\n    options:\n      header: true\n      inferSchema: true\n",
    )
    changed = load_objects(project.configs).by_key()["erp-customers"]
    second = tick(instance, project, cursor=first.cursor)

    assert second.added_partitions == []
    assert [(r.partition_key, r.run_key) for r in second.run_requests] == [
        # Second generation of this object's config: a fresh run key.
        ("erp-customers", f"erp-customers:2:{changed.config_hash}")
    ]
    assert tick(instance, project, cursor=second.cursor).skipped


def test_reverting_a_config_requests_a_run_with_a_fresh_run_key(instance, project):
    erp = project.configs / "erp.yaml"
    original = erp.read_text()
    first = tick(instance, project)
    replace_once(
        erp, "table: erp_customers\n    mode: overwrite", "table: erp_customers\n    mode: append"
    )
    second = tick(instance, project, cursor=first.cursor)
    erp.write_text(original)
    third = tick(instance, project, cursor=second.cursor)

    # The sensor does ask for a run (the config differs from the last one run)...
    assert [r.partition_key for r in third.run_requests] == ["erp-customers"]
    # ...but Dagster drops requests whose run key this sensor already used.
    used = {r.run_key for r in first.run_requests + second.run_requests}
    assert third.run_requests[0].run_key not in used


def test_a_new_config_file_adds_its_partition_and_one_run(instance, project):
    first = tick(instance, project)
    (project.configs / "hr.yaml").write_text(NEW_OBJECT)
    second = tick(instance, project, cursor=first.cursor)

    assert second.added_partitions == ["hr-people"]
    assert sorted(partitions(instance)) == sorted(project.keys)
    assert "hr-people" in project.keys
    [request] = second.run_requests
    assert request.partition_key == "hr-people"
    assert request.tags[CLUSTER_TAG] == "heavy"
    assert recorded_clusters(instance, ["hr-people"]) == {"hr-people": "heavy"}


def test_an_invalid_file_does_not_hold_back_the_valid_ones(instance, project):
    valid_keys = project.keys
    (project.configs / "broken.yaml").write_text(NEW_OBJECT.replace("format: csv", "format: xml"))
    first = tick(instance, project)

    assert sorted(first.added_partitions) == valid_keys
    assert sorted(r.partition_key for r in first.run_requests) == valid_keys
    errors = first.logs.messages(logging.ERROR)
    assert any("broken.yaml" in m and "source.format" in m and "'xml'" in m for m in errors), errors

    # Next tick: nothing to run, and the skip reason still names the bad file.
    second = tick(instance, project, cursor=first.cursor)
    assert second.skipped
    assert "broken.yaml" in second.skip_message
    assert any("broken.yaml" in m for m in second.logs.messages(logging.ERROR))


def test_removing_a_config_runs_nothing_and_deletes_nothing(instance, project, spark):
    # erp-stores has been loaded into bronze.
    objects = load_objects(project.configs).by_key()
    writer = project.bronze_tables().writer(spark)
    ingest_object(
        spark, objects["erp-stores"], data_root=str(project.data), writer=writer, run_id="r1"
    )
    bronze_before = table_state(spark, project.table("erp_stores"))
    source_before = tree_snapshot(project.data)
    assert bronze_before

    first = tick(instance, project)
    erp = project.configs / "erp.yaml"
    document = yaml.safe_load(erp.read_text())
    erp.write_text(yaml.safe_dump([o for o in document if o["name"] != "stores"], sort_keys=False))
    second = tick(instance, project, cursor=first.cursor)

    assert second.skipped
    assert "erp-stores" in partitions(instance)
    # One summary line for the removed objects; their sensor state is pruned.
    warnings = second.logs.messages(logging.WARNING)
    assert [m for m in warnings if "removed" in m] == [
        "1 object(s) removed (no config any more): erp-stores; their sensor state is "
        "pruned, their partitions and bronze tables are kept"
    ], warnings
    assert "erp-stores" not in ObjectStateStore(instance).read(partitions(instance), 99)
    assert not tick(instance, project, cursor=second.cursor).logs.messages(logging.WARNING)
    assert table_state(spark, project.table("erp_stores")) == bronze_before
    assert tree_snapshot(project.data) == source_before


def test_record_and_read_back_clusters_through_the_instance(instance):
    record_clusters(instance, {"erp-orders": "heavy", "crm-contacts": "default"})
    assert recorded_clusters(instance, ["erp-orders", "crm-contacts", "never-seen"]) == {
        "erp-orders": "heavy",
        "crm-contacts": "default",
        "never-seen": "default",
    }
    record_clusters(instance, {"erp-orders": "light"})
    assert recorded_clusters(instance, ["erp-orders"]) == {"erp-orders": "light"}
    record_clusters(instance, {})  # no-op
    assert recorded_clusters(instance, []) == {}


def covered_keys(request, order: list[str]) -> list[str]:
    """The partitions a run request covers: one key, or a range of the partition order."""
    if request.partition_key:
        return [request.partition_key]
    start = order.index(request.tags[ASSET_PARTITION_RANGE_START_TAG])
    end = order.index(request.tags[ASSET_PARTITION_RANGE_END_TAG])
    return order[start : end + 1]


def test_packed_sensor_requests_contiguous_single_cluster_ranges(instance, project):
    objects = load_objects(project.configs).by_key()
    first = tick(instance, project, sensor=build_object_sensor(objects_per_run=4))
    order = partitions(instance)

    packs = [covered_keys(r, order) for r in first.run_requests]
    assert sorted(k for pack in packs for k in pack) == project.keys  # each object once
    for request, pack in zip(first.run_requests, packs, strict=True):
        assert 1 <= len(pack) <= 4
        assert {objects[k].cluster for k in pack} == {request.tags[CLUSTER_TAG]}
        # The run coordinator and the remote step read the keys from this tag.
        assert request.tags[OBJECTS_TAG].split(",") == pack
    # Full packs of 4 per cluster, then the remainder.
    per_cluster = Counter(obj.cluster for obj in objects.values())
    expected = [4] * sum(n // 4 for n in per_cluster.values()) + [
        n % 4 for n in per_cluster.values() if n % 4
    ]
    assert sorted(len(p) for p in packs) == sorted(expected)


def test_a_tick_creates_at_most_max_runs_and_the_rest_follow(instance, project):
    sensor = build_object_sensor(objects_per_run=2, max_runs_per_tick=3)
    first = tick(instance, project, sensor=sensor)
    # Every partition is there from the first tick: the backlog is visible at once.
    assert sorted(first.added_partitions) == project.keys
    order = partitions(instance)
    assert len(first.run_requests) == 3
    assert any("wait for a later tick" in m for m in first.logs.messages(logging.INFO))

    requested, cursor, ticks = [], first.cursor, [first]
    while not ticks[-1].skipped:
        requested += [k for r in ticks[-1].run_requests for k in covered_keys(r, order)]
        assert len(ticks[-1].run_requests) <= 3
        ticks.append(tick(instance, project, cursor=cursor, sensor=sensor))
        cursor = ticks[-1].cursor or cursor
        assert len(ticks) < 10
    # Each object requested exactly once over the ticks, and packs stayed packs.
    assert sorted(requested) == project.keys
    per_cluster = Counter(o.cluster for o in load_objects(project.configs).objects)
    assert sum(len(t.run_requests) for t in ticks) == sum(-(-n // 2) for n in per_cluster.values())
    assert ticks[-1].added_partitions == []


def test_changed_neighbours_are_packed_together(instance, project):
    sensor = build_object_sensor(objects_per_run=4)
    first = tick(instance, project, sensor=sensor)
    order = partitions(instance)
    erp = project.configs / "erp.yaml"
    document = yaml.safe_load(erp.read_text())
    by_key = {f"erp-{o['name']}": o for o in document}
    # Two objects next to each other in the partition order, and one apart.
    default_erp = [
        k for k in order if k in by_key and by_key[k].get("cluster", "default") == "default"
    ]
    i = order.index(default_erp[0])
    neighbours = [order[i], order[i + 1]]
    assert all(k in by_key for k in neighbours), order
    for key in neighbours:
        by_key[key]["source"]["options"]["inferSchema"] = True
    erp.write_text(yaml.safe_dump(document, sort_keys=False))

    second = tick(instance, project, cursor=first.cursor, sensor=sensor)
    assert [covered_keys(r, order) for r in second.run_requests] == [neighbours]
