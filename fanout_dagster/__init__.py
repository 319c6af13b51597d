"""fanout_dagster: many objects into Bronze Delta tables with Dagster, one partition per object.

`fanout_dagster.BronzeFanout` is the Dagster Component (component/bronze_fanout.py).
It is imported on first use only: the Databricks side of the Pipes launch mode
imports `fanout_dagster.core` on compute that has no Dagster installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanout_dagster.component.bronze_fanout import BronzeFanout

__all__ = ["BronzeFanout"]


def __getattr__(name: str) -> Any:
    if name == "BronzeFanout":
        from fanout_dagster.component.bronze_fanout import BronzeFanout

        return BronzeFanout
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # `dg list components` finds component types by listing the module.
    return sorted({*globals(), *__all__})
