"""Who a run worker is, and how a checker tells whether it is still alive.

A worker is identified by what its own process reads about itself once it runs
(`WorkerRecord`): the host name, the boot it runs in
(`/proc/sys/kernel/random/boot_id`), its pid namespace (`/proc/self/ns/pid`: a
container has its own), its pid, and the start time of its process in clock
ticks since boot (`/proc/<pid>/stat`, field 22). Within one boot and pid
namespace no two processes share pid and start ticks, so a checker of that
boot and namespace compares them as they are: the same pid with the same start
ticks, not a zombie, is the worker; anything else means the worker is gone. No
clock is compared with another, and nothing depends on when the worker was
forked or how long it took to report.

A checker elsewhere (another host or container, or after a reboot) cannot see
the process. It judges by the worker's heartbeat: the worker rewrites its
record with a new beat number every few seconds, and a checker that sees the
number unchanged for longer than its limit, measured on its own monotonic
clock, takes the worker for lost. Again no two clocks are compared.

The record lives in the Dagster instance's key-value store (one row per running
worker, written by that worker alone, so no write can undo another's), not in
the run's tags: tags are rewritten with the run's body, and concurrent writers
of a run's body can lose each other's changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dagster import DagsterInstance, RunsFilter

from fanout_dagster.orchestration.object_state import delete_kv, read_kv_prefix

RECORD_PREFIX = "fanout/run_worker/"
_PROC = Path("/proc")


@dataclass(frozen=True)
class Machine:
    """Where a process runs: host, boot and pid namespace (None where there is no /proc)."""

    host: str
    boot_id: str | None
    pid_ns: str | None

    def sees(self, other: Machine) -> bool:
        """Whether processes of `other` are processes of this machine's /proc."""
        if self.boot_id is None or self.pid_ns is None:  # no /proc (macOS): by host name
            return other.host == self.host and other.boot_id is None
        return (self.boot_id, self.pid_ns) == (other.boot_id, other.pid_ns)


def this_machine() -> Machine:
    if not (_PROC / "self" / "stat").exists():
        return Machine(socket.gethostname(), None, None)
    boot_id = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    return Machine(socket.gethostname(), boot_id, os.readlink(_PROC / "self" / "ns" / "pid"))


@dataclass(frozen=True)
class ProcessState:
    start_ticks: int | None  # None where there is no /proc
    zombie: bool


def process_state(pid: int) -> ProcessState | None:
    """The state of a process of this machine, None if there is no such process."""
    if not (_PROC / "self" / "stat").exists():
        try:  # no /proc (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ProcessState(None, False)
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses).
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessState(start_ticks=int(fields[19]), zombie=fields[0] in ("Z", "X"))


@dataclass(frozen=True)
class WorkerRecord:
    """A run worker's identity, and its heartbeat when it beats."""

    host: str
    boot_id: str | None
    pid_ns: str | None
    pid: int
    start_ticks: int | None
    # Heartbeat: the number of the last beat and how often the worker beats;
    # None for a worker that does not beat (one that a checker recorded).
    beat: int = 0
    beat_interval_s: float | None = None

    @property
    def machine(self) -> Machine:
        return Machine(self.host, self.boot_id, self.pid_ns)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerRecord:
        return cls(**json.loads(text))


def record_of(pid: int, beat_interval_s: float | None = None) -> WorkerRecord | None:
    """The identity of a process of this machine (None if there is no such process)."""
    state = process_state(pid)
    if state is None or state.zombie:
        return None
    machine = this_machine()
    return WorkerRecord(
        host=machine.host,
        boot_id=machine.boot_id,
        pid_ns=machine.pid_ns,
        pid=pid,
        start_ticks=state.start_ticks,
        beat_interval_s=beat_interval_s,
    )


def is_gone(record: WorkerRecord) -> str | None:
    """Why the recorded worker, a process this machine sees, is gone; None while it lives."""
    state = process_state(record.pid)
    if state is None or state.zombie:
        return f"run worker process {record.pid} is gone (killed, or it crashed)"
    if record.start_ticks is not None and state.start_ticks != record.start_ticks:
        return (
            f"run worker process {record.pid} is gone (the pid now belongs to another process, "
            "started after it)"
        )
    return None


# --------------------------------------------------------------------------- the store


def read_record(instance: DagsterInstance, run_id: str) -> WorkerRecord | None:
    key = RECORD_PREFIX + run_id
    text = instance.run_storage.get_cursor_values({key}).get(key)
    return WorkerRecord.from_json(text) if text else None


def write_record(instance: DagsterInstance, run_id: str, record: WorkerRecord) -> None:
    instance.run_storage.set_cursor_values({RECORD_PREFIX + run_id: record.to_json()})


def delete_record(instance: DagsterInstance, run_id: str) -> None:
    delete_kv(instance, [RECORD_PREFIX + run_id])


def sweep_records(instance: DagsterInstance) -> int:
    """Delete the records of runs that have finished (a worker deletes its own
    when its run ends, unless it was killed; a checker's records of code-server
    workers stay until here); returns how many were deleted."""
    rows = read_kv_prefix(instance, RECORD_PREFIX)
    if not rows:
        return 0
    run_ids = [key[len(RECORD_PREFIX) :] for key in rows]
    unfinished = {
        run.run_id
        for run in instance.get_runs(filters=RunsFilter(run_ids=run_ids))
        if not run.is_finished
    }
    done = [RECORD_PREFIX + run_id for run_id in run_ids if run_id not in unfinished]
    delete_kv(instance, done)
    return len(done)


class Heartbeat:
    """Rewrites a worker's record with the next beat number every `interval_s`
    seconds, in a thread of the worker, until stopped (or the process dies)."""

    def __init__(self, instance: DagsterInstance, run_id: str, record: WorkerRecord) -> None:
        assert record.beat_interval_s is not None
        self._instance = instance
        self._run_id = run_id
        self._record = record
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fanout-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = self._record.beat_interval_s
        while not self._stopped.wait(interval):
            self._record = replace(self._record, beat=self._record.beat + 1)
            # The storage unreachable for now: the next beat tries again.
            with contextlib.suppress(Exception):
                write_record(self._instance, self._run_id, self._record)
