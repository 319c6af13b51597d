"""The bronze asset in-process (real Spark, real Dagster instance), and the run
coordinator's placement tags on real runs of that instance."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, Definitions, instance_for_test, materialize
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from fanout_dagster.core.ingest import AUDIT_COLUMNS
from fanout_dagster.core.objects import load_objects
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.placement import record_clusters
from fanout_dagster.orchestration.tags import CLUSTER_TAG, OBJECTS_TAG
from fanout_dagster.single_host.pack_split import cluster_segments, segment_tags
from fanout_dagster.single_host.run_coordinator import (
    BRONZE_KEY,
    ClusterTaggingRunCoordinator,
    run_partition_keys,
)
from fanout_dagster_tests.helpers import (
    REPO_ROOT,
    SAMPLE_DATA,
    expected_source_files,
    spark_source_count,
)

BRONZE = AssetKey("bronze")


def run(project, spark_resource, instance, *, objects_per_run=1, partition_key=None, tags=None):
    return materialize(
        [build_bronze_asset(objects_per_run=objects_per_run, threads_per_run=2)],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


def range_tags(start, end):
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def materializations(result) -> dict[str, list]:
    by_partition: dict[str, list] = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            assert mat.asset_key == BRONZE
            by_partition.setdefault(mat.partition, []).append(mat)
    return by_partition


def step_failure_message(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    return failure.step_failure_data.error.message


def bronze_count(spark, project, table) -> int:
    return spark.table(project.table(table)).count()


def check_materialization(spark, project, mat, obj):
    metadata = mat.metadata
    name = project.table(obj.target.table)
    rows = metadata["dagster/row_count"].value
    assert rows == bronze_count(spark, project, obj.target.table)
    assert rows == spark_source_count(spark, obj, expected_source_files(project.data, obj))
    columns = [c.name for c in metadata["dagster/column_schema"].schema.columns]
    assert columns[-len(AUDIT_COLUMNS) :] == list(AUDIT_COLUMNS)
    assert columns == spark.table(name).columns
    # The full table name, and the Delta version and metrics of the commit it made.
    assert metadata["dagster/table_name"].value == name
    history = spark.sql(f"DESCRIBE HISTORY {name}").collect()
    commit = next(h for h in history if h.version == metadata["delta_version"].value)
    assert json.loads(commit.userMetadata)["partition_key"] == obj.key
    assert metadata["delta_operation"].value == commit.operation
    assert metadata["rows_written"].value == int(commit.operationMetrics["numOutputRows"]) - int(
        commit.operationMetrics.get("numCopiedRows", 0)
    )
    assert metadata["data_files_written"].value == int(commit.operationMetrics["numFiles"])
    assert metadata["duration_s"].value >= 0
    assert metadata["config_hash"].value == obj.config_hash
    assert metadata["cluster"].value == obj.cluster


# --------------------------------------------------------------------------- runs


def test_one_object_materializes_with_its_metadata(spark, spark_resource, project, instance):
    objects = load_objects(project.configs).by_key()
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-stores", "erp-suppliers"])
    result = run(project, spark_resource, instance, partition_key="erp-stores")

    assert result.success
    mats = materializations(result)
    assert list(mats) == ["erp-stores"] and len(mats["erp-stores"]) == 1
    check_materialization(spark, project, mats["erp-stores"][0], objects["erp-stores"])
    assert instance.get_materialized_partitions(BRONZE) == {"erp-stores"}
    # The stored event is the one the run reported.
    [record] = instance.fetch_materializations(BRONZE, limit=10).records
    assert record.partition_key == "erp-stores"
    assert record.asset_materialization.metadata["dagster/row_count"].value == bronze_count(
        spark, project, "erp_stores"
    )


def test_a_pack_materializes_each_object_on_its_own(spark, spark_resource, project, instance):
    objects = load_objects(project.configs).by_key()
    # Partition order is the order keys were added, not alphabetical.
    added = ["erp-suppliers", "crm-campaigns", "finance-fx_rates", "erp-stores", "erp-products"]
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, added)
    result = run(
        project,
        spark_resource,
        instance,
        objects_per_run=3,
        tags=range_tags("crm-campaigns", "erp-stores"),
    )

    assert result.success
    pack = ["crm-campaigns", "finance-fx_rates", "erp-stores"]
    mats = materializations(result)
    assert sorted(mats) == sorted(pack)
    for key in pack:
        assert len(mats[key]) == 1
        check_materialization(spark, project, mats[key][0], objects[key])
    assert instance.get_materialized_partitions(BRONZE) == set(pack)
    assert not spark.catalog.tableExists(project.table("erp_suppliers"))


def test_a_broken_object_fails_the_pack_alone_and_heals_on_rerun(
    spark, spark_resource, project, instance
):
    objects = load_objects(project.configs).by_key()
    keys = ["erp-stores", "erp-suppliers", "crm-campaigns"]
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
    shutil.rmtree(project.data / "erp" / "suppliers")

    failed = run(
        project, spark_resource, instance, objects_per_run=3, tags=range_tags(keys[0], keys[-1])
    )
    assert not failed.success
    assert instance.get_materialized_partitions(BRONZE) == {"erp-stores", "crm-campaigns"}
    for key in ("erp-stores", "crm-campaigns"):
        check_materialization(spark, project, materializations(failed)[key][0], objects[key])

    # The broken object's error sits on its own partition...
    observations = instance.fetch_observations(BRONZE, limit=10).records
    assert [o.partition_key for o in observations] == ["erp-suppliers"]
    metadata = observations[0].asset_observation.metadata
    assert metadata["status"].value == "failed"
    assert (
        "SourceError" in metadata["error"].value
        and "erp/suppliers/*.csv" in metadata["error"].value
    )
    assert "Traceback" in metadata["traceback"].value
    # ...and the step's failure names it.
    message = step_failure_message(failed)
    assert "1 of 3 object(s) failed (2 loaded)" in message
    assert "erp-suppliers: SourceError" in message

    # Fixed, then re-run alone: everything is materialized.
    shutil.copytree(SAMPLE_DATA / "erp" / "suppliers", project.data / "erp" / "suppliers")
    healed = run(project, spark_resource, instance, partition_key="erp-suppliers")
    assert healed.success
    check_materialization(
        spark, project, materializations(healed)["erp-suppliers"][0], objects["erp-suppliers"]
    )
    assert instance.get_materialized_partitions(BRONZE) == set(keys)


def test_a_key_without_config_fails_saying_so(spark_resource, project, instance):
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-ghost"])
    result = run(project, spark_resource, instance, partition_key="erp-ghost")
    assert not result.success
    assert materializations(result) == {}
    message = step_failure_message(result)
    assert "erp-ghost: no valid config for this object" in message
    [observation] = instance.fetch_observations(BRONZE, limit=10).records
    assert observation.partition_key == "erp-ghost"
    assert "no valid config" in observation.asset_observation.metadata["error"].value


def test_the_objects_tag_overrides_the_run_partitions(spark, spark_resource, project, instance):
    """The Databricks path: keys come from the run tag and are registered on the
    (remote, empty) instance before Dagster is asked about them."""
    objects = load_objects(project.configs).by_key()
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-stores"])
    result = run(
        project,
        spark_resource,
        instance,
        partition_key="erp-stores",
        tags={OBJECTS_TAG: "crm-campaigns,finance-fx_rates"},
    )
    assert result.success
    mats = materializations(result)
    assert sorted(mats) == ["crm-campaigns", "finance-fx_rates"]
    for key, [mat] in mats.items():
        check_materialization(spark, project, mat, objects[key])
    assert instance.get_materialized_partitions(BRONZE) == {"crm-campaigns", "finance-fx_rates"}
    assert not spark.catalog.tableExists(project.table("erp_stores"))
    assert set(instance.get_dynamic_partitions(OBJECTS_PARTITIONS_NAME)) == {
        "erp-stores",
        "crm-campaigns",
        "finance-fx_rates",
    }


# --------------------------------------------------------------------------- run coordinator


@pytest.fixture
def bronze_job(project, spark_resource):
    return Definitions(
        assets=[build_bronze_asset()], resources=project.resources(spark_resource)
    ).resolve_implicit_global_asset_job_def()


@pytest.fixture
def coordinator(instance):
    coordinator = ClusterTaggingRunCoordinator()
    coordinator.register_instance(instance)
    return coordinator


def without_workspace(run: DagsterRun) -> SubmitRunContext:
    """A submission with no workspace: the coordinator reads it only to create the sibling
    runs of a pack that straddles clusters, which runs submitted this way never do."""
    return SubmitRunContext(run, workspace=None)  # type: ignore[arg-type]  # see the docstring


def make_run(instance, job, tags, asset_selection=frozenset({BRONZE_KEY})):
    # A remote origin, as runs created from the UI or the daemon have (queued runs need one).
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                LoadableTargetOrigin(module_name="fanout_dagster.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name=job.name,
    )
    return instance.create_run_for_job(
        job, tags=tags, asset_selection=asset_selection, remote_job_origin=origin
    )


ADDED = ["erp-orders", "crm-contacts", "erp-customers", "crm-web_events", "erp-inventory"]


@pytest.fixture
def placed(instance):
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ADDED)
    record_clusters(
        instance,
        {
            "erp-orders": "default",
            "crm-contacts": "default",
            "crm-web_events": "heavy",
            "erp-inventory": "heavy",
        },
    )
    return instance


def test_run_partition_keys(placed, bronze_job):
    single = make_run(placed, bronze_job, {PARTITION_NAME_TAG: "erp-customers"})
    assert run_partition_keys(placed, single) == ["erp-customers"]
    ranged = make_run(placed, bronze_job, range_tags("crm-contacts", "crm-web_events"))
    # Partition (insertion) order, not alphabetical order.
    assert run_partition_keys(placed, ranged) == ["crm-contacts", "erp-customers", "crm-web_events"]
    assert run_partition_keys(placed, make_run(placed, bronze_job, {})) == []
    # A range end deleted from the UI after the run was created: no keys, no crash.
    placed.delete_dynamic_partition(OBJECTS_PARTITIONS_NAME, "crm-web_events")
    assert run_partition_keys(placed, ranged) == []


def test_placement_tags_for_a_single_partition(placed, bronze_job, coordinator):
    run_ = make_run(placed, bronze_job, {PARTITION_NAME_TAG: "crm-web_events"})
    assert coordinator.placement_tags(run_) == {OBJECTS_TAG: "crm-web_events", CLUSTER_TAG: "heavy"}
    # An object the sensor never placed runs on the default cluster.
    unplaced = make_run(placed, bronze_job, {PARTITION_NAME_TAG: "erp-customers"})
    assert coordinator.placement_tags(unplaced) == {
        OBJECTS_TAG: "erp-customers",
        CLUSTER_TAG: "default",
    }


def test_placement_tags_for_a_range_in_partition_order(placed, bronze_job, coordinator):
    one_cluster = make_run(placed, bronze_job, range_tags("crm-web_events", "erp-inventory"))
    assert coordinator.placement_tags(one_cluster) == {
        OBJECTS_TAG: "crm-web_events,erp-inventory",
        CLUSTER_TAG: "heavy",
    }
    # A pack straddling clusters keeps its first cluster's segment (partition
    # order); the rest go to sibling runs (pack_split.py, e2e/test_pack_split.py).
    mixed = make_run(placed, bronze_job, range_tags("erp-orders", "erp-inventory"))
    assert coordinator.placement_tags(mixed) == {
        **range_tags("erp-orders", "erp-customers"),
        OBJECTS_TAG: "erp-orders,crm-contacts,erp-customers",
        CLUSTER_TAG: "default",
    }
    heavy_majority = make_run(placed, bronze_job, range_tags("erp-customers", "erp-inventory"))
    assert coordinator.placement_tags(heavy_majority) == {
        **range_tags("erp-customers", "erp-customers"),
        OBJECTS_TAG: "erp-customers",
        CLUSTER_TAG: "default",
    }


def test_a_straddling_pack_is_cut_into_segments_of_one_cluster():
    clusters = {"a1": "a", "a2": "a", "b1": "b", "a3": "a", "b2": "b", "b3": "b"}
    assert cluster_segments(["a1", "a2", "b1", "a3", "b2", "b3"], clusters) == [
        ("a", ["a1", "a2"]),
        ("b", ["b1"]),
        ("a", ["a3"]),
        ("b", ["b2", "b3"]),
    ]
    assert cluster_segments(["a1", "a2"], clusters) == [("a", ["a1", "a2"])]
    assert segment_tags(("b", ["b2", "b3"])) == {
        **range_tags("b2", "b3"),
        OBJECTS_TAG: "b2,b3",
        CLUSTER_TAG: "b",
    }


def test_placement_tags_keep_what_the_run_already_says(placed, bronze_job, coordinator):
    sensor_run = make_run(
        placed,
        bronze_job,
        {
            PARTITION_NAME_TAG: "crm-web_events",
            CLUSTER_TAG: "special",
            OBJECTS_TAG: "crm-web_events",
        },
    )
    assert coordinator.placement_tags(sensor_run) == {}
    other_asset = make_run(
        placed, bronze_job, {PARTITION_NAME_TAG: "erp-orders"}, asset_selection=None
    )
    assert coordinator.placement_tags(other_asset) == {}


def test_submit_run_queues_the_run_with_its_placement_tags(placed, bronze_job, coordinator):
    run_ = make_run(placed, bronze_job, range_tags("crm-web_events", "erp-inventory"))
    submitted = coordinator.submit_run(without_workspace(run_))
    stored = placed.get_run_by_id(run_.run_id)
    assert stored is not None
    assert stored.status == DagsterRunStatus.QUEUED == submitted.status
    assert stored.tags[CLUSTER_TAG] == "heavy"
    assert stored.tags[OBJECTS_TAG] == "crm-web_events,erp-inventory"


def test_dagster_yaml_installs_the_coordinator_with_its_cluster_limits(project, spark_resource):
    """The run queue configured as in the repo's dagster.yaml."""
    settings = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    overrides = {
        key: settings[key] for key in ("run_coordinator", "concurrency") if key in settings
    }
    with instance_for_test(overrides=overrides) as configured:
        coordinator = configured.run_coordinator
        assert isinstance(coordinator, ClusterTaggingRunCoordinator)
        queue = configured.get_concurrency_config().run_queue_config
        assert queue is not None
        limits = {
            (limit["key"], limit.get("value")): limit["limit"]
            for limit in queue.tag_concurrency_limits
        }
        assert limits[(CLUSTER_TAG, "heavy")] == 1 and limits[(CLUSTER_TAG, "default")] == 2

        configured.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["crm-web_events"])
        record_clusters(configured, {"crm-web_events": "heavy"})
        job = Definitions(
            assets=[build_bronze_asset()], resources=project.resources(spark_resource)
        ).resolve_implicit_global_asset_job_def()
        run_ = make_run(configured, job, {PARTITION_NAME_TAG: "crm-web_events"})
        coordinator.submit_run(without_workspace(run_))
        stored = configured.get_run_by_id(run_.run_id)
        assert stored is not None and stored.tags[CLUSTER_TAG] == "heavy"
