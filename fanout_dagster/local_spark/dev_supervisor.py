"""`make dev`'s process supervision: a command beside the Spark Connect server,
and nothing of either left running after a stop.

The wrapper (`python -m fanout_dagster.local_spark.connect_server -- CMD`) is the
parent of the server's JVM and of the command (`dagster dev`, which starts a
webserver, a daemon, code servers and run workers). It stops all of it:

- on Ctrl-C (SIGINT to the terminal's process group), SIGTERM or SIGHUP
  (terminal closed), and when the command or the server ends on its own, within
  COMMAND_GRACE_S + SERVER_GRACE_S (< 10 s): the command gets COMMAND_GRACE_S to
  stop with what it started, then the server is stopped and whatever is left of
  the command killed;
- when the wrapper itself is killed outright (SIGKILL): the JVM and the command
  were started through `die_with_parent`, so the kernel signals them.

The wrapper is a child subreaper (Linux): a process of the command whose parent
died is re-parented to the wrapper instead of init, so it is still found and
stopped (dagster dev, for one, restarts a code server while it shuts down).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import FrameType, TracebackType

from fanout_dagster.local_spark.die_with_parent import become_subreaper, tied

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A process stopped by a signal exits 128 + its number, as shells report it.
EXIT_CODES: dict[int, int] = {int(number): 128 + number for number in STOP_SIGNALS}
# Ctrl-C stops everything within 10 s: the command gets COMMAND_GRACE_S to stop
# what it started (dagster dev takes ~3 s idle, ~30 s on a loaded machine); then
# the server (~1 s on SIGTERM) gets SIGTERM, and SIGKILL SERVER_GRACE_S later.
COMMAND_GRACE_S = 5.0
SERVER_GRACE_S = 3.0


class Stopped(Exception):
    """A stop signal arrived while the server was starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as a request to stop, SIGCHLD as a wake-up.

    While the server starts, the first stop signal raises `Stopped` (the start is
    abandoned and the server stopped). Once `running()`, a stop signal is recorded
    and wakes `wait()`, and so does a child that exits. A signal is only ever
    recorded after the first, so that a second Ctrl-C cannot break off the stop
    half-way. The handlers replace inherited ones, SIG_IGN included: a wrapper
    started in the background (SIGINT ignored) still stops on SIGINT.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._raise = True
        self._saved: dict[int, object] = {}
        self._read_fd = self._write_fd = -1
        self._saved_wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        # The C-level handler writes to this pipe for every signal with a Python
        # handler, from any thread: `wait()` wakes even while blocked in select.
        self._saved_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for number in (*STOP_SIGNALS, signal.SIGCHLD):
            self._saved[number] = signal.getsignal(number)
        for number in STOP_SIGNALS:
            signal.signal(number, self._on_stop)
        signal.signal(signal.SIGCHLD, self._on_child)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._saved_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def running(self) -> None:
        """The server is up: from now on a stop signal is recorded, not raised."""
        self._raise = False

    def wait(self) -> None:
        """Until a signal arrives (one that came before this call counts)."""
        select.select([self._read_fd], [], [])
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 512):
                pass

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        if self._raise:
            self._raise = False
            raise Stopped(signum)

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the wake-up byte is what `wait()` needs."""


def run_beside(
    command: Sequence[str],
    server: subprocess.Popen[bytes],
    signals: StopSignals,
    env: Mapping[str, str],
    server_log: Path,
) -> int:
    """Run `command` while `server` is up; stop both (and all the command started)
    when one of them ends or a stop signal arrives. Returns the exit code."""
    become_subreaper()
    # SIGTERM on the wrapper's death: dagster dev takes it as Ctrl-C and shuts down.
    child = subprocess.Popen(tied(command, signal.SIGTERM), env=dict(env))
    ours = {child.pid, server.pid}
    while signals.received is None and child.poll() is None and server.poll() is None:
        signals.wait()
        reap_adopted(keep=ours)
    deadline = time.monotonic() + COMMAND_GRACE_S
    server_died = server.poll() is not None
    name = Path(command[0]).name
    if child.poll() is None:
        if server_died:
            say(
                f"error: the Spark Connect server exited with code {server.returncode}; "
                f"stopping {name} (see {server_log})"
            )
            child.send_signal(signal.SIGTERM)
        elif signals.received == signal.SIGTERM:
            # A SIGTERM may have been meant for the wrapper alone (`kill`, or make
            # passing it on): pass it on. A SIGINT (Ctrl-C) or SIGHUP (terminal
            # closed) reached the command's process group already, and a second
            # one would break off dagster dev's own shutdown.
            child.send_signal(signal.SIGTERM)
    if signals.received is not None:
        say(f"Stopping {name} and the Spark Connect server ...")
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(max(0.0, deadline - time.monotonic()))
    # The command has stopped or had its time: the server stops now, beside what is
    # left of the command (SIGKILLed at the deadline), not after it.
    signal_group(server, signal.SIGTERM)
    killed = stop_descendants(keep={server.pid}, own={child}, deadline=deadline)
    if killed:
        say(f"killed {killed} process(es) of {name} still running {COMMAND_GRACE_S:.0f} s on")
    stop_server(server, SERVER_GRACE_S)
    if signals.received is not None:
        return EXIT_CODES[signals.received]
    if server_died or child.returncode is None:
        return 1
    return child.returncode


def serve(server: subprocess.Popen[bytes], signals: StopSignals, server_log: Path) -> int:
    """The server alone (`make spark-server`, the systemd unit): until a stop signal."""
    while signals.received is None and server.poll() is None:
        signals.wait()
    if signals.received is None:
        say(
            f"error: the Spark Connect server exited with code {server.returncode}; see {server_log}"
        )
        return 1
    return EXIT_CODES[signals.received]


def stop_server(server: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after `grace` seconds."""
    signal_group(server, signal.SIGTERM)
    try:
        server.wait(grace)
    except subprocess.TimeoutExpired:
        signal_group(server, signal.SIGKILL)
        server.wait()


def signal_group(leader: subprocess.Popen[bytes], number: int) -> None:
    """Signal the process group `leader` leads (started in a session of its own)."""
    if leader.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, number)


def stop_descendants(*, keep: set[int], own: set[subprocess.Popen[bytes]], deadline: float) -> int:
    """Stop every descendant of this process but `keep` (and theirs): SIGTERM now,
    SIGKILL at `deadline`. `own` are children a Popen object waits for. Returns how
    many had to be killed."""
    own_pids = {process.pid for process in own}
    terminated: set[int] = set()
    killed: set[int] = set()
    while True:
        for process in own:
            process.poll()
        reap_adopted(keep=keep | own_pids)
        left = descendants(os.getpid(), skip=keep)
        if not left:
            return len(killed)
        late = time.monotonic() >= deadline
        for pid in left - (set() if late else terminated):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
            (killed if late else terminated).add(pid)
        if late and time.monotonic() >= deadline + SERVER_GRACE_S:
            say(f"warning: processes {sorted(left)} did not stop on SIGKILL")
            return len(killed)
        time.sleep(0.05)


def say(line: str) -> None:
    """Print a line; a terminal that was closed (EIO) or a reader gone (EPIPE) must
    not break off a stop half-way."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def reap_adopted(keep: set[int]) -> None:
    """Reap exited children that were re-parented to this process (a subreaper);
    the ones in `keep` are left to their Popen objects."""
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if exited is None or exited.si_pid in keep:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(exited.si_pid, 0)


def descendants(root: int, skip: AbstractSet[int] = frozenset()) -> set[int]:
    """The live descendants of `root`, without `skip` and theirs."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, live) in process_table().items():
        if live:
            children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    pending = [root]
    while pending:
        for pid in children.get(pending.pop(), []):
            if pid not in skip and pid not in found:
                found.add(pid)
                pending.append(pid)
    return found


def process_table() -> dict[int, tuple[int, bool]]:
    """pid -> (parent pid, live) of every process, from /proc. A zombie is dead once
    its other threads are gone too (a killed process's main thread turns zombie
    while the others still exit, holding its files and sockets)."""
    table: dict[int, tuple[int, bool]] = {}
    for entry in _proc_entries():
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
            threads = len(os.listdir(Path("/proc") / entry / "task"))
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), fields[0] != "Z" or threads > 1)
    return table


def _proc_entries() -> Iterator[str]:
    with contextlib.suppress(OSError):
        yield from (name for name in os.listdir("/proc") if name.isdigit())
