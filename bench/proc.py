"""Process-tree accounting: wall, CPU and peak memory of a command and everything it starts.

CPU time comes from `getrusage(RUSAGE_CHILDREN)` deltas. That only counts
processes that were waited for, so the benchmark process makes itself a child
subreaper (Linux prctl): descendants whose parent exits first (the JVM of a
finished Python process, a run worker outliving its code server...) are
re-parented to it instead of to init, and `run_measured` reaps all of them
before it reads the counters. The whole tree - Python, JVMs, daemon, code
servers, run workers - is then in the delta.

A long-lived child that outlives measurements (the warm Spark Connect server,
bench/warm.py) is `kept`: never reaped or killed here, its CPU read from /proc
(`group_cpu_s`) and its memory sampled beside the tree's (`TreeSampler`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    cpu_ticks: int  # utime + stime + cutime + cstime (its own and its reaped children's)


def proc_stats() -> dict[int, ProcStat]:
    """Every process's /proc/<pid>/stat: parent, process group, CPU ticks."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces/parens: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry)] = ProcStat(
            int(entry),
            fields[0],
            int(fields[1]),
            int(fields[2]),
            sum(int(x) for x in fields[11:15]),
        )
    return found


def direct_children(pid: int | None = None) -> list[int]:
    pid = pid or os.getpid()
    return [s.pid for s in proc_stats().values() if s.ppid == pid and s.state != "Z"]


def group_cpu_s(pgrp: int) -> float:
    """CPU seconds of a process group's live processes (and of the children they reaped)."""
    return sum(s.cpu_ticks for s in proc_stats().values() if s.pgrp == pgrp) / _CLK_TCK


def rss_mb(pids: Iterable[int]) -> float:
    """Summed resident memory of the processes (shared pages counted in each)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return total * _PAGE / 2**20


def descendants(
    root: int, stats: dict[int, ProcStat], skip_groups: Iterable[int] = ()
) -> list[int]:
    """Every live descendant of root, leaving out whole process groups (and what they start)."""
    skip = set(skip_groups)
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stat = stats.get(pid)
        if stat is None or stat.state == "Z" or stat.pgrp in skip:
            continue
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def reap_all(timeout: float = 60.0, keep: Iterable[int] = ()) -> list[int]:
    """Wait for every child (including adopted orphans); kill, by pid, any still alive at the timeout.

    Children in `keep` (and their process groups' members) are left alone: the
    wait ends when only they are left. Returns the pids that had to be killed.
    """
    kept = set(keep)
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
        # Zombies count too: a process whose leader thread shows "Z" while its other threads
        # (a JVM's) still exit cannot be waited for yet, and its CPU is not in the counters.
        alive = [
            s.pid
            for s in proc_stats().values()
            if s.ppid == os.getpid() and s.pid not in kept and s.pgrp not in kept
        ]
        if not alive:
            return killed
        if time.time() > deadline:
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


class TreeSampler:
    """Every `interval` s, the summed RSS of this process's descendants (the
    measurement's tree) and, apart, of the kept process groups (the warm server).

    `peak_mb` is the largest sum of the tree plus, when `count_kept`, the kept
    groups at the same instant; `kept_at_peak_mb` is the kept groups' share of it.
    """

    def __init__(self, kept_groups: Iterable[int] = (), interval: float = 0.5):
        self.kept = set(kept_groups)
        self.interval = interval
        self.samples = 0
        self.tree_peak_mb = 0.0
        self.kept_peak_mb = 0.0
        self.peak_mb = 0.0
        self.kept_at_peak_mb = 0.0
        self.count_kept = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self, count_kept: bool) -> TreeSampler:
        self.count_kept = count_kept
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # at least one

    def sample(self) -> None:
        stats = proc_stats()
        tree = rss_mb(descendants(os.getpid(), stats, self.kept))
        kept = rss_mb(s.pid for s in stats.values() if s.pgrp in self.kept and s.state != "Z")
        self.samples += 1
        self.tree_peak_mb = max(self.tree_peak_mb, tree)
        self.kept_peak_mb = max(self.kept_peak_mb, kept)
        total = tree + (kept if self.count_kept else 0.0)
        if total > self.peak_mb:
            self.peak_mb, self.kept_at_peak_mb = total, (kept if self.count_kept else 0.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


@dataclass
class Measured:
    returncode: int
    started: float
    ended: float  # when the command exited
    reaped: float  # when its whole tree was gone
    cpu_s: float  # the command's whole tree (not the kept processes)
    killed: list[int]
    background_cpu_s: float = 0.0  # CPU used by everything else on the machine meanwhile
    kept_cpu_s: float = 0.0  # CPU of the kept process groups (the warm server) meanwhile
    peak_rss_mb: float | None = None  # see TreeSampler
    kept_rss_at_peak_mb: float | None = None
    tree_peak_rss_mb: float | None = None
    kept_peak_rss_mb: float | None = None
    rss_samples: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def run_measured(
    cmd: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    timeout: float,
    cwd: str | None = None,
    keep: Iterable[int] = (),
    count_kept_rss: bool = False,
) -> Measured:
    """Run cmd, wait for it and for every process it left behind; CPU and peak RSS of the
    whole tree. `keep`: process groups (leader pids) of long-lived children - the warm
    server - whose CPU is read apart (`kept_cpu_s`) and whose RSS joins the peak when
    `count_kept_rss`."""
    kept = list(keep)
    reap_all(timeout=5, keep=kept)  # nothing of an earlier measurement may leak into this one
    cpu0 = children_cpu_s()
    kept0 = sum(group_cpu_s(g) for g in kept)
    busy0, self0 = system_busy_s(), _self_cpu_s()
    sampler = TreeSampler(kept).start(count_kept_rss)
    started = time.time()
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = _stop_group(proc)
            except BaseException:  # Ctrl-C: leave nothing of the measurement running
                _stop_group(proc)
                reap_all(timeout=15, keep=kept)
                raise
        ended = time.time()
        killed = reap_all(timeout=60, keep=kept)
    finally:
        sampler.stop()
    cpu = children_cpu_s() - cpu0
    kept_cpu = sum(group_cpu_s(g) for g in kept) - kept0
    busy = system_busy_s() - busy0
    background = max(0.0, busy - cpu - kept_cpu - (_self_cpu_s() - self0))
    return Measured(
        returncode,
        started,
        ended,
        time.time(),
        cpu,
        killed,
        background,
        kept_cpu_s=kept_cpu,
        peak_rss_mb=sampler.peak_mb,
        kept_rss_at_peak_mb=sampler.kept_at_peak_mb,
        tree_peak_rss_mb=sampler.tree_peak_mb,
        kept_peak_rss_mb=sampler.kept_peak_mb,
        rss_samples=sampler.samples,
    )


def _stop_group(proc: subprocess.Popen) -> int:
    """SIGTERM to the command's process group, SIGKILL after 30 s; its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


# -- the rest of the machine ---------------------------------------------------------------------
# The benchmark shares the box with whatever else runs (other engineers' tests,
# dev servers). /proc/stat counts every CPU's busy time; minus our own tree's
# CPU, that is the background load during a measurement.

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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
    max_wait_s: float,
    threshold_cores: float = 0.25,
    window_s: float = 5.0,
    keep: Iterable[int] = (),
) -> tuple[float, float]:
    """Wait until other processes use less than `threshold_cores` over a window
    (the kept process groups - the warm server, idle - count as ours).

    Gives up after max_wait_s. Returns (seconds waited, background cores in the last window).
    """
    kept = list(keep)

    def ours() -> float:
        return children_cpu_s() + _self_cpu_s() + sum(group_cpu_s(g) for g in kept)

    started = time.time()
    while True:
        busy0, cpu0 = system_busy_s(), ours()
        time.sleep(window_s)
        busy1, cpu1 = system_busy_s(), ours()
        background = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / window_s
        waited = time.time() - started
        if background < threshold_cores or waited >= max_wait_s:
            return waited, background


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
