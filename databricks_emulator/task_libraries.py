"""The Python libraries a task sees: its runtime's and the ones its run names, nothing else.

A Databricks task imports the libraries of its compute: what the runtime (or the serverless
environment version) ships, plus what the run installs -- the task's ``libraries`` on a cluster,
the environment's ``dependencies`` on serverless -- with their dependencies, as pip installs
them. The emulator runs tasks on the server's own interpreter, whose virtualenv holds everything
the developer installed (Dagster, the SDK, test tools...). So each task gets a *site folder* of
its own instead of the virtualenv's site-packages: symlinks to the installed files of the
allowed distributions and of what they require, built once per set of distributions under
``<root>/task-env/site/<hash>`` and shared by every task (and Spark Python worker) with that set.

* The runtime here is :data:`RUNTIME_LIBRARIES`: pyspark with what it needs on either kind of
  compute (py4j; pandas, pyarrow, grpcio... for Spark Connect) and Delta Lake's Python API.
  Nothing else: code that needs more names it, as it must on a workspace whose runtime lacks it.
* A named library comes from the server's environment at its installed version: the emulator
  installs nothing from PyPI. One it does not have, or has at a version the requirement
  excludes, is reported on the task's stderr (:attr:`TaskLibraries.notes`); the task runs
  without it (or with the installed version).
* Editable installs are working trees, never libraries: they are not provided.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packaging.requirements import Requirement

# What every task has besides the standard library, as a Databricks Runtime has it preinstalled:
# PySpark (with what Spark Connect needs) and Delta Lake's Python API (`delta`).
RUNTIME_LIBRARIES: tuple[str, ...] = ("pyspark[connect]", "delta-spark")


@dataclass
class TaskLibraries:
    """The distributions a task may import, and what could not be provided."""

    distributions: dict[str, metadata.Distribution] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def key(self) -> str:
        """Identifies the set (names and versions) for the site folder cache."""
        text = "\n".join(
            f"{name}=={dist.version}@{dist.locate_file('')}"
            for name, dist in sorted(self.distributions.items())
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def requirements_of(libraries: Iterable[Any], dependencies: Iterable[Any] = ()) -> list[str]:
    """PyPI requirement strings from a task's ``libraries`` (``{"pypi": {"package": ...}}``)
    and a serverless environment's ``dependencies`` (pip requirement lines; wheel paths are
    the task's own uploads and handled apart)."""
    found: list[str] = []
    for library in libraries:
        if isinstance(library, dict) and isinstance(library.get("pypi"), dict):
            package = library["pypi"].get("package")
            if isinstance(package, str):
                found.append(package)
    for line in dependencies:
        if isinstance(line, str) and not line.strip().endswith(".whl"):
            found.append(line.strip())
    return found


def _editable(dist: metadata.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def _installed(name: str) -> metadata.Distribution | None:
    """The distribution installed in the interpreter's site-packages (not a working tree
    that happens to be on the server's path, nor an editable install)."""
    found = metadata.distributions(name=name, path=site.getsitepackages())
    dist = next(iter(found), None)
    return None if dist is None or _editable(dist) else dist


def resolve(requirements: Iterable[str]) -> TaskLibraries:
    """The distributions the requirements name, with everything they require (markers and
    extras evaluated as pip would), from the server's environment."""
    # Imported here: task processes import this package too, and have no `packaging`.
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    result = TaskLibraries()
    pending: list[tuple[Requirement, str]] = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            result.notes.append(f"{line!r} is not a pip requirement: not installed")
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            pending.append((requirement, line))
    extras_done: dict[str, set[str]] = {}
    while pending:
        requirement, asked_by = pending.pop()
        name = canonicalize_name(requirement.name)
        dist = result.distributions.get(name) or _installed(name)
        if dist is None:
            result.notes.append(
                f"{requirement} ({asked_by}): not installed in the emulator's environment, "
                "so not on this task's path (the emulator installs nothing from PyPI)"
            )
            continue
        if requirement.specifier and not requirement.specifier.contains(
            dist.version, prereleases=True
        ):
            result.notes.append(
                f"{requirement} ({asked_by}): the emulator has {dist.version} only; using it"
            )
        done = extras_done.setdefault(name, set())
        new_extras = ({""} | set(requirement.extras)) - done  # "": the base requirements
        if not new_extras:
            continue
        result.distributions[name] = dist
        done |= new_extras
        for line in dist.requires or []:
            dependency = Requirement(line)
            wanted = (
                "" in new_extras
                if dependency.marker is None
                else any(dependency.marker.evaluate({"extra": e}) for e in new_extras)
            )
            if wanted:
                pending.append((dependency, dist.metadata["Name"]))
    return result


class SiteFolders:
    """Site folders of symlinks, one per set of distributions, built on first use."""

    def __init__(self, root: Path, runtime: Sequence[str] = RUNTIME_LIBRARIES) -> None:
        self.root = root
        self.runtime = list(runtime)
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, ...], TaskLibraries] = {}

    def for_task(self, requirements: Sequence[str]) -> tuple[Path, list[str]]:
        """(site folder, notes) of a task whose run names these requirements."""
        key = tuple(sorted({*self.runtime, *requirements}))
        with self._lock:
            libraries = self._resolved.get(key)
            if libraries is None:
                libraries = self._resolved[key] = resolve(key)
            return self._folder(libraries), list(libraries.notes)

    def _folder(self, libraries: TaskLibraries) -> Path:
        target = self.root / libraries.key()
        if not target.is_dir():
            building = self.root / f".{target.name}.building"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            for dist in libraries.distributions.values():
                link_distribution(dist, building)
            os.replace(building, target)
        return target


def link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Symlink what ``dist`` installed into ``site``: whole regular packages, modules and
    metadata folders; namespace folders (``google/``) become real folders holding the
    distribution's own parts, so two distributions can share them."""
    base = Path(str(dist.locate_file("")))
    for file in dist.files or []:
        parts = Path(str(file)).parts
        # Scripts and data outside site-packages (".."), caches, and path files: a .pth could
        # put other folders (a working tree) back on the task's path.
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        _link_first_package(base, site, parts)


def _link_first_package(base: Path, site: Path, parts: tuple[str, ...]) -> None:
    for depth in range(1, len(parts) + 1):
        relative = Path(*parts[:depth])
        source, link = base / relative, site / relative
        namespace = (
            depth < len(parts)
            and source.is_dir()
            and not source.name.endswith((".dist-info", ".egg-info", ".libs", ".data"))
            and not (source / "__init__.py").exists()
        )
        if namespace:
            if link.is_symlink():
                return  # already linked whole by another file of the same package
            link.mkdir(exist_ok=True)
            continue
        if not link.exists() and not link.is_symlink() and source.exists():
            link.symlink_to(source)
        return
