"""The object configs resource: where objects are declared (the configs folder)
and where their sources live (the data root)."""

from __future__ import annotations

from collections.abc import Sequence

from dagster import ConfigurableResource
from dagster._utils.schedules import is_valid_cron_string

from fanout_dagster.core.objects import ConfigsLoad, ObjectConfig, load_objects
from fanout_dagster.settings import Settings, project_path


class ObjectConfigs(ConfigurableResource):
    configs_dir: str = "configs"
    data_root: str = "data"
    # The clusters an object may name (clusters.yaml on the databricks target);
    # None: any. An object naming another cluster is a config error.
    known_clusters: list[str] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, known_clusters: Sequence[str] | None = None
    ) -> ObjectConfigs:
        return cls(
            configs_dir=settings.configs_dir,
            data_root=settings.data_root,
            known_clusters=None if known_clusters is None else list(known_clusters),
        )

    @property
    def configs_path(self) -> str:
        return project_path(self.configs_dir)

    @property
    def data_root_path(self) -> str:
        return project_path(self.data_root)

    def load(self) -> ConfigsLoad:
        # Schedules checked by Dagster's own cron check: what validates here is
        # what its schedules accept.
        return load_objects(
            self.configs_path, known_clusters=self.known_clusters, cron_check=is_valid_cron_string
        )

    def lookup(self, keys: Sequence[str]) -> tuple[list[ObjectConfig], list[str]]:
        """The valid configs for these keys, and the keys that have none."""
        by_key = self.load().by_key()
        found = [by_key[key] for key in keys if key in by_key]
        missing = [key for key in keys if key not in by_key]
        return found, missing
