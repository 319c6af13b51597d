"""What a load says when the connection to Spark is lost: only what is known, from
the table's history, after the object's operations on the server were stopped
(issue 20). Real Spark Connect servers, one of them killed."""

from __future__ import annotations

import os
import signal
import time

import pytest
from pyspark.sql import SparkSession

from fanout_dagster.core.connect_sessions import quick_retries
from fanout_dagster.core.ingest import AUDIT_COLUMNS
from fanout_dagster.core.loading import load_pack, what_was_committed
from fanout_dagster.core.objects import load_objects
from fanout_dagster.core.tables import BronzeTableWriter, history, is_commit_of
from fanout_dagster.local_spark.catalog import register_table
from fanout_dagster.local_spark.connect_server import ServerConfig, port_in_use, running_server
from fanout_dagster_tests.helpers import free_port, keep_objects

KEY = "erp-stores"


def connect(server: ServerConfig) -> SparkSession:
    session = SparkSession.builder.remote(server.url).create()
    session.client.set_retry_policies([quick_retries()])
    return session


def test_what_was_committed_is_read_from_the_tables_history(spark, project):
    keep_objects(project, [KEY])
    obj = load_objects(project.configs).by_key()[KEY]
    writer = project.bronze_tables().writer(spark)
    table = project.table(obj.target.table)
    tag = f"fanout-object-{KEY}"

    # Before any load: no table, nothing committed.
    assert what_was_committed(spark, writer, obj, "run-1", tag).startswith(
        "nothing of this object was committed"
    )
    [report] = load_pack(
        spark, [obj], data_root=str(project.data), writer=writer, run_id="run-1", threads=1
    )
    assert report.ok and report.result is not None, report.error
    version = report.result.version
    assert what_was_committed(spark, writer, obj, "run-1", tag) == (
        f"its write had committed before: version {version} of {table} holds this load"
    )
    # Another run's load: the table has no commit of it.
    assert what_was_committed(spark, writer, obj, "run-2", tag).startswith(
        "nothing of this object was committed"
    )


@pytest.fixture
def doomed_server(tmp_path) -> ServerConfig:
    """A server of its own, to be killed."""
    return ServerConfig(
        port=free_port(),
        ui_port=free_port(),
        warehouse=str(tmp_path / "warehouse"),
        driver_memory="1g",
        state_dir=tmp_path / "server",
    )


@pytest.mark.slow
def test_a_connection_lost_after_the_write_committed_is_not_said_to_have_committed_nothing(
    doomed_server, project
):
    """The server dies after the object's write has committed, while the load
    reads the commit back from the table's history. Until issue 20 the object
    failed saying "nothing of this object was committed", for any lost
    connection; with the server gone nothing is known, and the failure says so
    and where to look."""
    keep_objects(project, [KEY])
    obj = load_objects(project.configs).by_key()[KEY]
    table = project.table(obj.target.table)
    with running_server(doomed_server) as server:
        spark = connect(doomed_server)
        # A writer that reads the commit back through Spark, as on Databricks (the
        # local one reads its commit from the Delta log, and would know it).
        writer = BronzeTableWriter(
            spark, project.schema, prepare_table=register_table, system_columns=AUDIT_COLUMNS
        )
        read_commit = writer._commit

        def kill_then_read_commit(*args, **kwargs):  # the write has returned: it committed
            os.killpg(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while port_in_use(doomed_server.host, doomed_server.port):
                assert time.monotonic() < deadline, "the server did not die"
                time.sleep(0.1)
            return read_commit(*args, **kwargs)

        writer._commit = kill_then_read_commit  # type: ignore[method-assign]
        [report] = load_pack(
            spark, [obj], data_root=str(project.data), writer=writer, run_id="run-1", threads=1
        )
    assert not report.ok
    error = report.error or ""
    assert error.startswith("SparkUnavailable: the Spark Connect server stopped"), error
    assert "nothing of this object was committed" not in error, error
    assert f"whether its write committed is not known: the history of {table}" in error, error
    # What to look for in the history (the tag also records the files, so not its whole text).
    assert f"dagster_run_id 'run-1' and partition_key '{KEY}'" in error, error

    # Restarted on the same warehouse: the write had committed indeed.
    with running_server(doomed_server):
        reader = connect(doomed_server)
        try:
            [entry] = history(reader, table)
            assert is_commit_of(str(entry["userMetadata"]), "run-1", KEY), entry["userMetadata"]
        finally:
            reader.stop()
