"""What two runs must never do at once, as lock names computed from configs.

A bronze run holds one lock per object it loads and one per bronze table it
writes:

- `object/<partition key>`: two runs of one object never run at once;
- `table/<target table>`: two runs that write one table never run at once,
  whatever their keys: an object renamed (a new key, the same table) while its
  old key's run goes on, or objects that swapped tables. Both would otherwise
  write one Delta table at once, and the load of a table's first write would
  clear the folder the other run is writing (tables.py).

The names are computed here and only here; how they are held is the run
queue's business (run_coordinator.py: one hidden run tag per lock, each
limited to one run at a time).

A queue limit must exist for every lock a queued run carries, so the table
locks in use are registered in the instance's key-value store
(`fanout_dagster/lock/<lock name>`, one row per table, kept like the tables
themselves) before any run carrying them is queued: by the sensor when it
requests runs, and by the run coordinator when it tags a run. Object locks
need no registry: every `objects` partition has one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from dagster import DagsterInstance

from fanout_dagster.orchestration.object_state import existing_kv_keys, read_kv_prefix, set_kv

OBJECT_LOCK = "object/"
TABLE_LOCK = "table/"

_REGISTRY_PREFIX = "fanout_dagster/lock/"
# Changes whenever a lock is registered: readers rebuild their list only then.
_REGISTRY_VERSION = "fanout_dagster/locks-version"


def object_lock(key: str) -> str:
    return OBJECT_LOCK + key


def table_lock(table: str) -> str:
    return TABLE_LOCK + table


def run_locks(keys: Iterable[str], tables: Mapping[str, str | None]) -> list[str]:
    """The locks of a run over these objects: each object's, and each table's that is
    known (`tables`: the bronze table of each key, None where unknown)."""
    keys = list(keys)
    tables_written = sorted({table for key in keys if (table := tables.get(key))})
    return [object_lock(key) for key in keys] + [table_lock(table) for table in tables_written]


def register_locks(instance: DagsterInstance, names: Iterable[str]) -> None:
    """Record the table locks among these in the registry (a no-op for those there
    already; object locks need no row)."""
    rows = {_REGISTRY_PREFIX + name for name in names if name.startswith(TABLE_LOCK)}
    if not rows:
        return
    new = sorted(rows - existing_kv_keys(instance, rows))
    if new:
        set_kv(instance, dict.fromkeys(new, ""), existing=set())
        # Dagster's batch write drops the new keys of a batch in which one key
        # exists (another process may just have written it): those go one by one.
        for row in sorted(set(new) - existing_kv_keys(instance, new)):
            set_kv(instance, {row: ""}, existing=set())
        set_kv(
            instance,
            {_REGISTRY_VERSION: uuid.uuid4().hex},
            existing_kv_keys(instance, [_REGISTRY_VERSION]),
        )


def registry_version(instance: DagsterInstance) -> str | None:
    """A value that changes whenever a lock is registered (one indexed row)."""
    return instance.run_storage.get_cursor_values({_REGISTRY_VERSION}).get(_REGISTRY_VERSION)


def registered_locks(instance: DagsterInstance) -> list[str]:
    """Every registered (table) lock, in one range query (SQL run storage only)."""
    rows = read_kv_prefix(instance, _REGISTRY_PREFIX)
    if rows is None:
        raise NotImplementedError(
            "fanout_dagster's lock registry needs SQL run storage (SQLite, PostgreSQL or MySQL)"
        )
    return sorted(name[len(_REGISTRY_PREFIX) :] for name in rows)
