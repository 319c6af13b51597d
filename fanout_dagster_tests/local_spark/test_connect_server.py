"""The local Spark Connect server: runs isolated from each other and sharing the
cores, clear one-line errors when it is down or its port is taken, job tags per
object, a server that dies in the middle of a pack, and a server that only
clients with its token can use. (Its lifecycle under `make dev`:
test_connect_server_lifecycle.py.)"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from dagster import AssetKey, DagsterEventType, materialize
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fanout_dagster.core.objects import load_objects
from fanout_dagster.local_spark.connect_server import (
    ServerConfig,
    SparkServerError,
    connect_url,
    main,
    new_token,
    running_server,
    token_file,
)
from fanout_dagster.orchestration.bronze import build_bronze_asset
from fanout_dagster.orchestration.partitions import OBJECTS_PARTITIONS_NAME
from fanout_dagster.orchestration.resources.spark import SparkConnectResource
from fanout_dagster.orchestration.tags import OBJECTS_TAG
from fanout_dagster_tests.helpers import (
    child_env,
    expected_source_files,
    free_port,
    keep_objects,
    spark_source_count,
    table_state,
)

BRONZE = AssetKey("bronze")


def session(server: ServerConfig) -> SparkSession:
    return SparkSession.builder.remote(server.url).create()


def test_each_run_has_a_session_of_its_own(spark_server):
    """Temp views and confs set by one run never leak into another's session."""
    a, b = session(spark_server), session(spark_server)
    try:
        a.range(3).createOrReplaceTempView("mine")
        a.conf.set("spark.sql.shuffle.partitions", "7")
        row = a.sql("SELECT count(*) AS n FROM mine").first()
        assert row is not None and row.n == 3
        assert not b.catalog.tableExists("mine")
        assert b.conf.get("spark.sql.shuffle.partitions") != "7"
    finally:
        a.stop()
        b.stop()


def test_concurrent_runs_share_the_cores(spark_server):
    """FAIR scheduling: a short job of one run finishes while a long job of another
    run is still going, instead of queueing behind all of its tasks."""
    long_run, short_run = session(spark_server), session(spark_server)

    def slowly(v):  # no type hints: pyspark would try to infer a pandas UDF from them
        time.sleep(0.5)
        return v

    slow = F.udf(slowly, "long")
    finished: dict[str, float] = {}

    def long_job() -> None:
        # 40 tasks of ~1 s each on 2 cores: ~20 s under FIFO before anything else runs.
        long_run.range(0, 80, numPartitions=40).select(slow("id")).collect()
        finished["long"] = time.monotonic()

    thread = threading.Thread(target=long_job)
    thread.start()
    try:
        time.sleep(3)  # the long job holds both cores by now
        started = time.monotonic()
        assert short_run.range(10, numPartitions=2).count() == 10
        finished["short"] = time.monotonic()
    finally:
        thread.join(120)
        long_run.stop()
        short_run.stop()
    assert finished["short"] < finished["long"]
    assert finished["short"] - started < 12, finished["short"] - started


def test_a_server_that_is_not_running_is_one_clear_line():
    resource = SparkConnectResource(port=free_port())
    with pytest.raises(SparkServerError) as excinfo:
        resource.get_session()
    message = str(excinfo.value)
    assert "not running" in message and "make dev" in message and "\n" not in message


def test_a_taken_port_is_one_clear_line(spark_server, tmp_path, capsys, monkeypatch):
    config = ServerConfig(port=spark_server.port, ui_port=free_port(), state_dir=tmp_path)
    with (
        pytest.raises(SparkServerError, match=f"port {spark_server.port} .* already taken"),
        running_server(config),
    ):
        pass
    # The command line says it in one line, without a stack trace.
    monkeypatch.setenv("FANOUT_SPARK_CONNECT_PORT", str(spark_server.port))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: port") and err.count("\n") == 1 and "Traceback" not in err


def test_each_objects_spark_jobs_carry_its_partition_key(
    spark_server, spark_resource, project, instance
):
    keep_objects(project, ["erp-stores"])
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, ["erp-stores"])
    result = materialize(
        [build_bronze_asset()],
        resources=project.resources(spark_resource),
        instance=instance,
        partition_key="erp-stores",
    )
    assert result.success
    api = f"http://{spark_server.host}:{spark_server.ui_port}/api/v1/applications"
    [app] = json.load(urllib.request.urlopen(api, timeout=60))
    jobs = json.load(urllib.request.urlopen(f"{api}/{app['id']}/jobs", timeout=60))
    # The server is shared: other tests' runs loaded this object too. Every job
    # of this run carries the object's key.
    of_this_run = [j for j in jobs if any(result.run_id in tag for tag in j.get("jobTags", []))]
    assert of_this_run, [j.get("jobTags") for j in jobs[:5]]
    assert all(any("fanout-object-erp-stores" in tag for tag in j["jobTags"]) for j in of_this_run)


# --------------------------------------------------------------------------- its token


def server_jvm(server: ServerConfig) -> int:
    [pid] = [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit()
        and f"spark.connect.grpc.binding.port={server.port}\0".encode() in _cmdline(entry)
    ]
    return pid


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def collect_sessions() -> None:
    """Finalize dropped Connect sessions here, in the main thread: pyspark 4.1.0's
    SparkSession.__del__, run by the garbage collector on one of pyspark's own release
    threads, shuts that thread pool down from inside and deadlocks (SPARK-55362)."""
    gc.collect()


def test_a_client_without_the_servers_token_is_refused(spark_server, spark):
    """Any local user reaches 127.0.0.1: without the server's token, or with another,
    a client gets no session, let alone a Python UDF running as the server's user."""
    for url in (
        f"sc://127.0.0.1:{spark_server.port}",
        connect_url(spark_server.host, spark_server.port, new_token()),
    ):
        intruder = SparkSession.builder.remote(url).create()
        try:
            with pytest.raises(SparkConnectGrpcException) as refused:
                intruder.range(1).collect()
            assert refused.value.getGrpcStatusCode() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            with contextlib.suppress(Exception):
                intruder.stop()
            collect_sessions()
    # The server's own token opens one (as every run's does: the other tests).
    assert spark.range(3).count() == 3


def test_a_run_without_the_servers_token_is_one_clear_line(spark_server, monkeypatch, tmp_path):
    monkeypatch.delenv("FANOUT_SPARK_CONNECT_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # another user's: no token file of the server
    resource = SparkConnectResource(port=spark_server.port)
    with pytest.raises(SparkServerError, match="no token for the local Spark Connect server"):
        resource.get_session()

    monkeypatch.setenv("FANOUT_SPARK_CONNECT_TOKEN", new_token())  # an earlier start's
    with pytest.raises(SparkServerError, match="refused this client's token") as refused:
        resource.get_session()
    assert "\n" not in str(refused.value)

    monkeypatch.setenv("FANOUT_SPARK_CONNECT_TOKEN", "change-me")
    with pytest.raises(SparkServerError, match="not a usable token") as unusable:
        resource.get_session()
    assert "change-me" not in str(unusable.value)

    monkeypatch.setenv("FANOUT_SPARK_CONNECT_TOKEN", spark_server.token)
    try:
        assert resource.get_session().range(3).count() == 3
    finally:
        resource.teardown_after_execution(None)  # type: ignore[arg-type]
        collect_sessions()


def test_the_token_is_kept_from_other_local_users(spark_server):
    """What every local user can read (process command lines, the Spark UI, the log)
    never holds the token; the file that does is the server user's alone. The
    driver's own RPC and block manager ports require Spark's secret too."""
    token = spark_server.token
    assert token.encode() not in _cmdline(str(server_jvm(spark_server)))
    api = f"http://{spark_server.host}:{spark_server.ui_port}/api/v1/applications"
    [app] = json.load(urllib.request.urlopen(api, timeout=60))
    environment = urllib.request.urlopen(f"{api}/{app['id']}/environment", timeout=60).read()
    assert token.encode() not in environment
    assert ["spark.authenticate", "true"] in json.loads(environment)["sparkProperties"]
    assert token not in spark_server.log_path.read_text(errors="replace")
    path = token_file(spark_server.port)
    assert path.read_text() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0


def test_the_spark_shell_opens_a_session_with_the_token(spark_server):
    """`make spark-shell`: a Python prompt with `spark` on the running server."""
    shell = subprocess.run(
        [sys.executable, "-m", "fanout_dagster.local_spark.connect_server", "--shell"],
        input='print("ROWS", spark.range(5).count())\n',
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(FANOUT_SPARK_CONNECT_PORT=str(spark_server.port)),
    )
    assert "ROWS 5" in shell.stdout, shell.stdout + shell.stderr
    assert spark_server.token not in shell.stdout + shell.stderr


# --------------------------------------------------------------------------- the server dies


@pytest.fixture
def doomed_server(tmp_path):
    """A server of its own, to be killed."""
    config = ServerConfig(
        port=free_port(),
        ui_port=free_port(),
        warehouse=str(tmp_path / "warehouse"),
        driver_memory="1g",
        state_dir=tmp_path / "server",
    )
    return config


@pytest.mark.slow
def test_a_server_that_dies_mid_pack_fails_the_rest_and_the_next_run_succeeds(
    doomed_server, project, instance
):
    keys = ["erp-stores", "erp-suppliers", "erp-products", "crm-campaigns", "finance-fx_rates"]
    keep_objects(project, keys)
    instance.add_dynamic_partitions(OBJECTS_PARTITIONS_NAME, keys)
    resources = project.resources(SparkConnectResource(port=doomed_server.port))
    bronze = build_bronze_asset(objects_per_run=len(keys), threads_per_run=1)

    def run_pack():
        return materialize(
            [bronze],
            resources=resources,
            instance=instance,
            partition_key=keys[0],
            tags={OBJECTS_TAG: ",".join(keys)},
            raise_on_error=False,
        )

    with running_server(doomed_server) as server:
        results: list = []
        runner = threading.Thread(target=lambda: results.append(run_pack()))
        runner.start()
        # Kill the server's JVM once the first object has materialized.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not instance.get_materialized_partitions(BRONZE):
            time.sleep(0.2)
        loaded_before_kill = instance.get_materialized_partitions(BRONZE)
        assert loaded_before_kill, "no object loaded before the deadline"
        os.killpg(server.pid, signal.SIGKILL)
        runner.join(240)
    [failed] = results
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    loaded = instance.get_materialized_partitions(BRONZE)
    not_loaded = [k for k in keys if k not in loaded]
    assert not_loaded, "the pack finished before the server was killed"
    for key in not_loaded:
        assert f"{key}: " in message
    assert "Spark Connect server" in message and "stopped or cannot be reached" in message

    # Restarted on the same warehouse: the next run succeeds, loaded tables intact.
    with running_server(doomed_server):
        reader = session(doomed_server)
        try:
            objects = load_objects(project.configs).by_key()
            for key in keys:
                state = table_state(reader, project.table(objects[key].target.table))
                if key in loaded:
                    assert state is not None
                if state is not None:  # never a partial commit: all of its source, once
                    files = expected_source_files(project.data, objects[key])
                    assert len(state[1]) == spark_source_count(reader, objects[key], files), key
            healed = run_pack()
            assert healed.success
            assert instance.get_materialized_partitions(BRONZE) == set(keys)
        finally:
            reader.stop()
