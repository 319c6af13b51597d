"""Exec a command that dies with the process that started it.

    python -m fanout_dagster.local_spark.die_with_parent PARENT_PID SIGNAL -- COMMAND [ARGS...]

`make dev`'s wrapper (connect_server.py) starts the Spark Connect server's
JVM and `dagster dev` through this shim. On Linux it asks the kernel to send
SIGNAL to the command when its parent dies (PR_SET_PDEATHSIG, kept across exec),
so neither outlives a wrapper that was killed outright (SIGKILL, the OOM killer)
and had no chance to stop them. Spark's start scripts exec the JVM in place, so
the JVM is the process that carries the signal.

It also restores the default handling of the stop signals and an empty signal
mask: a process started in the background has SIGINT ignored, and the command
would inherit that. Then it execs the command: same pid, nothing in between.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ON_LINUX = sys.platform.startswith("linux")
# Restored to their defaults before the exec (an ignored signal stays ignored across exec).
DEFAULT_SIGNALS = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGCHLD,
)


def tied(command: Sequence[str], death_signal: int) -> list[str]:
    """`command`, started through this shim: it gets `death_signal` when the calling
    thread's process dies. Popen it from a thread that lives as long as the command
    (the kernel's parent is the thread that forked)."""
    return [
        sys.executable,
        "-m",
        __name__,
        str(os.getpid()),
        str(int(death_signal)),
        "--",
        *command,
    ]


def die_with_parent(death_signal: int) -> None:
    if ON_LINUX:
        _prctl(PR_SET_PDEATHSIG, death_signal)


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init, so it
    can still find (and stop) what its children started and left behind."""
    if ON_LINUX:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def main(argv: Sequence[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(
            "usage: python -m fanout_dagster.local_spark.die_with_parent PARENT_PID SIGNAL -- COMMAND..."
        )
        return 2
    parent, death_signal, command = int(argv[0]), int(argv[1]), list(argv[3:])
    die_with_parent(death_signal)
    if os.getppid() != parent:
        # The parent died before the death signal was set: it would never come.
        print(f"not starting {command[0]}: the process that started it is gone", file=sys.stderr)
        return 128 + death_signal
    for number in DEFAULT_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
