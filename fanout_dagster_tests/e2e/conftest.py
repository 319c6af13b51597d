"""End-to-end tests: real Dagster processes, browsers and emulators. All slow:
`make test-slow` runs them alone, `make test-fast` leaves them out."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
