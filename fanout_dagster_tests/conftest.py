"""Shared fixtures: one local Spark Connect server per test process (the product's
default local Spark, and what Databricks serverless speaks), sample configs and
data copied to a temporary folder, the project's resources pointed at it, and
the Dagster instance's storage (SQLite, or a PostgreSQL database)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from dagster import instance_for_test
from pyspark.sql import SparkSession

from fanout_dagster.local_spark.connect_server import ServerConfig, running_server
from fanout_dagster.orchestration.resources.spark import LocalSparkResource, SparkConnectResource
from fanout_dagster_tests.helpers import (
    CONNECT_MODE_FLAG,
    SAMPLE_CONFIGS,
    SAMPLE_DATA,
    Project,
    free_port,
)
from fanout_dagster_tests.postgres import PostgresServer, postgres_for_tests, storage_overrides


@pytest.fixture(scope="session")
def spark_server(tmp_path_factory) -> Iterator[ServerConfig]:
    """The local Spark Connect server, started once per test process (JVM start-up
    is the slowest thing here) on free ports with a warehouse of its own."""
    state = tmp_path_factory.mktemp("spark-server")
    config = ServerConfig(
        port=free_port(),
        ui_port=free_port(),
        master="local[2]",
        warehouse=str(state / "warehouse"),
        driver_memory="2g",
        state_dir=state,
    )
    with running_server(config):
        yield config


@pytest.fixture(scope="session")
def spark_resource(spark_server) -> SparkConnectResource:
    return SparkConnectResource(port=spark_server.port)


@pytest.fixture(scope="session")
def spark(spark_server) -> Iterator[SparkSession]:
    """The test's own Connect session on the shared server (runs open theirs)."""
    session = SparkSession.builder.remote(spark_server.url).create()
    with kept_alive(session):
        yield session
    session.stop()


@contextmanager
def kept_alive(session: SparkSession, every_s: float = 60.0) -> Iterator[None]:
    """Touch the session every minute: the server closes a session left idle for
    15 minutes (spark_connect_server.py), and a parallel worker may run end-to-end
    tests that do not use it for longer than that (SESSION_CLOSED afterwards)."""
    stop = threading.Event()

    def touch() -> None:
        while not stop.wait(every_s):
            with suppress(Exception):  # a test may have stopped the server: its own check
                session.conf.get("spark.sql.session.timeZone")

    thread = threading.Thread(target=touch, name="spark-session-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.fixture(scope="session")
def classic_spark_resource(tmp_path_factory) -> LocalSparkResource:
    """The embedded (classic) mode, for the few checks that need the JVM's own
    APIs (Spark's status tracker) or the embedded mode itself."""
    return LocalSparkResource(
        master="local[2]", warehouse_dir=str(tmp_path_factory.mktemp("classic-warehouse"))
    )


@pytest.fixture(scope="session")
def classic_spark(classic_spark_resource) -> SparkSession:
    # pyspark marks the whole process "Connect mode" once a Connect session
    # exists (an environment variable that getOrCreate obeys); this process
    # has both kinds on purpose.
    os.environ.pop(CONNECT_MODE_FLAG, None)
    return classic_spark_resource.get_session()


_connect_mode_seen = False


@pytest.fixture(autouse=True)
def spark_functions_mode(request) -> Iterator[None]:
    """pyspark's `functions` build Connect or classic columns by that process-wide
    flag: each test gets the mode of the session it uses, whatever ran before it
    (a classic test after a Connect one, and the other way round)."""
    global _connect_mode_seen
    _connect_mode_seen = _connect_mode_seen or CONNECT_MODE_FLAG in os.environ
    if any(name.startswith("classic_spark") for name in request.fixturenames):
        os.environ.pop(CONNECT_MODE_FLAG, None)
    elif _connect_mode_seen:
        os.environ[CONNECT_MODE_FLAG] = "1"
    yield
    _connect_mode_seen = _connect_mode_seen or CONNECT_MODE_FLAG in os.environ


@pytest.fixture
def project(tmp_path, request) -> Project:
    """A throwaway copy of the sample configs and data, with bronze tables of its own."""
    configs = tmp_path / "configs"
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    shutil.copytree(SAMPLE_DATA, data)
    # Dagster processes the test starts for the project attach to the shared
    # server (started only when a test asks for a process environment).
    return Project(tmp_path, lambda: request.getfixturevalue("spark_server"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (fanout_dagster_tests/postgres.py), once per test process."""
    with postgres_for_tests() as server, server.with_dagster_template() as templated:
        yield templated


@pytest.fixture
def storage() -> str:
    """The Dagster storage a test runs on: SQLite (the embedded default) unless its
    module overrides this fixture with `params=STORAGES` to run on PostgreSQL too."""
    return "sqlite"


@pytest.fixture
def dagster_storage(storage, request) -> Iterator[dict | None]:
    """The `storage:` section of the test's dagster.yaml: None for SQLite under
    DAGSTER_HOME, a new database of the test PostgreSQL server for postgres."""
    if storage == "sqlite":
        yield None
        return
    assert storage == "postgres", storage
    with request.getfixturevalue("postgres_server").database() as database:
        yield database.storage_config()


@pytest.fixture
def instance(dagster_storage):
    """A real, persistent Dagster instance (a temporary folder; PostgreSQL storage
    in the postgres variant)."""
    with instance_for_test(overrides=storage_overrides(dagster_storage)) as dagster_instance:
        yield dagster_instance
