"""What the emulator remembers about a run and its tasks (no behaviour here)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clusters import Cluster
from .process import TaskProcess

# Task types of the Jobs API; only spark_python_task is executed.
TASK_TYPES = (
    "spark_python_task",
    "notebook_task",
    "spark_jar_task",
    "spark_submit_task",
    "python_wheel_task",
    "pipeline_task",
    "sql_task",
    "dbt_task",
    "run_job_task",
    "condition_task",
    "for_each_task",
)
# The top-level fields that describe the task in the legacy single-task submit form.
LEGACY_TASK_FIELDS = ("existing_cluster_id", "new_cluster", "libraries")
TERMINAL_STATES = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TaskRun:
    task_key: str
    run_id: int  # every task of a run has its own run id, as on Databricks
    spec: dict[str, Any]  # the submitted task, echoed back by runs/get
    depends_on: list[str]
    dir: Path  # <root>/runs/<run_id>/<task_key>: logs, Spark conf, cwd
    cluster: Cluster
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = ""
    start_time: int = 0
    running_since: int | None = None
    end_time: int = 0
    error: str | None = None
    error_trace: str | None = None
    pid: int | None = None

    @property
    def stdout_path(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "stderr.log"


@dataclass
class Run:
    run_id: int
    job_id: int
    run_name: str
    idempotency_token: str | None
    tasks: list[TaskRun]
    legacy: bool  # submitted in the single-task (API 2.0) form
    timeout_seconds: int
    start_time: int = field(default_factory=now_ms)
    end_time: int = 0
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    user_cancelled_or_timedout: bool = False
    timed_out: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    process: TaskProcess | None = None  # the task process running right now, if any
    thread: threading.Thread | None = None
    timeout_timer: threading.Timer | None = None
    state_history: list[str] = field(default_factory=list)
    environments: list[dict[str, Any]] = field(default_factory=list)  # serverless environments

    def task(self, key: str) -> TaskRun:
        return next(t for t in self.tasks if t.task_key == key)


@dataclass
class RunSettings:
    spark_master: str = "local[2]"
    eager_spark: bool = False
    cancel_grace_seconds: float = 5.0
    extra_spark_conf: dict[str, str] = field(default_factory=dict)
    # C1-only JIT + serial GC: the driver JVM starts ~40% faster, which dominates small tasks.
    # Not applied when the cluster spec sets its own spark.driver.extraJavaOptions.
    jvm_quick_start: bool = True
    # Concurrently active task runs per workspace before runs/submit answers 429.
    max_active_task_runs: int = 1000
    serverless: bool = True  # the workspace has serverless compute for jobs
