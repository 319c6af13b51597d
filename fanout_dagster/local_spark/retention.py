"""What the long-lived Spark Connect server remembers of the work it has done.

Spark keeps the recent jobs, stages, tasks and SQL executions for its UI and
REST API, and Spark Connect keeps closed sessions and abandoned executions to
answer late requests clearly. Spark's defaults suit an application that ends:
the server lives as long as `make dev` and serves one session per run, and
with the defaults its heap after GC grew by ~150 MB over 500 runs (issue 18).
These caps keep the last few hundred of each, which the UI and the benchmark's
jobs-per-load count (the jobs REST API) still see; names and defaults checked
against pyspark 4.1.0's jars (core's UI config, SQLConf, connect's Connect.scala).
"""

from __future__ import annotations

BOUNDED_RETENTION: dict[str, str] = {
    # Spark UI / status store (defaults: 1000 jobs, 1000 stages, 100,000 tasks per stage).
    "spark.ui.retainedJobs": "500",
    "spark.ui.retainedStages": "500",
    "spark.ui.retainedTasks": "1000",
    "spark.ui.retainedDeadExecutors": "10",  # default 100
    # DAG visualisation nodes of the retained stages (default: unbounded).
    "spark.ui.dagGraph.retainedRootRDDs": "500",
    # SQL tab: executions with their plans, the largest entries (default 1000).
    "spark.sql.ui.retainedExecutions": "200",
    # Connect tab: client sessions and statements (defaults 200 each).
    "spark.sql.connect.ui.retainedSessions": "50",
    "spark.sql.connect.ui.retainedStatements": "100",
    # Closed sessions remembered so a late request gets SESSION_CLOSED (default 1000),
    # and executions abandoned by their client (default 10,000).
    "spark.connect.session.manager.closedSessionsTombstonesSize": "100",
    "spark.connect.execute.manager.abandonedTombstonesSize": "100",
}
