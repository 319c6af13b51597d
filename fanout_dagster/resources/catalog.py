"""Where objects are declared (configs folder) and where their sources live (data root)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dagster import ConfigurableResource

from fanout_dagster.objects import CatalogLoad, ObjectConfig, load_objects

# configs/ and data/ sit next to the package. Relative paths resolve from here,
# also on a Databricks cluster, where the step launcher unzips the code bundle
# (package + configs) into a temporary folder.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_path(path: str) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str(PROJECT_ROOT / path)


class ObjectCatalog(ConfigurableResource):
    configs_dir: str = "configs"
    data_root: str = "data"

    @classmethod
    def from_env(cls) -> "ObjectCatalog":
        return cls(
            configs_dir=os.environ.get("FANOUT_CONFIGS_DIR", "configs"),
            data_root=os.environ.get("FANOUT_DATA_ROOT", "data"),
        )

    @property
    def configs_path(self) -> str:
        return project_path(self.configs_dir)

    @property
    def data_root_path(self) -> str:
        return project_path(self.data_root)

    def load(self) -> CatalogLoad:
        return load_objects(self.configs_path)

    def lookup(self, keys: Sequence[str]) -> tuple[list[ObjectConfig], list[str]]:
        """The valid configs for these keys, and the keys that have none."""
        by_key = self.load().by_key()
        found = [by_key[key] for key in keys if key in by_key]
        missing = [key for key in keys if key not in by_key]
        return found, missing
