"""Counters that tests and benchmarks read back (``emu.stats()`` / ``GET /emulator/stats``).

Everything here is JSON-shaped (string keys) so the Python API and the REST API return the same
dict.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Live gauges survive reset(): they describe what is running right now.
        self._running = 0
        self._running_per_cluster: Counter[str] = Counter()
        self._clear()

    def reset(self) -> None:
        """Zero the counters (tests call this between phases); live gauges are kept."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._api_calls: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._results: Counter[str] = Counter()
        self._runs_submitted = 0
        self._idempotent_replays = 0
        self._tasks_started = 0
        self._runs_started: set[int] = set()
        self._max_running = self._running
        self._max_running_per_cluster: dict[str, int] = {
            k: v for k, v in self._running_per_cluster.items() if v
        }
        self._cluster_starts = 0
        self._cluster_start_seconds = 0.0
        self._libraries: dict[str, list[Any]] = {}

    # -- recording -------------------------------------------------------------------------------

    def api_call(self, endpoint: str) -> None:
        with self._lock:
            self._api_calls[endpoint] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def run_submitted(self, run_id: int, libraries: list[Any]) -> None:
        with self._lock:
            self._runs_submitted += 1
            self._libraries[str(run_id)] = libraries

    def idempotent_replay(self) -> None:
        with self._lock:
            self._idempotent_replays += 1

    def task_started(self, run_id: int, cluster_id: str) -> None:
        with self._lock:
            self._tasks_started += 1
            self._runs_started.add(run_id)
            self._running += 1
            self._max_running = max(self._max_running, self._running)
            self._running_per_cluster[cluster_id] += 1
            self._max_running_per_cluster[cluster_id] = max(
                self._max_running_per_cluster.get(cluster_id, 0),
                self._running_per_cluster[cluster_id],
            )

    def task_finished(self, cluster_id: str) -> None:
        with self._lock:
            self._running -= 1
            self._running_per_cluster[cluster_id] -= 1

    def run_finished(self, result_state: str) -> None:
        with self._lock:
            self._results[result_state] += 1

    def cluster_started(self, seconds: float) -> None:
        with self._lock:
            self._cluster_starts += 1
            self._cluster_start_seconds += seconds

    # -- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                # distinct runs created by jobs/runs/submit (idempotent replays not counted)
                "runs_submitted": self._runs_submitted,
                "idempotent_replays": self._idempotent_replays,
                # runs whose task process was actually launched (cancelled-while-pending: no)
                "runs_started": len(self._runs_started),
                "tasks_started": self._tasks_started,
                "runs_by_result_state": dict(self._results),
                "running_now": self._running,
                "max_concurrent_running": self._max_running,
                "max_concurrent_running_per_cluster": dict(self._max_running_per_cluster),
                "cluster_starts": self._cluster_starts,
                "cluster_start_seconds_total": round(self._cluster_start_seconds, 6),
                "api_calls": dict(self._api_calls),
                "faults_injected": dict(self._faults),
                "libraries_by_run": {k: list(v) for k, v in self._libraries.items()},
            }
