"""Work through a pack of objects with a bounded thread pool over one SparkSession.

This is the posts' "threads in one Spark application" method, the cheapest way
to run many small loads: Spark start-up is paid once per pack, and the driver
runs at most `max_threads` loads at a time. Plain Python, no Dagster: the
benchmark's floor mode uses it too.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

# How often an abandoned pack interrupts its running items until they end.
ABANDON_POLL_S = 0.2

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    item: T
    result: R | None
    error: BaseException | None
    traceback: str
    started: float  # time.time() when the item began
    finished: float

    @property
    def ok(self) -> bool:
        return self.error is None


def run_pack(
    items: Sequence[T],
    work: Callable[[T], R],
    max_threads: int,
    on_abandon: Callable[[], None] | None = None,
) -> Generator[Outcome[T, R], None, None]:
    """Run `work` over `items`, at most `max_threads` at once; yield each outcome as it ends.

    An item that raises does not stop the others: its exception is captured in
    its Outcome. Yielding as items finish lets the caller report each object
    while the rest of the pack is still running.

    If the caller stops early (the run was cancelled: an exception or the
    generator closed while items are pending), the items that have not started
    never start, and `on_abandon` is called to stop those that are running (it
    interrupts their Spark operations), again and again until they have ended:
    an item between two Spark operations when interrupted would start the
    next one (its write, say) untouched. This returns once they have ended.
    """
    if not items:
        return
    threads = max(1, min(max_threads, len(items)))

    def timed(item: T) -> Outcome[T, R]:
        started = time.time()
        try:
            result = work(item)
            return Outcome(item, result, None, "", started, time.time())
        except Exception as exc:  # isolate the object; the caller decides what fails
            return Outcome(item, None, exc, traceback.format_exc(), started, time.time())

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pack")
    pending: set[Future[Outcome[T, R]]] = {pool.submit(timed, item) for item in items}
    finished = False
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
        finished = True
    finally:
        if not finished:
            for future in pending:
                future.cancel()  # not started yet: never starts
            if on_abandon is not None:
                running = {future for future in pending if not future.done()}
                while running:
                    on_abandon()
                    _, running = wait(running, timeout=ABANDON_POLL_S)
        pool.shutdown(wait=True, cancel_futures=True)
