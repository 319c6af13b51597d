"""run_pack: bounded concurrency, every outcome, isolated failures, streaming."""

from __future__ import annotations

import threading
import time

import pytest

from fanout_dagster.core.packing import run_pack


class Gauge:
    """How many work calls run at the same time, and the most that ever did."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def __enter__(self):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def __exit__(self, *exc):
        with self.lock:
            self.active -= 1


@pytest.mark.parametrize("max_threads, items", [(1, 6), (3, 12), (4, 3)])
def test_never_more_than_max_threads_at_once(max_threads, items):
    gauge = Gauge()

    def work(item):
        with gauge:
            time.sleep(0.05)
            return item * 10

    outcomes = list(run_pack(list(range(items)), work, max_threads))
    # Bounded, and actually parallel up to the bound (a serial pack would peak at 1).
    assert gauge.peak == min(max_threads, items)
    assert gauge.active == 0
    assert sorted(o.item for o in outcomes) == list(range(items))
    assert all(o.ok and o.result == o.item * 10 for o in outcomes)


def test_yields_every_outcome_with_timings():
    items = [f"obj{i}" for i in range(10)]
    outcomes = list(run_pack(items, str.upper, 4))
    assert len(outcomes) == len(items)
    assert {o.item: o.result for o in outcomes} == {i: i.upper() for i in items}
    for outcome in outcomes:
        assert outcome.error is None and outcome.traceback == ""
        assert outcome.started <= outcome.finished


def test_empty_pack_yields_nothing():
    assert list(run_pack([], lambda item: item, 4)) == []


def test_zero_threads_still_runs_serially():
    gauge = Gauge()

    def work(item):
        with gauge:
            time.sleep(0.01)
            return item

    results = [o.result for o in run_pack([1, 2, 3], work, 0)]
    assert sorted(r for r in results if r is not None) == [1, 2, 3]
    assert gauge.peak == 1


def failing_work(item):
    if item == 3:
        raise ValueError(f"boom on item {item}")
    return item


def test_an_exception_is_isolated_to_its_item():
    outcomes = {o.item: o for o in run_pack(list(range(6)), failing_work, 2)}
    assert set(outcomes) == set(range(6))
    bad = outcomes[3]
    assert not bad.ok and bad.result is None
    assert isinstance(bad.error, ValueError) and str(bad.error) == "boom on item 3"
    # The traceback is the worker's, pointing at the raising function.
    assert "Traceback" in bad.traceback
    assert "failing_work" in bad.traceback and "boom on item 3" in bad.traceback
    assert all(o.ok and o.result == i for i, o in outcomes.items() if i != 3)


def test_outcomes_are_yielded_as_items_finish():
    """The fast item is handed to the caller while the slow one is still running."""
    release_slow = threading.Event()

    def work(item):
        if item == "slow":
            # Runs until the caller has seen the fast item (or gives up after 10 s).
            released = release_slow.wait(timeout=10)
            return "released" if released else "timed out"
        return "done"

    received = []
    for outcome in run_pack(["slow", "fast"], work, 2):
        received.append((outcome.item, time.time()))
        if outcome.item == "fast":
            release_slow.set()
        else:
            slow = outcome
    assert [item for item, _ in received] == ["fast", "slow"]
    fast_seen_at = received[0][1]
    assert slow.result == "released"
    assert slow.finished >= fast_seen_at


def test_an_abandoned_pack_keeps_interrupting_its_running_items_until_they_end():
    """A cancelled run's object that is between two Spark operations when the
    first interrupt comes must not go on to its write: the interrupt repeats."""
    current: dict[str, threading.Event | None] = {"operation": None}
    in_gap = threading.Event()
    written: list[str] = []

    def operation() -> None:  # a Spark operation: runs until done or interrupted
        interrupted = threading.Event()
        current["operation"] = interrupted
        if interrupted.wait(timeout=3):
            raise RuntimeError("interrupted")
        current["operation"] = None

    def work(item: str) -> str:
        if item == "slow":
            in_gap.set()  # after its read, before its write: no operation running
            time.sleep(0.5)
            operation()  # the write
            written.append(item)
        return item

    def interrupt() -> None:
        running = current["operation"]
        if running is not None:
            running.set()

    pack = run_pack(["quick", "slow"], work, 2, on_abandon=interrupt)
    assert next(pack).item == "quick"
    assert in_gap.wait(timeout=5)
    pack.close()  # the run is cancelled while "slow" is in its gap
    assert written == []
