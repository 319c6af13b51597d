"""What the object sensor remembers about each object, outside its cursor.

One entry per object in the Dagster instance's key-value store (the `kvs`
table of the run storage, `fanout_dagster/object/<partition key>`): the config
hash it settled on and that hash's generation, the config file it was last
seen in, the last cron tick handled, the fingerprint of its watched files, the
config hash a run last loaded, and the table its placement records name. A tick reads every entry in one query and
writes only the entries that changed; the entries of removed objects are
deleted. The sensor's cursor holds only a tick number and an event-log
watermark, so it stays a few dozen bytes whatever the number of objects.

The cursor and the entries stay consistent the way the cursor alone was: the
daemon stores a tick's cursor only once the tick's runs are reserved, so an
entry records the tick that wrote it and the value it replaced. An entry
written by a tick whose cursor was never stored (the daemon died before
reserving the runs, or the tick failed) reads as the value it replaced; that
tick's work is redone, with the same run keys, by the next one.

Tick numbers never go back, also when the cursor does (cleared with `dagster
sensor cursor --delete` or set by hand): the store keeps the highest tick that
wrote an entry, and a cursor behind it is read as if it stood just before that
tick, whose work is then redone as above. The sensor's run keys count on it
(orchestration/sensor.py: a new object's generation starts at the tick number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dagster import DagsterInstance

KV_PREFIX = "fanout_dagster/object/"
# The highest tick that wrote entries (outside KV_PREFIX: not an object).
TICK_KEY = "fanout_dagster/sensor/tick"
# Rows per statement: a few hundred keys keep every statement small (SQLite
# allows 32766 parameters; the update path builds one CASE branch per key).
_WRITE_CHUNK = 500
_READ_CHUNK = 20_000
# What an entry reads as when Dagster's storage cannot delete it (see delete).
_TOMBSTONE = ""


@dataclass(frozen=True)
class ObjectState:
    """The sensor's memory of one object."""

    # The config hash the object is settled on: the one the sensor last
    # requested a run for, or the one a run created after that request loaded.
    config_hash: str
    # How many times the config changed (run keys use it: A -> B -> A runs again).
    generation: int
    config_file: str = ""
    # Run storage id high-water mark when the sensor last requested a run for
    # the object: a run with a higher id was created after the request.
    requested_after_run: int = 0
    # The config hash the object's last successful load used (its materialization).
    loaded_hash: str | None = None
    # Epoch seconds of the last cron tick handled (objects with a schedule).
    schedule_tick: int | None = None
    # Fingerprint of the watched files the last run was requested for.
    files: str | None = None
    # The bronze table the object's placement records name (placement.py), so
    # that records made before tables were recorded are completed once.
    table: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {_SHORT[name]: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectState:
        return cls(**{_LONG[k]: v for k, v in data.items() if k in _LONG})

    def updated(self, **changes: Any) -> ObjectState:
        return replace(self, **changes)


# Entries are stored with one-letter names: 10,000 of them are read every tick.
_SHORT = {
    "config_hash": "h",
    "generation": "g",
    "config_file": "f",
    "requested_after_run": "r",
    "loaded_hash": "l",
    "schedule_tick": "s",
    "files": "w",
    "table": "b",
}
_LONG = {short: name for name, short in _SHORT.items()}


@dataclass(frozen=True)
class SensorCursor:
    """The sensor's cursor: the last committed tick and an event-log watermark."""

    tick: int = 0
    # Storage id of the last bronze materialization the sensor has read.
    events: int | None = None
    # Entries of a cursor of the first format ({key: [hash, generation]}),
    # moved into the store by the next tick.
    legacy: dict[str, ObjectState] = field(default_factory=dict)

    VERSION = 2

    @classmethod
    def parse(cls, text: str | None) -> SensorCursor:
        if not text:
            return cls()
        data = json.loads(text)
        if data.get("v") == cls.VERSION:
            return cls(tick=int(data.get("tick", 0)), events=data.get("events"))
        # The first format: every object's [config hash, generation].
        legacy = {
            key: ObjectState(config_hash=value[0], generation=int(value[1]))
            for key, value in data.items()
        }
        # Ticks from here on are numbered above every generation it holds, as
        # ticks of this format are (a generation grows by at most one a tick).
        return cls(tick=max((s.generation for s in legacy.values()), default=0), legacy=legacy)

    def serialize(self) -> str:
        return json.dumps(
            {"v": self.VERSION, "tick": self.tick, "events": self.events}, separators=(",", ":")
        )


class ObjectStateStore:
    """Per-object entries in the instance's key-value store, with tick-level commits."""

    def __init__(self, instance: DagsterInstance):
        self._instance = instance
        self._storage = instance.run_storage
        self._present: set[str] = set()  # keys with a row (entries and tombstones)
        self._tombstones: set[str] = set()
        self._raw: dict[str, dict[str, Any]] = {}
        self._highest_tick = 0
        # The last tick whose writes count (see read).
        self.committed_tick = 0

    def read(self, keys: Iterable[str], cursor_tick: int) -> dict[str, ObjectState]:
        """The committed state of every object with an entry, for a cursor at `cursor_tick`.

        On SQL run storage, one range query over the entries' key prefix: every
        entry, whatever the keys asked for (an object whose partition was
        deleted still has its entry read, and pruned). Elsewhere, the entries
        of `keys`, 20,000 a query.

        Sets `committed_tick`: the cursor's tick, or, for a cursor behind the
        highest tick that wrote (it was cleared or set back), the tick before
        that one, so that the next tick number is one no tick used for other work.
        """
        stored = self._storage.get_cursor_values({TICK_KEY}).get(TICK_KEY)
        self._highest_tick = int(stored) if stored else 0
        committed_tick = max(cursor_tick, self._highest_tick - 1)
        self.committed_tick = committed_tick
        rows = read_kv_prefix(self._instance, KV_PREFIX)
        if rows is None:
            names = [KV_PREFIX + key for key in keys]
            rows = {}
            for start in range(0, len(names), _READ_CHUNK):
                chunk = set(names[start : start + _READ_CHUNK])
                rows.update(self._storage.get_cursor_values(chunk))
        states: dict[str, ObjectState] = {}
        for name, text in rows.items():
            key = name[len(KV_PREFIX) :]
            self._present.add(key)
            if text == _TOMBSTONE:
                self._tombstones.add(key)
                continue
            entry = json.loads(text)
            self._raw[key] = entry
            if int(entry.get("t", 0)) > committed_tick:
                # Written by a tick whose cursor was never stored: its previous value.
                entry = entry.get("p")
            if entry:
                states[key] = ObjectState.from_json(entry)
        return states

    def orphans(self, states: Mapping[str, ObjectState]) -> list[str]:
        """Keys read with a row but no committed state (a new object's uncommitted entry)."""
        return sorted(self._present - self._tombstones - set(states))

    def write(
        self,
        changed: Mapping[str, ObjectState],
        previous: Mapping[str, ObjectState],
        tick: int,
    ) -> None:
        """Store these objects' new state as written by `tick` (committed with its cursor).

        Each entry keeps the committed value it replaces, which it reads as until
        the tick's cursor is stored.
        """
        pairs: dict[str, str] = {}
        for key, state in changed.items():
            raw = self._raw.get(key)
            if raw is not None and int(raw.get("t", 0)) == tick:
                # Rewritten by the same (redone) tick: keep the committed value it replaced.
                before = raw.get("p")
            else:
                before = previous[key].to_json() if key in previous else None
            pairs[KV_PREFIX + key] = json.dumps(
                {**state.to_json(), "t": tick, "p": before}, separators=(",", ":")
            )
        set_kv(self._instance, pairs, {KV_PREFIX + key for key in self._present})
        self._present.update(changed)
        if tick > self._highest_tick:
            existing = {TICK_KEY} if self._highest_tick else set()
            set_kv(self._instance, {TICK_KEY: str(tick)}, existing)
            self._highest_tick = tick

    def delete(self, keys: Iterable[str]) -> None:
        names = [KV_PREFIX + key for key in keys]
        delete_kv(self._instance, names)
        self._present.difference_update(name[len(KV_PREFIX) :] for name in names)


# --------------------------------------------------------------------------- the kvs table


def set_kv(instance: DagsterInstance, pairs: Mapping[str, str], existing: set[str]) -> None:
    """Write key-value pairs, `existing` naming the keys that already have a row.

    Dagster's set_cursor_values inserts all pairs in one statement and, when
    that fails because one key exists, updates the existing keys only: the new
    keys of a mixed batch are silently dropped. New and existing keys are
    therefore written in separate batches.
    """
    storage = instance.run_storage
    new = [(k, v) for k, v in pairs.items() if k not in existing]
    old = [(k, v) for k, v in pairs.items() if k in existing]
    for batch in (new, old):
        for start in range(0, len(batch), _WRITE_CHUNK):
            storage.set_cursor_values(dict(batch[start : start + _WRITE_CHUNK]))


def existing_kv_keys(instance: DagsterInstance, keys: Iterable[str]) -> set[str]:
    """Which of these keys have a row (10,000 keys a query)."""
    keys = list(keys)
    found: set[str] = set()
    for start in range(0, len(keys), _READ_CHUNK // 2):
        found.update(
            instance.run_storage.get_cursor_values(set(keys[start : start + _READ_CHUNK // 2]))
        )
    return found


def read_kv_prefix(instance: DagsterInstance, prefix: str) -> dict[str, str] | None:
    """Every key-value row whose key starts with `prefix` (ASCII), in one range query
    on the `kvs` table's unique key index; None where the storage is not SQL."""
    sql_storage = sql_run_storage(instance)
    if sql_storage is None:
        return None
    import sqlalchemy as db
    from dagster._core.storage.runs.schema import KeyValueStoreTable

    table = KeyValueStoreTable
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    query = (
        db.select(table.c.key, table.c.value)
        .where(table.c.key >= prefix)
        .where(table.c.key < upper)
    )
    with sql_storage.connect() as conn:
        return {key: value for key, value in conn.execute(query)}


def delete_kv(instance: DagsterInstance, keys: Iterable[str]) -> None:
    """Delete key-value rows.

    Dagster's storage API has no delete for its key-value store; on SQL run
    storage (SQLite, PostgreSQL, MySQL) the rows are deleted from its `kvs`
    table directly. Any other storage gets an empty value, which reads as no
    entry.
    """
    keys = list(keys)
    if not keys:
        return
    sql_storage = sql_run_storage(instance)
    if sql_storage is None:
        storage = instance.run_storage
        for start in range(0, len(keys), _WRITE_CHUNK):
            chunk = keys[start : start + _WRITE_CHUNK]
            existing = storage.get_cursor_values(set(chunk))
            storage.set_cursor_values(dict.fromkeys(existing, _TOMBSTONE))
        return
    from dagster._core.storage.runs.schema import KeyValueStoreTable

    with sql_storage.connect() as conn:
        for start in range(0, len(keys), _WRITE_CHUNK):
            conn.execute(
                KeyValueStoreTable.delete().where(
                    KeyValueStoreTable.c.key.in_(keys[start : start + _WRITE_CHUNK])
                )
            )


def sql_run_storage(instance: DagsterInstance) -> Any:
    """The instance's run storage if it is SQL (SQLite, PostgreSQL, MySQL), else None."""
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

    storage: Any = instance.run_storage
    for _ in range(3):  # LegacyRunStorage wraps the composite storage's run storage
        if isinstance(storage, SqlRunStorage):
            return storage
        inner = getattr(storage, "_storage", None)
        storage = getattr(inner, "run_storage", inner)
        if storage is None:
            return None
    return None
