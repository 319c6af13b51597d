"""Process-tree accounting: wall and CPU time of a command and everything it starts.

CPU time comes from `getrusage(RUSAGE_CHILDREN)` deltas. That only counts
processes that were waited for, so the benchmark process makes itself a child
subreaper (Linux prctl): descendants whose parent exits first (the JVM of a
finished Python process, a run worker outliving its code server...) are
re-parented to it instead of to init, and `run_measured` reaps all of them
before it reads the counters. The whole tree - Python, JVMs, daemon, code
servers, run workers - is then in the delta.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def direct_children(pid: int | None = None) -> list[int]:
    pid = pid or os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces/parens: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def reap_all(timeout: float = 60.0) -> list[int]:
    """Wait for every child (including adopted orphans); kill, by pid, any still alive at the timeout.

    Returns the pids that had to be killed.
    """
    deadline = time.time() + timeout
    killed: list[int] = []
    escalated = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if time.time() > deadline:
            alive = direct_children()
            sig = signal.SIGKILL if escalated else signal.SIGTERM
            for child in alive:
                try:
                    os.kill(child, sig)
                    if child not in killed:
                        killed.append(child)
                except ProcessLookupError:
                    pass
            escalated = True
            deadline = time.time() + 10
        time.sleep(0.05)


@dataclass
class Measured:
    returncode: int
    started: float
    ended: float  # when the command exited
    reaped: float  # when its whole tree was gone
    cpu_s: float
    killed: list[int]
    background_cpu_s: float = 0.0  # CPU used by everything else on the machine meanwhile

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def run_measured(
    cmd: list[str], *, env: dict[str, str], log_path: Path, timeout: float, cwd: str | None = None
) -> Measured:
    """Run cmd, wait for it and for every process it left behind; CPU of the whole tree."""
    reap_all(timeout=5)  # nothing of an earlier measurement may leak into this one
    cpu0 = children_cpu_s()
    busy0, self0 = system_busy_s(), _self_cpu_s()
    started = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                returncode = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
    ended = time.time()
    killed = reap_all(timeout=60)
    cpu = children_cpu_s() - cpu0
    busy = system_busy_s() - busy0
    background = max(0.0, busy - cpu - (_self_cpu_s() - self0))
    return Measured(returncode, started, ended, time.time(), cpu, killed, background)


# -- the rest of the machine ---------------------------------------------------------------------
# The benchmark shares the box with whatever else runs (other engineers' tests,
# dev servers). /proc/stat counts every CPU's busy time; minus our own tree's
# CPU, that is the background load during a measurement.

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU-seconds all CPUs have spent not idle since boot."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest* are included in user/nice)
    busy = (
        fields[0]
        + fields[1]
        + fields[2]
        + fields[5]
        + fields[6]
        + (fields[7] if len(fields) > 7 else 0)
    )
    return busy / _CLK_TCK


def wait_for_quiet(
    max_wait_s: float, threshold_cores: float = 0.25, window_s: float = 5.0
) -> tuple[float, float]:
    """Wait until other processes use less than `threshold_cores` over a window.

    Gives up after max_wait_s. Returns (seconds waited, background cores in the last window).
    """
    started = time.time()
    while True:
        busy0, cpu0 = system_busy_s(), children_cpu_s() + _self_cpu_s()
        time.sleep(window_s)
        busy1, cpu1 = system_busy_s(), children_cpu_s() + _self_cpu_s()
        background = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / window_s
        waited = time.time() - started
        if background < threshold_cores or waited >= max_wait_s:
            return waited, background


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
