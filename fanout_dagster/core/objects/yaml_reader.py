"""YAML as config files need it: a key written twice in one mapping is found.

PyYAML, like most YAML readers, keeps the last of two equal keys in a mapping
and says nothing: an object with `target:` twice silently loads into the
second table. Here every mapping remembers the keys repeated in it (with
their lines), so the loader can refuse the object that holds one and name
file, line and key, while the other objects of the file still load.

Merge keys (`<<: *defaults`) are not repetitions: what a merge brings in may
be overridden by the mapping's own keys, as YAML intends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import yaml

# libyaml's parser (bundled in PyYAML's wheels) reads 10,000 configs about 5x
# faster than the pure-Python one, and the sensor reads them every tick.
# Same safe subset of YAML, same error marks.
_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path = tuple[str | int, ...]


class RepeatedKey(NamedTuple):
    path: Path  # where the mapping is, from the document's root
    key: str
    first_line: int  # 1-based
    line: int  # the repetition's line


class ConfigMapping(dict[Any, Any]):
    """A YAML mapping, with the keys repeated in it (none for most)."""

    __slots__ = ("repeated",)

    def __init__(self) -> None:
        super().__init__()
        self.repeated: tuple[tuple[str, int, int], ...] = ()  # (key, first line, line)


class _Loader(_BASE_LOADER):
    pass


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> Iterator[ConfigMapping]:
    # As SafeConstructor.construct_yaml_map: yield first, so aliases and
    # recursive structures resolve to the same object.
    data = ConfigMapping()
    yield data
    data.repeated = _repeated_keys(loader, node)
    data.update(loader.construct_mapping(node))


def _repeated_keys(loader: Any, node: yaml.MappingNode) -> tuple[tuple[str, int, int], ...]:
    first_lines: dict[Any, int] = {}
    repeated: list[tuple[str, int, int]] = []
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue  # merges may be overridden; complex keys are refused later as non-strings
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            first = first_lines.get(key)
        except TypeError:  # an unhashable key: refused later as a key that is not a string
            continue
        if first is None:
            first_lines[key] = line
        else:
            repeated.append((str(key), first, line))
    return tuple(repeated)


_Loader.add_constructor(_MAP_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """The document in `text`; yaml.YAMLError when it is not valid YAML."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a safe loader)


def repeated_keys(value: Any, path: Path = ()) -> list[RepeatedKey]:
    """Every key repeated in a mapping anywhere inside `value`, in document order."""
    found: list[RepeatedKey] = []
    if isinstance(value, ConfigMapping):
        found.extend(RepeatedKey(path, key, first, line) for key, first, line in value.repeated)
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(repeated_keys(item, (*path, str(key))))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(repeated_keys(item, (*path, index)))
    return found
