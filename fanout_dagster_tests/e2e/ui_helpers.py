"""Helpers for the browser tests: a real `dagster dev` on a free loopback port,
Debian's Chromium through Playwright, and run-queue observations.

Nothing here talks to the UI on the user's behalf: the tests click. The
instance (DagsterInstance on the temporary DAGSTER_HOME) is only used to set
the stage and to observe what the daemon does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fanout_dagster_tests.e2e.dagster_processes import (
    VENV_BIN,
    start_in_own_group,
    stop_process_group,
)
from fanout_dagster_tests.e2e.webserver import GraphQL, free_port, wait_until_loaded
from fanout_dagster_tests.helpers import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# --------------------------------------------------------------------------- browser


def chromium_path() -> str:
    """Debian's Chromium, never a browser Playwright downloads.

    Missing: skip, unless FANOUT_REQUIRE_BROWSER=1 (CI), where it is a failure.
    """
    path = shutil.which("chromium")
    if path:
        return path
    message = "chromium not installed: apt-get install chromium to run the UI backfill test"
    if os.environ.get("FANOUT_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (FANOUT_REQUIRE_BROWSER=1: the browser test may not be skipped)")
    pytest.skip(message)


def launch_chromium(playwright):
    return playwright.chromium.launch(
        executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
    )


def screenshot(page, name: str) -> Path | None:
    """A full-page screenshot under test-artifacts/ui/ (never fails the test itself)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception as exc:  # a dead page must not hide the real failure
        print(f"screenshot {name} failed: {exc}", file=sys.stderr)
        return None
    return path


# --------------------------------------------------------------------------- dagster dev


def dagster_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "DAGSTER_"))}
    env.update(extra)
    env["DAGSTER_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> str:
    """A dagster CLI command of this venv; its output, or a failure with it."""
    done = subprocess.run(
        [str(VENV_BIN / "dagster"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"dagster {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


@dataclass
class DagsterDev:
    """A `dagster dev` (webserver + daemon + code server) in its own process group."""

    home: Path
    env: dict[str, str]
    cwd: Path
    workspace_args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        self.log_path = self.home / "dagster_dev.log"
        self.proc = start_in_own_group(
            [
                str(VENV_BIN / "dagster"),
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                *self.workspace_args,
            ],
            env=self.env,
            cwd=self.cwd,
            log_path=self.log_path,
        )
        self.wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float) -> None:
        """The webserver answers and the code location has loaded."""
        assert self.proc is not None, "start() first"
        wait_until_loaded(GraphQL(self.url), self.proc, timeout, self.log_path)

    def stop(self) -> list[int]:
        """Stop everything dagster dev started; returns the pids that had to be killed late."""
        if self.proc is None:
            return []
        # The webserver, daemon, code servers, run workers and Spark JVMs.
        stop_process_group(self.proc, grace=30)
        # Anything that left the group (a run worker or a Spark JVM in its own
        # session) still carries this test's unique DAGSTER_HOME.
        stragglers = processes_with_env("DAGSTER_HOME", str(self.home))
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stragglers


def processes_with_env(name: str, value: str) -> list[int]:
    """Live pids (other than ours) whose environment has name=value."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------- observing the queue


@dataclass
class QueueObservation:
    """What polling the run records saw: peaks of in-progress runs, overall and per tag value."""

    tag_key: str
    max_in_progress: int = 0
    max_in_progress_by_tag: Counter = field(default_factory=Counter)
    queued_while_running: bool = False
    samples: int = 0

    def sample(self, records: Iterable) -> None:
        from dagster import DagsterRunStatus

        in_progress: Counter[str] = Counter()
        total = queued = 0
        for record in records:
            run = record.dagster_run
            if run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
                total += 1
                in_progress[run.tags.get(self.tag_key, "<untagged>")] += 1
            elif run.status == DagsterRunStatus.QUEUED:
                queued += 1
        self.samples += 1
        self.max_in_progress = max(self.max_in_progress, total)
        for value, count in in_progress.items():
            self.max_in_progress_by_tag[value] = max(self.max_in_progress_by_tag[value], count)
        if queued and total:
            self.queued_while_running = True
