"""A task process in its own process group, killable without leaving Spark JVMs behind.

The task's Python process is started with ``start_new_session=True`` so it leads a new process
group; the Spark JVM that PySpark launches (spark-submit ``exec``s java) inherits that group.
Signalling the group therefore reaches every process of the task.

PID reuse is the trap: once the leader has been reaped its pid (= the group id) may be handed
to an unrelated process. So we wait for the leader with ``waitid(WNOWAIT)``, which leaves it a
zombie -- the pid stays reserved -- then SIGKILL any stragglers in the group, and only then reap
it. Signals sent from other threads (cancel) take the same lock and are skipped once reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path


class TaskProcess:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stdout: Path, stderr: Path):
        with stdout.open("ab") as out, stderr.open("ab") as err:
            self._popen = subprocess.Popen(
                argv,
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._popen.pid
        self._lock = threading.Lock()
        self._reaped = False
        self._kill_timer: threading.Timer | None = None

    def _signal_group(self, sig: int) -> None:
        # Caller holds the lock and has checked that the leader is not reaped yet.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def signal(self, sig: int) -> None:
        with self._lock:
            if not self._reaped:
                self._signal_group(sig)

    def terminate(self, grace_seconds: float) -> None:
        """SIGTERM the group now and SIGKILL it after ``grace_seconds`` if still alive."""
        self.signal(signal.SIGTERM)
        with self._lock:
            if self._reaped or self._kill_timer is not None:
                return
            self._kill_timer = threading.Timer(grace_seconds, self.signal, args=(signal.SIGKILL,))
            self._kill_timer.daemon = True
            self._kill_timer.start()

    def poll(self) -> int | None:
        """None while the process runs; else its exit status (it is left for wait() to reap)."""
        with self._lock:
            if self._reaped:
                return self._popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        return None if info is None else info.si_status

    def wait(self) -> int:
        """Block until the task ends; returns its exit code (negative: killed by a signal)."""
        # Leaves the leader as a zombie so its pid/pgid cannot be reused yet (PEP 475 retries EINTR).
        # ChildProcessError: someone else reaped it (a stray waitpid(-1)); Popen.wait copes below.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            # Anything still in the group now is an orphan (e.g. a JVM whose python died): kill it.
            self._signal_group(signal.SIGKILL)
            code = self._popen.wait()
            self._reaped = True
            if self._kill_timer is not None:
                self._kill_timer.cancel()
        return code
