"""Bad input as users produce it: every kind of broken config and broken source
gets a clear error naming its file or object, the other objects keep working,
and nothing already ingested is lost or changed.

Config errors are shown where users see them: the object sensor's tick.
Source errors are shown where users see them: the failed object's partition
and its run, while the rest of the same pack loads."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster_tests.helpers import table_state
from fanout_dagster_tests.orchestration.test_sensor import tick

BRONZE = AssetKey("bronze")

GOOD = """
code: hr
name: people
source: {format: csv, path: erp/employees/*.csv, options: {header: true}}
target: {table: hr_people}
"""

# GOOD as an item of a defaults file's `objects`.
GOOD_ITEM = "".join(
    ("  - " if i == 0 else "    ") + line + "\n" for i, line in enumerate(GOOD.strip().splitlines())
)

# (file name, file content, what the error must say besides the file name)
BAD_CONFIGS = [
    ("malformed.yaml", "- code: hr\n  name: [unclosed\n", ["malformed YAML", "line"]),
    ("scalar.yaml", "just a string\n", ["expected an object"]),
    ("empty.yaml", "", ["file is empty"]),
    (
        "missing_field.yaml",
        GOOD.replace("target: {table: hr_people}\n", ""),
        ["target", "missing required field"],
    ),
    ("unknown_field.yaml", GOOD + "owner: me\n", ["owner", "unknown field"]),
    ("wrong_type.yaml", GOOD.replace("name: people", "name: 42"), ["name", "must be a string"]),
    (
        "wrong_options.yaml",
        GOOD.replace("{header: true}", "[header]"),
        ["source.options", "mapping"],
    ),
    (
        "comma_key.yaml",
        GOOD.replace("name: people", "name: 'a,b'"),
        ["name", "not a safe identifier"],
    ),
    (
        "space_key.yaml",
        GOOD.replace("name: people", "name: 'a b'"),
        ["name", "not a safe identifier"],
    ),
    ("upper_key.yaml", GOOD.replace("code: hr", "code: HR"), ["code", "not a safe identifier"]),
    ("long_key.yaml", GOOD.replace("name: people", "name: " + "p" * 41), ["name", "at most 40"]),
    (
        "sql_table.yaml",
        GOOD.replace("table: hr_people", "table: 'x; DROP TABLE y'"),
        ["target.table", "plain table name"],
    ),
    (
        "dotdot.yaml",
        GOOD.replace("erp/employees/*.csv", "../../etc/passwd"),
        ["source.path", "'..' is not allowed"],
    ),
    (
        "absolute.yaml",
        GOOD.replace("erp/employees/*.csv", "/etc/passwd"),
        ["source.path", "not absolute"],
    ),
    # Refresh and retries (the sensor acts on them: reported at the tick too).
    ("bad_cron.yaml", GOOD + "schedule: '0 6 * *'\n", ["schedule", "not a valid cron"]),
    ("cron_words.yaml", GOOD + "schedule: 'every day'\n", ["schedule", "not a valid cron"]),
    ("cron_range.yaml", GOOD + "schedule: '61 6 * * *'\n", ["schedule", "not a valid cron"]),
    ("retries_high.yaml", GOOD + "retries: 11\n", ["retries", "between 0 and 10, got 11"]),
    ("retries_negative.yaml", GOOD + "retries: -1\n", ["retries", "between 0 and 10"]),
    ("retries_text.yaml", GOOD + "retries: '2'\n", ["retries", "must be an integer"]),
    (
        "watch_table.yaml",
        "code: hr\nname: people\nsource: {table: main.hr.people, watch: true}\n"
        "target: {table: hr_people}\n",
        ["source.watch", "watch needs a file source"],
    ),
    (
        "watch_text.yaml",
        GOOD.replace("options: {header: true}", "options: {header: true}, watch: 'yes'"),
        ["source.watch", "must be true or false"],
    ),
    (
        "defaults_retries.yaml",
        "defaults: {retries: 12}\nobjects:\n" + GOOD_ITEM,
        ["defaults.retries", "between 0 and 10, got 12"],
    ),
    (
        "defaults_cron.yaml",
        "defaults: {schedule: '* * *'}\nobjects:\n" + GOOD_ITEM,
        ["defaults.schedule", "not a valid cron"],
    ),
]


@pytest.mark.parametrize("name,content,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_is_named_and_the_others_still_run(instance, project, name, content, expected):
    (project.configs / name).write_text(content)
    result = tick(instance, project)

    # Every valid sample object is still added and requested.
    assert sorted(result.added_partitions) == project.keys
    assert sorted(r.partition_key for r in result.run_requests) == project.keys
    errors = [m for m in result.logs.messages(logging.ERROR) if name in m]
    assert errors, result.logs.messages()
    assert all(part in errors[0] for part in expected), errors[0]


def test_a_duplicate_key_names_both_files_and_rejects_both(instance, project):
    (project.configs / "copy.yaml").write_text(
        GOOD.replace("code: hr", "code: erp").replace("name: people", "name: customers")
    )
    result = tick(instance, project)
    errors = result.logs.messages(logging.ERROR)
    clash = [m for m in errors if "duplicate partition key 'erp-customers'" in m]
    assert any(
        "copy.yaml: erp-customers" in m and "also declared in erp.yaml" in m for m in clash
    ), errors
    assert any(
        "erp.yaml: erp-customers" in m and "also declared in copy.yaml" in m for m in clash
    ), errors
    requested = {r.partition_key for r in result.run_requests}
    assert "erp-customers" not in requested
    assert requested == set(project.keys) - {"erp-customers"}


PACK = ["erp-customers", "erp-products", "erp-stores", "erp-suppliers", "hr-leak"]


def run_pack(project, spark_resource, instance, keys):
    return materialize(
        [build_bronze_asset(objects_per_run=len(keys), threads_per_run=2)],
        resources=project.resources(spark_resource),
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        raise_on_error=False,
    )


def table_of(project, key: str) -> str:
    return project.table(key.replace("-", "_"))


def test_bad_sources_fail_alone_and_keep_their_previous_loads(
    instance, project, spark, spark_resource, tmp_path
):
    # A symlink that leads outside the data root, declared by a valid-looking config.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secrets.csv").write_text("user,password\nroot,hunter2\n")
    os.symlink(outside, project.data / "leak")
    (project.configs / "leak.yaml").write_text(
        GOOD.replace("name: people", "name: leak")
        .replace("erp/employees/*.csv", "leak/*.csv")
        .replace("hr_people", "hr_leak")
    )
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, PACK[:-1])
    first = run_pack(project, spark_resource, instance, PACK[:-1])
    assert first.success
    before = {key: table_state(spark, table_of(project, key)) for key in PACK[:-1]}

    # Break three sources in three ways; erp-suppliers stays healthy.
    shutil.rmtree(project.data / "erp" / "customers")  # missing source
    products = project.data / "erp" / "products" / "products.csv"
    products.write_text(products.read_text().splitlines()[0] + "\n")  # empty: header only
    stores = project.data / "erp" / "stores" / "stores.csv"
    lines = stores.read_text().splitlines()
    stores.write_text(
        "\n".join([lines[0] + ",region"] + [line + ",north" for line in lines[1:]]) + "\n"
    )
    # ... which its config refuses (schema_evolution_mode: failOnNewColumns).
    erp = project.configs / "erp.yaml"
    document = yaml.safe_load(erp.read_text())
    for entry in document:
        if entry["name"] == "stores":
            entry["target"]["schema_evolution_mode"] = "failOnNewColumns"
    erp.write_text(yaml.safe_dump(document, sort_keys=False))
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["hr-leak"])

    second = run_pack(project, spark_resource, instance, PACK)
    assert not second.success
    failure = next(e for e in second.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    assert "4 of 5 object(s) failed (1 loaded)" in message

    errors = {
        record.asset_observation.partition: record.asset_observation.metadata["error"].value
        for record in instance.fetch_observations(BRONZE, limit=50).records
    }
    assert "no source files match 'erp/customers/*.csv'" in errors["erp-customers"]
    assert "has no rows" in errors["erp-products"]
    assert "new column(s) region" in errors["erp-stores"]
    assert "failOnNewColumns" in errors["erp-stores"]
    assert "leads outside the data root" in errors["hr-leak"]
    assert "erp-suppliers" not in errors
    for key in errors:
        assert key in message  # the step's failure names every failed object

    # The healthy object of the same pack loaded; nothing ingested before changed.
    latest: dict[str, str] = {}
    for record in instance.fetch_materializations(BRONZE, limit=50).records:  # newest first
        latest.setdefault(record.asset_materialization.partition, record.run_id)
    assert latest["erp-suppliers"] == second.run_id
    for key in ("erp-customers", "erp-products", "erp-stores"):
        assert table_state(spark, table_of(project, key)) == before[key]
    assert not spark.catalog.tableExists(project.table("hr_leak"))
