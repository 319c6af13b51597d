"""Reading a configs folder: every *.yaml / *.yml file (one object, a list of
objects, or `{defaults, objects}`), each object validated (model.py), every
problem reported with its file and field, so one bad object never hides the
valid objects of its own or other files. Files that did not change since the
last read are not parsed again (the sensor reads every config each tick)."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from fanout_dagster.core.objects.errors import (
    ConfigError,
    Loc,
    format_loc,
    translate,
    type_name,
    unknown_field,
)
from fanout_dagster.core.objects.fields import CronCheck
from fanout_dagster.core.objects.model import Defaults, DefaultsFile, ObjectConfig
from fanout_dagster.core.objects.yaml_reader import RepeatedKey, load_yaml, repeated_keys

_FILE_KEYS = tuple(DefaultsFile.model_fields)


@dataclass(frozen=True)
class ConfigsLoad:
    """Result of reading a configs folder: the valid objects and every error."""

    objects: tuple[ObjectConfig, ...]
    errors: tuple[ConfigError, ...]

    def by_key(self) -> dict[str, ObjectConfig]:
        return {obj.key: obj for obj in self.objects}

    @property
    def invalid_files(self) -> list[str]:
        return sorted({error.file for error in self.errors})


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class _ParsedFile:
    objects: tuple[tuple[str, ObjectConfig], ...]  # (field prefix in the file, object)
    errors: tuple[ConfigError, ...]


class ParseCacheStats(NamedTuple):
    hits: int  # files found unchanged: neither parsed nor validated again
    misses: int  # files parsed and validated
    files: int  # files held


# Parsed files by (path, name shown), each with the (st_mtime_ns, st_size,
# st_ino) it was parsed at. The sensor reads every config each tick; only
# changed files are parsed again. File times tick coarsely (a jiffy, or a
# second or two on some network filesystems), so a file changed twice within
# one tick could keep its time and size: like git's "racily clean" check, a
# file whose time is less than _SETTLE_NS old when it is read is not cached
# (it is read again next time). Bounded (least recently used out); the lock
# keeps a code server's threads from tearing the dict (two threads may parse
# one file at once, harmlessly).
_CACHE_MAX_FILES = 50_000
_SETTLE_NS = 2_000_000_000
# (Keyed by the cron check too: a file checked without it is not valid with it.)
_cache: OrderedDict[tuple[str, str, CronCheck | None], tuple[tuple[int, int, int], _ParsedFile]] = (
    OrderedDict()
)
_cache_lock = threading.Lock()
_cache_counts = {"hits": 0, "misses": 0}


def parse_cache_stats() -> ParseCacheStats:
    with _cache_lock:
        return ParseCacheStats(_cache_counts["hits"], _cache_counts["misses"], len(_cache))


def clear_parse_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _cache_counts.update(hits=0, misses=0)


def load_objects(
    configs_dir: str | Path,
    known_clusters: Collection[str] | None = None,
    cron_check: CronCheck | None = None,
) -> ConfigsLoad:
    """Read every *.yaml / *.yml file under configs_dir (sorted, recursive).

    With known_clusters, an object whose cluster is not among them is an error.
    With cron_check, a `schedule` must pass it too (beyond its shape): the
    Dagster side passes Dagster's own check.
    """
    root = Path(configs_dir)
    if not root.is_dir():
        return ConfigsLoad((), (ConfigError(str(root), "", "configs folder does not exist"),))
    candidates: list[ObjectConfig] = []
    errors: list[ConfigError] = []
    for path, name in _config_files(root):
        parsed = _parse_cached(path, name, cron_check)
        errors.extend(parsed.errors)
        for prefix, obj in parsed.objects:
            if known_clusters is not None and obj.cluster not in known_clusters:
                errors.append(
                    ConfigError(
                        name,
                        format_loc(prefix, ("cluster",)),
                        f"{obj.cluster!r} is not defined in clusters.yaml "
                        f"(defined: {', '.join(sorted(known_clusters))})",
                    )
                )
            else:
                candidates.append(obj)
    objects, dup_errors = _reject_duplicates(candidates)
    return ConfigsLoad(tuple(objects), tuple(errors + dup_errors))


def _config_files(root: Path) -> list[tuple[str, str]]:
    """(path, name relative to root) of every config file, in path order.

    Like root.rglob("*") (symlinked folders are not entered, symlinked files
    are read) at a fraction of its cost: directory entries know their type
    without a stat each.
    """
    found: list[tuple[tuple[str, ...], str]] = []
    folders: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while folders:
        folder, parts = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # removed meanwhile, or unreadable: as rglob, skip it
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append((entry.path, (*parts, entry.name)))
            elif os.path.splitext(entry.name)[1] in (".yaml", ".yml") and entry.is_file():
                found.append(((*parts, entry.name), entry.path))
    found.sort()
    return [(path, "/".join(parts)) for parts, path in found]


def _parse_cached(path: str, name: str, cron_check: CronCheck | None) -> _ParsedFile:
    try:
        stat = os.stat(path)
    except OSError:
        # Gone meanwhile: report it, cache nothing.
        return _parse_file(Path(path), name, cron_check)
    now = time.time_ns()
    key, stamp = (path, name, cron_check), (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == stamp:
            _cache.move_to_end(key)
            _cache_counts["hits"] += 1
            return cached[1]
    parsed = _parse_file(Path(path), name, cron_check)
    with _cache_lock:
        _cache_counts["misses"] += 1
        if now - stat.st_mtime_ns >= _SETTLE_NS:
            _cache[key] = (stamp, parsed)
            _cache.move_to_end(key)
            while len(_cache) > _CACHE_MAX_FILES:
                _cache.popitem(last=False)
        else:
            _cache.pop(key, None)
    return parsed


def parse_config_file(
    path: Path, display_name: str | None = None, cron_check: CronCheck | None = None
) -> tuple[list[ObjectConfig], list[ConfigError]]:
    """Parse one file. A file with any invalid object contributes only its valid ones."""
    parsed = _parse_file(path, display_name or path.name, cron_check)
    return [obj for _, obj in parsed.objects], list(parsed.errors)


def _parse_file(path: Path, name: str, cron_check: CronCheck | None) -> _ParsedFile:
    try:
        document = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return _ParsedFile((), (ConfigError(name, where, f"malformed YAML: {problem}"),))
    except (OSError, UnicodeDecodeError) as exc:
        return _ParsedFile((), (ConfigError(name, "", f"cannot read file: {exc}"),))
    return _parse_document(document, name, cron_check)


def _parse_document(document: Any, name: str, cron_check: CronCheck | None) -> _ParsedFile:
    def only(field: str, message: str) -> _ParsedFile:
        return _ParsedFile((), (ConfigError(name, field, message),))

    context = {"cron_check": cron_check}
    errors: list[ConfigError] = []
    defaults: dict[str, Any] = {}
    if document is None:
        return only("", "file is empty: expected an object or a list of objects")
    if isinstance(document, Mapping) and ("objects" in document or "defaults" in document):
        for key in document:
            if key not in _FILE_KEYS:
                errors.append(ConfigError(name, str(key), unknown_field(DefaultsFile)))
        # A key repeated at the top or in the defaults would change every object.
        repeated = repeated_keys({k: v for k, v in document.items() if k != "objects"})
        errors.extend(_repeated_key_error(name, "", r) for r in repeated)
        defaults_ok = not repeated
        raw_defaults = document.get("defaults")
        if raw_defaults is not None and defaults_ok:
            try:
                validated = Defaults.model_validate(raw_defaults, context=context)
                defaults = validated.model_dump(exclude_none=True)
            except ValidationError as exc:
                defaults_ok = False
                errors.extend(
                    ConfigError(name, format_loc("defaults", loc), message)
                    for loc, message in translate(exc.errors(), Defaults)
                )
        items = document.get("objects")
        if "objects" not in document:
            errors.append(ConfigError(name, "objects", "missing required field"))
            return _ParsedFile((), tuple(errors))
        if not isinstance(items, list):
            errors.append(
                ConfigError(name, "objects", f"must be a list of objects, got {type_name(items)}")
            )
            return _ParsedFile((), tuple(errors))
        if not items:
            errors.append(ConfigError(name, "objects", "is an empty list: expected objects"))
            return _ParsedFile((), tuple(errors))
        if not defaults_ok:
            errors.append(
                ConfigError(
                    name,
                    "objects",
                    f"{len(items)} object(s) not loaded until defaults are fixed "
                    "(each would inherit them)",
                )
            )
            return _ParsedFile((), tuple(errors))
        entries = [(f"objects[{i}]", item) for i, item in enumerate(items)]
    elif isinstance(document, Mapping):
        entries = [("", document)]
    elif isinstance(document, list):
        if not document:
            return only("", "file holds an empty list: expected objects")
        entries = [(f"[{i}]", item) for i, item in enumerate(document)]
    else:
        return only(
            "",
            "expected an object (mapping), a list of objects or {defaults, objects}, "
            f"got {type_name(document)}",
        )

    objects: list[tuple[str, ObjectConfig]] = []
    for prefix, entry in entries:
        if not isinstance(entry, Mapping):
            errors.append(
                ConfigError(name, prefix, f"expected an object (mapping), got {type_name(entry)}")
            )
            continue
        repeated = repeated_keys(entry)
        if repeated:
            errors.extend(_repeated_key_error(name, prefix, r) for r in repeated)
            continue
        data = _with_defaults(defaults, entry) if defaults else entry
        try:
            obj = ObjectConfig.model_validate(data, context={**context, "config_file": name})
        except ValidationError as exc:
            inherited = _inherited_expectations(defaults, entry)
            errors.extend(
                _object_error(name, prefix, loc, message, inherited)
                for loc, message in translate(exc.errors(), ObjectConfig)
            )
            continue
        objects.append((prefix, obj))
    return _ParsedFile(tuple(objects), tuple(errors))


def _repeated_key_error(name: str, prefix: str, repeated: RepeatedKey) -> ConfigError:
    return ConfigError(
        name,
        format_loc(prefix, (*repeated.path, repeated.key)),
        f"line {repeated.line}: key {repeated.key!r} is repeated in one mapping (first on "
        f"line {repeated.first_line}); YAML would keep only the last one: remove or merge one",
    )


def _with_defaults(defaults: Mapping[str, Any], entry: Mapping[Any, Any]) -> dict[Any, Any]:
    """The object over the file's defaults, mappings merged key by key; the object wins.

    Source defaults are for files: an object reading source.table does not take them.
    """
    source = entry.get("source")
    if isinstance(source, Mapping) and source.get("table") is not None:
        defaults = {key: value for key, value in defaults.items() if key != "source"}
    merged = _deep_merge(defaults, entry)
    if "expectations" in defaults:
        own = entry.get("expectations")
        own = own if isinstance(own, list) else []
        inherited = _inherited_expectations(defaults, entry)
        merged["expectations"] = own + [defaults["expectations"][i] for i in inherited.values()]
    return merged


def _inherited_expectations(
    defaults: Mapping[str, Any], entry: Mapping[Any, Any]
) -> dict[int, int]:
    """The file's expectations an object takes: those whose name it does not give
    itself, after its own (so its own keep their indexes in messages), as
    {index in the object's expectations: index in the defaults'}."""
    own = entry.get("expectations")
    if "expectations" not in defaults or (own is not None and not isinstance(own, list)):
        return {}
    own = own or []
    names = {item.get("name") for item in own if isinstance(item, Mapping)}
    kept = [i for i, item in enumerate(defaults["expectations"]) if item["name"] not in names]
    return {len(own) + n: i for n, i in enumerate(kept)}


def _object_error(
    name: str, prefix: str, loc: Loc, message: str, inherited: Mapping[int, int]
) -> ConfigError:
    """An object's error, placed on the file's defaults when it is about an
    expectation the object took from them."""
    if len(loc) > 1 and loc[0] == "expectations" and loc[1] in inherited:
        where = format_loc("defaults", ("expectations", inherited[int(loc[1])], *loc[2:]))
        return ConfigError(name, where, f"{message} (in {prefix or 'the object'})")
    return ConfigError(name, format_loc(prefix, loc), message)


def _deep_merge(base: Mapping[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def _reject_duplicates(
    candidates: list[ObjectConfig],
) -> tuple[list[ObjectConfig], list[ConfigError]]:
    """Partition keys and tables (bronze and quarantine) must be unique across all files.

    Every object in a clash is rejected (not just the second one), because
    which file "wins" would otherwise depend on file-name order.
    """
    errors: list[ConfigError] = []
    rejected: set[int] = set()
    # The tables an object writes: its bronze table, and its quarantine table.
    attributes: tuple[tuple[Callable[[ObjectConfig], list[str]], str], ...] = (
        (lambda o: [o.key], "partition key"),
        (lambda o: [o.target.table, *filter(None, [o.quarantine_table])], "table"),
    )
    for attr, label in attributes:
        seen: dict[str, list[int]] = {}
        for index, obj in enumerate(candidates):
            for value in attr(obj):
                seen.setdefault(value, []).append(index)
        for value, indexes in seen.items():
            if len(indexes) < 2:
                continue
            files = [candidates[i].config_file for i in indexes]
            for i in indexes:
                others = ", ".join(f for j, f in zip(indexes, files, strict=True) if j != i)
                errors.append(
                    ConfigError(
                        candidates[i].config_file,
                        f"{candidates[i].key}",
                        f"duplicate {label} {value!r}: also declared in {others}",
                    )
                )
                rejected.add(i)
    kept = [obj for i, obj in enumerate(candidates) if i not in rejected]
    return kept, errors
