"""The JSON the Jobs API answers for runs (shapes of ``jobs.Run`` / ``jobs.RunTask`` in the SDK).

Quirks kept on purpose: ``result_state`` is absent until a run ends; ``end_time`` is 0 while it
runs; ``cluster_instance.spark_context_id`` is a string (clusters/get has it as a number);
multi-task runs report 0 for setup/execution durations and the total in ``run_duration``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .model import LEGACY_TASK_FIELDS, TERMINAL_STATES, Run, TaskRun, now_ms

PageUrl = Callable[[Run, int], str]

# result_state -> (status.termination_details.code, .type) of the newer V2 status
_TERMINATION = {
    "SUCCESS": ("SUCCESS", "SUCCESS"),
    "CANCELED": ("USER_CANCELED", "SUCCESS"),
    "TIMEDOUT": ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
    "UPSTREAM_FAILED": ("SKIPPED", "SUCCESS"),
    "UPSTREAM_CANCELED": ("SKIPPED", "SUCCESS"),
}


def state_json(
    life_cycle: str, result: str | None, message: str, cancelled: bool
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "life_cycle_state": life_cycle,
        "state_message": message,
        "user_cancelled_or_timedout": cancelled,
    }
    if result is not None:
        state["result_state"] = result
    return state


def status_json(life_cycle: str, result: str | None, message: str) -> dict[str, Any]:
    if life_cycle not in TERMINAL_STATES:
        return {"state": life_cycle}
    code, kind = _TERMINATION.get(result or "", ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"))
    if life_cycle == "INTERNAL_ERROR":
        code, kind = "INTERNAL_ERROR", "INTERNAL_ERROR"
    return {
        "state": "TERMINATED",
        "termination_details": {"code": code, "type": kind, "message": message},
    }


def task_json(run: Run, task: TaskRun, page_url: PageUrl) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in task.spec.items() if k not in ("task_key", "run_id")}
    running, end = task.running_since, task.end_time
    out.update(
        {
            "task_key": task.task_key,
            "run_id": task.run_id,
            "attempt_number": 0,
            "state": state_json(
                task.life_cycle_state,
                task.result_state,
                task.state_message,
                run.user_cancelled_or_timedout,
            ),
            "status": status_json(task.life_cycle_state, task.result_state, task.state_message),
            "start_time": task.start_time,
            "end_time": end,
            "setup_duration": ((running or end or now_ms()) - task.start_time)
            if task.start_time
            else 0,
            "execution_duration": ((end or now_ms()) - running) if running else 0,
            "cleanup_duration": 0,
            "run_page_url": page_url(run, task.run_id),
        }
    )
    if not task.cluster.serverless:
        out["cluster_instance"] = task.cluster.instance()
    if task.depends_on:
        out["depends_on"] = [{"task_key": d} for d in task.depends_on]
    return out


def run_json(run: Run, page_url: PageUrl) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": run.job_id,
        "run_id": run.run_id,
        "number_in_job": run.run_id,
        "original_attempt_run_id": run.run_id,
        "attempt_number": 0,
        "creator_user_name": "emulator@localhost",
        "run_name": run.run_name,
        "run_type": "SUBMIT_RUN",
        "format": "SINGLE_TASK" if run.legacy else "MULTI_TASK",
        "trigger": "ONE_TIME",
        "state": state_json(
            run.life_cycle_state,
            run.result_state,
            run.state_message,
            run.user_cancelled_or_timedout,
        ),
        "status": status_json(run.life_cycle_state, run.result_state, run.state_message),
        "start_time": run.start_time,
        "end_time": run.end_time,
        "setup_duration": 0,
        "execution_duration": 0,
        "cleanup_duration": 0,
        "run_duration": (run.end_time or now_ms()) - run.start_time,
        "run_page_url": page_url(run, run.run_id),
        "tasks": [task_json(run, t, page_url) for t in run.tasks],
    }
    if run.environments:
        out["environments"] = run.environments
    if len(run.tasks) == 1:
        # Single-task runs also carry the cluster at the top (the launcher reads either place).
        task = run.tasks[0]
        if not task.cluster.serverless:
            out["cluster_instance"] = task.cluster.instance()
        cluster_spec = {k: task.spec[k] for k in LEGACY_TASK_FIELDS if k in task.spec}
        if cluster_spec:
            out["cluster_spec"] = cluster_spec
    if run.legacy:
        first = out["tasks"][0]
        out["setup_duration"] = first["setup_duration"]
        out["execution_duration"] = first["execution_duration"]
        out["task"] = {"spark_python_task": run.tasks[0].spec["spark_python_task"]}
    return out


def task_as_run_json(run: Run, task: TaskRun, page_url: PageUrl) -> dict[str, Any]:
    """``runs/get`` (and get-output ``metadata``) for a task's own run id."""
    task_body = task_json(run, task, page_url)
    return {
        "job_id": run.job_id,
        "run_id": task.run_id,
        "job_run_id": run.run_id,
        "number_in_job": task.run_id,
        "original_attempt_run_id": task.run_id,
        "attempt_number": 0,
        "creator_user_name": "emulator@localhost",
        "run_name": task.task_key,
        "run_type": "SUBMIT_RUN",
        "state": task_body["state"],
        "status": task_body["status"],
        "start_time": task.start_time or run.start_time,
        "end_time": task.end_time,
        "setup_duration": task_body["setup_duration"],
        "execution_duration": task_body["execution_duration"],
        "cleanup_duration": 0,
        "run_page_url": task_body["run_page_url"],
        **({} if task.cluster.serverless else {"cluster_instance": task.cluster.instance()}),
        "tasks": [task_body],
    }
