"""The local Spark Connect server stays bounded: what it remembers of past jobs,
SQL executions and Connect sessions is capped (local_spark/retention.py)."""

from __future__ import annotations

import json
import urllib.request

from fanout_dagster.local_spark.connect_server import ServerConfig


def server_spark_properties(server: ServerConfig) -> dict[str, str]:
    """The running server's Spark conf, as its UI's REST API reports it."""
    base = f"http://{server.host}:{server.ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=60) as response:
        [app] = json.load(response)
    with urllib.request.urlopen(f"{base}/{app['id']}/environment", timeout=60) as response:
        environment = json.load(response)
    return dict(environment["sparkProperties"])


def test_the_server_caps_ui_and_connect_retention(spark_server):
    properties = server_spark_properties(spark_server)
    # Spark's defaults: 1000 jobs/stages/SQL executions, 100,000 tasks per stage,
    # unbounded DAG nodes, 1000 closed sessions, 10,000 abandoned executions.
    caps = {
        "spark.ui.retainedJobs": 500,
        "spark.ui.retainedStages": 500,
        "spark.ui.retainedTasks": 1000,
        "spark.ui.retainedDeadExecutors": 10,
        "spark.ui.dagGraph.retainedRootRDDs": 500,
        "spark.sql.ui.retainedExecutions": 200,
        "spark.sql.connect.ui.retainedSessions": 50,
        "spark.sql.connect.ui.retainedStatements": 100,
        "spark.connect.session.manager.closedSessionsTombstonesSize": 100,
        "spark.connect.execute.manager.abandonedTombstonesSize": 100,
    }
    too_high = {
        key: properties.get(key, "Spark's default")
        for key, cap in caps.items()
        if not properties.get(key, "").isdigit() or int(properties[key]) > cap
    }
    assert not too_high, f"the server's retention is not capped: {too_high}"
