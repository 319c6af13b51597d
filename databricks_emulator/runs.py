"""Jobs ``runs/*``: one-time runs (``runs/submit``), their state machine, and the task processes.

A run moves PENDING (waiting for its cluster) -> RUNNING (task process alive) -> TERMINATED with
result_state SUCCESS / FAILED / CANCELED / TIMEDOUT; a cancel passes through TERMINATING.
INTERNAL_ERROR is used when the emulator itself cannot run the task (or shuts down under it).

Field names and shapes are those of the Jobs API 2.1/2.2 that the databricks-sdk parses
(``jobs.Run``, ``jobs.RunTask``, ``jobs.RunOutput``): integer run ids, ``state`` with
``life_cycle_state``/``result_state``/``state_message``, ``status`` (the newer V2 state),
per-task ``cluster_instance`` with a *string* ``spark_context_id``, epoch-millisecond times.

Each task runs as ``python -m <this package>.bootstrap SPEC`` (same interpreter as the server,
so the "cluster" has every library installed; ``libraries`` are only recorded) in its own
process group (see :mod:`.task_setup` and :mod:`.process`); JSON shapes are in :mod:`.run_json`.
"""

from __future__ import annotations

import builtins
import itertools
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import run_json
from .clusters import Cluster, ClusterManager
from .errors import ApiError, invalid_parameter, run_does_not_exist, serverless_disabled
from .model import (
    LEGACY_TASK_FIELDS,
    TASK_TYPES,
    TERMINAL_STATES,
    Run,
    RunSettings,
    TaskRun,
    now_ms,
)
from .stats import Stats
from .task_setup import TaskHost, deliver_cluster_logs, read_error, start_task_process, tail

MAX_IDEMPOTENCY_TOKEN_LENGTH = 64
OUTPUT_LOG_LIMIT = 5 * 1024 * 1024  # get-output returns at most the last 5 MB, as documented
MULTI_TASK_OUTPUT_ERROR = (
    "Retrieving the output of runs with multiple tasks is not supported. "
    "Please retrieve the output of each individual task run instead."
)


class RunManager:
    def __init__(
        self,
        runs_dir: Path,
        host: TaskHost,
        clusters: ClusterManager,
        stats: Stats,
        base_url: Callable[[], str],
        connect_url: Callable[[], str] | None = None,
    ):
        self._dir = runs_dir
        self._connect_url = connect_url or _no_serverless
        self._dir.mkdir(parents=True, exist_ok=True)
        self._host = host
        self._dbfs = host.dbfs
        self._clusters = clusters
        self._stats = stats
        self._settings: RunSettings = host.settings
        self._base_url = base_url
        self._lock = threading.RLock()
        self._runs: dict[int, Run] = {}
        self._tasks_by_run_id: dict[int, tuple[Run, TaskRun]] = {}
        self._by_token: dict[str, int] = {}
        self._shutting_down = False
        # Continue numbering after runs already on disk so a reused root never mixes logs.
        existing = [int(p.name) for p in self._dir.iterdir() if p.name.isdigit()]
        self._ids = itertools.count(max(existing, default=1000) + 1)

    # -- submit ------------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("idempotency_token")
        if token is not None and not isinstance(token, str):
            raise invalid_parameter("idempotency_token must be a string")
        if token is not None and len(token) > MAX_IDEMPOTENCY_TOKEN_LENGTH:
            # Documented: "The token must have at most 64 characters."
            raise invalid_parameter(
                f"Invalid idempotency_token: the token must have at most "
                f"{MAX_IDEMPOTENCY_TOKEN_LENGTH} characters (got {len(token)})."
            )
        timeout = body.get("timeout_seconds", 0) or 0
        if not isinstance(timeout, int) or timeout < 0:
            raise invalid_parameter("timeout_seconds must be a non-negative integer")
        environments = self._environments(body)
        task_specs, legacy = self._task_specs(body, environments)

        with self._lock:
            if self._shutting_down:
                raise ApiError(503, "TEMPORARILY_UNAVAILABLE", "The emulator is shutting down.")
            if token is not None and token in self._by_token:
                # Same token: same run, nothing new starts (this is what makes retries safe).
                self._stats.idempotent_replay()
                return {"run_id": self._by_token[token]}
            active = sum(
                1
                for r in self._runs.values()
                if r.life_cycle_state not in TERMINAL_STATES
                for t in r.tasks
                if t.life_cycle_state not in TERMINAL_STATES
            )
            if active + len(task_specs) > self._settings.max_active_task_runs:
                # Documented: "A workspace is limited to 1000 concurrent task runs. A 429 Too
                # Many Requests response is returned when you request a run that cannot start
                # immediately."
                raise ApiError(
                    429,
                    "RESOURCE_EXHAUSTED",
                    f"The workspace has reached its limit of "
                    f"{self._settings.max_active_task_runs} concurrently active task runs. "
                    "Please try again later.",
                )
            run_id = next(self._ids)
            run_dir = self._dir / str(run_id)
            tasks = []
            for spec in task_specs:
                task_run_id = next(self._ids)
                tasks.append(
                    TaskRun(
                        task_key=spec["task_key"],
                        run_id=task_run_id,
                        spec=spec,
                        depends_on=[d["task_key"] for d in spec.get("depends_on", [])],
                        dir=run_dir / _safe_name(spec["task_key"]),
                        # Known from the start, so `cluster_instance` is in the very first
                        # runs/get (the step launcher's permission step waits 10 s otherwise).
                        cluster=(
                            self._clusters.existing(spec["existing_cluster_id"])
                            if spec.get("existing_cluster_id") is not None
                            else self._clusters.new_job_cluster(spec["new_cluster"])
                            if spec.get("new_cluster") is not None
                            else self._clusters.serverless(spec["environment_key"])
                        ),
                    )
                )
            run = Run(
                run_id=run_id,
                job_id=run_id,  # one-time runs get an anonymous job; reuse the number
                run_name=body.get("run_name") or "Untitled",
                idempotency_token=token,
                tasks=tasks,
                legacy=legacy,
                timeout_seconds=timeout,
                environments=[environments[k] for k in sorted(environments)],
            )
            run.state_history.append("PENDING")
            self._runs[run_id] = run
            for task in tasks:
                self._tasks_by_run_id[task.run_id] = (run, task)
            if token is not None:
                self._by_token[token] = run_id
            self._stats.run_submitted(
                run_id,
                [
                    *(lib for t in tasks for lib in t.spec.get("libraries", [])),
                    *(
                        {"environment_dependency": dep}
                        for env in run.environments
                        for dep in (env.get("spec") or {}).get("dependencies", [])
                    ),
                ],
            )
            if timeout:
                run.timeout_timer = threading.Timer(timeout, self._time_out, args=(run,))
                run.timeout_timer.daemon = True
                run.timeout_timer.start()
            run.thread = threading.Thread(
                target=self._execute, args=(run,), name=f"run-{run_id}", daemon=True
            )
            run.thread.start()
        return {"run_id": run_id}

    def _environments(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The run's serverless environments by key (validated)."""
        raw = body.get("environments")
        if raw is None:
            return {}
        if not isinstance(raw, list):
            raise invalid_parameter("environments must be a list")
        out: dict[str, dict[str, Any]] = {}
        for env in raw:
            key = env.get("environment_key") if isinstance(env, dict) else None
            if not isinstance(key, str) or not key:
                raise invalid_parameter("Each environment needs an environment_key")
            if key in out:
                raise invalid_parameter(f"Duplicate environment_key {key}")
            spec = env.get("spec", {})
            if not isinstance(spec, dict):
                raise invalid_parameter(f"Environment {key}: spec must be an object")
            deps = spec.get("dependencies", [])
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise invalid_parameter(
                    f"Environment {key}: spec.dependencies must be a list of strings"
                )
            out[key] = env
        if out and not self._settings.serverless:
            raise serverless_disabled()
        return out

    def _task_specs(
        self, body: dict[str, Any], environments: dict[str, dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], bool]:
        """Validate the submitted tasks; the legacy single-task form becomes one task."""
        if "tasks" in body:
            tasks = body["tasks"]
            if not isinstance(tasks, list) or not tasks:
                raise invalid_parameter("tasks must be a non-empty list")
            legacy = False
        elif any(body.get(t) is not None for t in TASK_TYPES):
            task = {k: v for k, v in body.items() if k in (*TASK_TYPES, *LEGACY_TASK_FIELDS)}
            task["task_key"] = _safe_name(body.get("run_name") or "task")
            tasks, legacy = [task], True
        else:
            raise invalid_parameter(
                "A run needs 'tasks' (or a top-level task in the legacy format)."
            )

        keys: set[str] = set()
        for task in tasks:
            if not isinstance(task, dict):
                raise invalid_parameter("Each task must be an object")
            key = task.get("task_key")
            if not isinstance(key, str) or not key:
                raise invalid_parameter("Each task needs a task_key")
            if key in keys:
                raise invalid_parameter(f"Duplicate task_key {key}")
            keys.add(key)
            kinds = [t for t in TASK_TYPES if task.get(t) is not None]
            if len(kinds) != 1:
                raise invalid_parameter(
                    f"Task {key} must specify exactly one task type (got {kinds or 'none'})"
                )
            if kinds[0] != "spark_python_task":
                raise invalid_parameter(
                    f"The Databricks emulator only runs spark_python_task (task {key} is a {kinds[0]})"
                )
            spt = task["spark_python_task"]
            if (
                not isinstance(spt, dict)
                or not isinstance(spt.get("python_file"), str)
                or not spt["python_file"]
            ):
                raise invalid_parameter(f"Task {key}: spark_python_task.python_file is required")
            params = spt.get("parameters", [])
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                raise invalid_parameter(
                    f"Task {key}: spark_python_task.parameters must be a list of strings"
                )
            has_existing = task.get("existing_cluster_id") is not None
            has_new = task.get("new_cluster") is not None
            env_key = task.get("environment_key")
            if env_key is not None:
                if not self._settings.serverless:
                    raise serverless_disabled()
                if has_existing or has_new:
                    raise invalid_parameter(
                        f"Task {key}: environment_key (serverless) cannot be combined with "
                        "existing_cluster_id or new_cluster"
                    )
                if env_key not in environments:
                    raise invalid_parameter(
                        f"Task {key} references environment_key {env_key!r}, which is not "
                        "defined in the job's environments"
                    )
                if task.get("libraries"):
                    # Databricks' own words (400 INVALID_PARAMETER_VALUE).
                    raise invalid_parameter(
                        "Libraries field is not supported for serverless task, please specify "
                        "libraries in environment."
                    )
                continue
            if not has_existing and not has_new:
                raise invalid_parameter(
                    f"Task {key} requires a cluster or an environment to run: specify one of "
                    "existing_cluster_id, new_cluster, environment_key"
                    + ("" if self._settings.serverless else " (serverless is not enabled)")
                    + "."
                )
            if has_existing and has_new:
                raise invalid_parameter(
                    f"Task {key}: exactly one of existing_cluster_id or new_cluster is required"
                )
            if has_existing:
                self._clusters.existing(task["existing_cluster_id"])  # validates (or auto-creates)
            elif not isinstance(task["new_cluster"], dict):
                raise invalid_parameter(f"Task {key}: new_cluster must be an object")
            libraries = task.get("libraries", [])
            if not isinstance(libraries, list):
                raise invalid_parameter(f"Task {key}: libraries must be a list")
        for task in tasks:
            for dep in task.get("depends_on", []) or []:
                if not isinstance(dep, dict) or dep.get("task_key") not in keys:
                    raise invalid_parameter(
                        f"Task {task['task_key']} depends on an unknown task: {dep}"
                    )
        _topological_order(tasks)  # raises on cycles
        return [dict(t) for t in tasks], legacy

    # -- execution ---------------------------------------------------------------------------------

    def _set_run_state(
        self, run: Run, life_cycle: str, message: str, result: str | None = None
    ) -> None:
        with self._lock:
            run.life_cycle_state = life_cycle
            run.state_message = message
            run.result_state = result
            if not run.state_history or run.state_history[-1] != life_cycle:
                run.state_history.append(life_cycle)

    def _execute(self, run: Run) -> None:
        try:
            order = _topological_order([t.spec for t in run.tasks])
            for key in order:
                task = run.task(key)
                upstream = [run.task(d) for d in task.depends_on]
                if run.cancel_event.is_set():
                    self._finish_task(task, "CANCELED", "Run cancelled.")
                elif any(u.result_state != "SUCCESS" for u in upstream):
                    bad = next(u for u in upstream if u.result_state != "SUCCESS")
                    result = (
                        "UPSTREAM_CANCELED" if bad.result_state == "CANCELED" else "UPSTREAM_FAILED"
                    )
                    self._finish_task(
                        task, result, f"Upstream task {bad.task_key} did not succeed."
                    )
                else:
                    self._run_task(run, task)
            self._finish_run(run)
        except Exception as exc:  # noqa: BLE001 - an emulator bug must not leave a run hanging
            with self._lock:
                for task in run.tasks:
                    if task.life_cycle_state not in TERMINAL_STATES:
                        task.life_cycle_state = "INTERNAL_ERROR"
                        task.state_message = f"Emulator error: {exc!r}"
                        task.end_time = now_ms()
                run.end_time = now_ms()
                self._set_run_state(run, "INTERNAL_ERROR", f"Emulator error: {exc!r}", "FAILED")
            self._stats.run_finished("FAILED")
        finally:
            if run.timeout_timer is not None:
                run.timeout_timer.cancel()  # do not keep a sleeping thread per finished run

    def _run_task(self, run: Run, task: TaskRun) -> None:
        with self._lock:
            task.start_time = now_ms()
            spec = task.spec
            cluster = task.cluster
            task.state_message = "Waiting for cluster"
        if not self._clusters.wait_until_running(cluster, run.cancel_event):
            if self._shutting_down:
                self._finish_task(
                    task, None, "The emulator shut down.", life_cycle="INTERNAL_ERROR"
                )
            else:
                self._finish_task(task, "CANCELED", "Run cancelled.")
            self._release(cluster)
            return

        task_timeout = spec.get("timeout_seconds") or 0
        timer: threading.Timer | None = None
        remote: str | None = None
        if cluster.serverless:
            try:
                remote = self._connect_url()
            except OSError as exc:
                self._finish_task(
                    task, None, f"Serverless compute failed: {exc}", life_cycle="INTERNAL_ERROR"
                )
                return
        with self._lock:
            if run.cancel_event.is_set():
                proc = None
            else:
                try:
                    proc = start_task_process(run, task, self._host, remote=remote)
                except OSError as exc:
                    self._finish_task(
                        task, None, f"Could not start the task: {exc}", life_cycle="INTERNAL_ERROR"
                    )
                    self._release(cluster)
                    return
                run.process = proc
                task.pid = proc.pid
                task.life_cycle_state = "RUNNING"
                task.running_since = now_ms()
                task.state_message = "In run"
                self._set_run_state(run, "RUNNING", "In run")
                self._stats.task_started(run.run_id, cluster.cluster_id)
                if task_timeout:
                    timer = threading.Timer(task_timeout, self._time_out, args=(run,))
                    timer.daemon = True
                    timer.start()
        if proc is None:
            self._finish_task(task, "CANCELED", "Run cancelled.")
            self._release(cluster)
            return

        try:
            code = proc.wait()
        finally:
            (task.dir / "secrets.json").unlink(
                missing_ok=True
            )  # if the task died before reading it
            self._stats.task_finished(cluster.cluster_id)
            if timer is not None:
                timer.cancel()
            with self._lock:
                run.process = None

        deliver_cluster_logs(task, self._dbfs)
        if run.timed_out:
            self._finish_task(task, "TIMEDOUT", "Run timed out.")
        elif self._shutting_down:
            self._finish_task(task, None, "The emulator shut down.", life_cycle="INTERNAL_ERROR")
        elif run.cancel_event.is_set():
            self._finish_task(task, "CANCELED", "Run cancelled.")
        elif code == 0:
            self._finish_task(task, "SUCCESS", "")
        else:
            error, trace = read_error(task, code)
            with self._lock:
                task.error, task.error_trace = error, trace
            self._finish_task(task, "FAILED", error)
        self._release(cluster)

    def _release(self, cluster: Cluster) -> None:
        if cluster.source == "JOB":
            self._clusters.terminate(cluster, "Job cluster terminated after the task finished.")

    def _finish_task(
        self, task: TaskRun, result: str | None, message: str, life_cycle: str = "TERMINATED"
    ) -> None:
        with self._lock:
            task.life_cycle_state = life_cycle
            task.result_state = result
            task.state_message = message
            task.end_time = now_ms()
            if not task.start_time:
                task.start_time = task.end_time

    def _finish_run(self, run: Run) -> None:
        with self._lock:
            results = [t.result_state for t in run.tasks]
            if run.timed_out:
                result, message = "TIMEDOUT", "Run timed out."
            elif run.cancel_event.is_set() and not self._shutting_down:
                result, message = "CANCELED", "Run cancelled."
            elif any(t.life_cycle_state == "INTERNAL_ERROR" for t in run.tasks):
                bad = next(t for t in run.tasks if t.life_cycle_state == "INTERNAL_ERROR")
                run.end_time = now_ms()
                self._set_run_state(run, "INTERNAL_ERROR", bad.state_message, None)
                self._stats.run_finished("INTERNAL_ERROR")
                return
            elif all(r == "SUCCESS" for r in results):
                result, message = "SUCCESS", ""
            else:
                failed = next(t for t in run.tasks if t.result_state not in ("SUCCESS",))
                result = "FAILED"
                message = (
                    f"Task {failed.task_key} failed with message: {failed.state_message}. "
                    "This caused all downstream tasks to get skipped."
                )
            run.end_time = now_ms()
            self._set_run_state(run, "TERMINATED", message, result)
        self._stats.run_finished(result)

    def _time_out(self, run: Run) -> None:
        with self._lock:
            if run.life_cycle_state in TERMINAL_STATES:
                return
            run.timed_out = True
            run.user_cancelled_or_timedout = True
        self._stop(run, "Run timed out; terminating.")

    # -- cancel / shutdown -------------------------------------------------------------------------

    def _stop(self, run: Run, message: str) -> None:
        with self._lock:
            if run.life_cycle_state in TERMINAL_STATES:
                return
            run.cancel_event.set()
            self._set_run_state(
                run, "TERMINATING", message, "TIMEDOUT" if run.timed_out else "CANCELED"
            )
            if run.process is not None:
                run.process.terminate(self._settings.cancel_grace_seconds)

    def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        run_id = body.get("run_id")
        run = self._find_run(run_id)
        with self._lock:
            run.user_cancelled_or_timedout = True
        self._stop(run, "Run cancellation requested.")
        return {}

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop every active run and wait for the task processes to be gone."""
        with self._lock:
            self._shutting_down = True
            active = [r for r in self._runs.values() if r.life_cycle_state not in TERMINAL_STATES]
            for run in active:
                run.cancel_event.set()
                if run.process is not None:
                    run.process.terminate(min(self._settings.cancel_grace_seconds, 2.0))
        deadline = time.monotonic() + timeout
        for run in active:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))

    # -- reading -----------------------------------------------------------------------------------

    def _find_run(self, run_id: Any) -> Run:
        rid = _parse_run_id(run_id)
        with self._lock:
            run = self._runs.get(rid)
            if run is None:
                raise run_does_not_exist(rid)
            return run

    def get(self, query: dict[str, str]) -> dict[str, Any]:
        rid = _parse_run_id(query.get("run_id"))
        with self._lock:
            if rid in self._runs:
                return self._run_json(self._runs[rid])
            if rid in self._tasks_by_run_id:
                run, task = self._tasks_by_run_id[rid]
                return self._task_as_run_json(run, task)
        raise run_does_not_exist(rid)

    def get_output(self, query: dict[str, str]) -> dict[str, Any]:
        rid = _parse_run_id(query.get("run_id"))
        with self._lock:
            if rid in self._runs:
                run = self._runs[rid]
                if not run.legacy:
                    # Real behaviour for runs submitted with a `tasks` list, even of one task.
                    raise invalid_parameter(MULTI_TASK_OUTPUT_ERROR)
                task = run.tasks[0]
            elif rid in self._tasks_by_run_id:
                run, task = self._tasks_by_run_id[rid]
            else:
                raise run_does_not_exist(rid)
            metadata = self._run_json(run) if run.legacy else self._task_as_run_json(run, task)
            error, error_trace = task.error, task.error_trace
        logs, truncated = tail(task.stdout_path, OUTPUT_LOG_LIMIT)
        out: dict[str, Any] = {"metadata": metadata, "logs": logs, "logs_truncated": truncated}
        if error is not None:
            out["error"] = error
            out["error_trace"] = error_trace or ""
        return out

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        active_only = query.get("active_only") == "true"
        completed_only = query.get("completed_only") == "true"
        if active_only and completed_only:
            raise invalid_parameter("active_only and completed_only cannot both be true")
        try:
            limit = int(query.get("limit", 20)) or 25
            offset = int(query.get("page_token") or query.get("offset") or 0)
        except ValueError:
            raise invalid_parameter("limit, offset and page_token must be integers") from None
        if not 1 <= limit <= 25:
            raise invalid_parameter("limit must be between 1 and 25")
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: (r.start_time, r.run_id), reverse=True)
            if active_only:
                runs = [r for r in runs if r.life_cycle_state not in TERMINAL_STATES]
            if completed_only:
                runs = [r for r in runs if r.life_cycle_state in TERMINAL_STATES]
            page = runs[offset : offset + limit]
            expand = query.get("expand_tasks") == "true"
            items = []
            for run in page:
                item = self._run_json(run)
                if not expand:
                    item.pop("tasks", None)
                items.append(item)
        out: dict[str, Any] = {"has_more": offset + limit < len(runs)}
        if items:
            out["runs"] = items
        if out["has_more"]:
            out["next_page_token"] = str(offset + limit)
        if offset:
            out["prev_page_token"] = str(max(0, offset - limit))
        return out

    def state_history(self, run_id: int) -> builtins.list[str]:
        return builtins.list(self._find_run(run_id).state_history)

    def page(self, run_id: int) -> dict[str, Any]:
        """What ``run_page_url`` shows: the run plus the tail of each task's logs."""
        run = self._find_run(run_id)
        with self._lock:
            body = self._run_json(run)
            body["state_history"] = list(run.state_history)
        body["task_logs"] = {
            t.task_key: {
                "stdout_tail": tail(t.stdout_path, 64 * 1024)[0],
                "stderr_tail": tail(t.stderr_path, 64 * 1024)[0],
                "directory": str(t.dir),
                "pid": t.pid,
            }
            for t in run.tasks
        }
        return body

    # -- JSON ------------------------------------------------------------------------------------

    def _page_url(self, run: Run, run_id: int) -> str:
        return f"{self._base_url()}/emulator/runs/{run_id}?job_id={run.job_id}"

    def _run_json(self, run: Run) -> dict[str, Any]:
        return run_json.run_json(run, self._page_url)

    def _task_as_run_json(self, run: Run, task: TaskRun) -> dict[str, Any]:
        return run_json.task_as_run_json(run, task, self._page_url)


def _no_serverless() -> str:
    raise OSError("this emulator has no serverless compute")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "task"


def _topological_order(tasks: list[dict[str, Any]]) -> list[str]:
    deps = {t["task_key"]: [d["task_key"] for d in (t.get("depends_on") or [])] for t in tasks}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(key: str) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise invalid_parameter(f"The task dependencies contain a cycle through {key}")
        state[key] = 1
        for dep in deps[key]:
            visit(dep)
        state[key] = 2
        order.append(key)

    for t in tasks:
        visit(t["task_key"])
    return order


def _parse_run_id(run_id: Any) -> int:
    try:
        return int(run_id)
    except (TypeError, ValueError):
        raise invalid_parameter(f"Invalid run_id: {run_id!r}") from None
