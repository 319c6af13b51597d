"""How the suite runs in parallel (pytest-xdist, `make test`): the order in
which tests are handed to the workers.

`make test` runs the suite in several worker processes (`-n`, `--dist
loadgroup`). Each worker is a pytest process of its own, so the session
fixtures (conftest.py: the Spark Connect server, the PostgreSQL cluster, the
classic Spark session) are started once per worker, each on free ports with
folders under the worker's own basetemp (xdist gives each worker
`<basetemp>/gw<N>`).

The scheduler hands out tests in collection order, a couple at a time per
worker, as workers free up. So the long tests go first: the end-to-end ones
(marked `slow`) sorted by the `duration` hint they carry (seconds on a quiet
2-core machine, `@pytest.mark.duration(300)`), then the rest in their usual
order. A long test started last would otherwise run alone while the other
workers sit idle. The order never changes what a test does: every test sets
up what it needs (each end-to-end test starts its own Dagster processes).

Tests marked `xdist_group(name)` run on one worker, one after the other (e.g.
scenarios that share a deployment).
"""

from __future__ import annotations

import pytest

# What a `slow` test without a duration hint is assumed to take (seconds).
DEFAULT_SLOW_SECONDS = 60.0


def expected_seconds(item: pytest.Item) -> float:
    """The item's duration hint: its `duration` mark, else a guess from `slow`."""
    mark = item.get_closest_marker("duration")
    if mark is not None:
        return float(mark.args[0])
    return DEFAULT_SLOW_SECONDS if item.get_closest_marker("slow") else 0.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "duration(seconds): about how long the test takes on a quiet 2-core machine; "
        "longer tests are handed to the parallel workers first (fanout_dagster_tests/parallel.py)",
    )


# After every other collection hook (e2e/conftest.py adds `slow` there).
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker: a serial run keeps the files' order
    # A stable sort: tests of equal weight keep their order, and every worker
    # computes the same order (xdist requires identical collections).
    items.sort(key=lambda item: -expected_seconds(item))
