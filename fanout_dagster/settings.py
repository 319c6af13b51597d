"""Every setting fanout_dagster reads from the environment, declared once.

Each field is an environment variable `FANOUT_<FIELD NAME>` (upper case), typed,
with its default and one line of description. Nothing else in the package reads
`os.environ` for a setting: definitions.py reads `Settings()` and hands the
values to the resources it builds; the run coordinator (in the daemon) and the
remote side of a Databricks step read it the same way.

docs/settings.md is generated from this module (`python -m fanout_dagster.settings
> docs/settings.md`), and a test keeps the two in step, so a setting cannot go
undocumented. Databricks credentials are not settings of this project: they are
read by databricks-sdk from its usual sources (DATABRICKS_HOST / DATABRICKS_TOKEN,
or DATABRICKS_CONFIG_PROFILE), so that they stay out of every file and event.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FANOUT_"
LAUNCH_MODES = ("step_launcher", "pipes")
VOLUME_FOLDER = re.compile(r"^/Volumes/[^/]+/[^/]+/[^/]+(/[^/]+)*/?$")

# configs/, data/ and clusters.yaml sit next to the package. Relative paths
# resolve from here, also on a Databricks cluster, where the code bundle
# (package + configs) is unpacked into a folder of its own.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str) -> str:
    """`path` as an absolute path: relative paths resolve from the project root."""
    if "://" in path or path.startswith("dbfs:") or Path(path).is_absolute():
        return path
    return str(PROJECT_ROOT / path)


class Settings(BaseSettings):
    """fanout_dagster's settings. Field order is the order of the docs table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- deployment
    target: Literal["local", "databricks"] = Field(
        "local", description="Where bronze steps run: `local` Spark, or `databricks`."
    )
    configs_dir: str = Field("configs", description="Folder of object configs (the fan-out list).")
    data_root: str = Field(
        "data",
        description="Root that source paths are relative to (databricks: required, "
        "e.g. `/Volumes/main/raw/landing`).",
    )

    # --- packing and the sensor
    # 4: small objects (seconds of Spark work each, as the samples) share a run's
    # start-up; bench/results: packed runs are cheaper than a run per object.
    objects_per_run: int = Field(
        4,
        ge=1,
        description="Objects per run in backfills and sensor packs (1: a run per object, "
        "for large objects).",
    )
    threads_per_run: int = Field(4, ge=1, description="Objects of a pack that load at once.")
    max_runs_per_tick: int = Field(
        100, ge=1, description="Runs one sensor tick creates at most; the rest follow next tick."
    )
    cluster_limits: dict[str, Annotated[int, Field(ge=0)]] = Field(
        {},
        description='Runs at once per cluster, as JSON (`{"default": 2, "heavy": 1}`): the '
        "limit of each cluster's pool `fanout-cluster-<name>` (docs/operations.md). A cluster "
        "left out takes its `fanout/cluster` limit from dagster.yaml's run queue, else has none.",
    )

    # --- local Spark
    spark: Literal["connect", "embedded"] = Field(
        "connect",
        description="Local Spark: `connect` attaches each run to the local Spark Connect server "
        "(`make dev` starts it); `embedded` starts a Spark in each run's process.",
    )
    spark_connect_host: str = Field(
        "127.0.0.1",
        description="Host of the Spark Connect server runs attach to (`connect`); the local "
        "server `make dev` starts listens on 127.0.0.1.",
    )
    spark_connect_port: int = Field(
        15002, description="Port of the Spark Connect server (the local one listens on it)."
    )
    spark_ui_port: int = Field(4040, description="Port of the local Spark Connect server's UI.")
    # A secret: SecretStr keeps it out of reprs, and no validator here echoes it
    # (pydantic's errors quote the input); local_spark/connect_server.py checks its form.
    spark_connect_token: SecretStr | None = Field(
        None,
        description="Token the local Spark Connect server requires of every client (at least 32 "
        "of `A-Z a-z 0-9 _ - . ~`, e.g. `openssl rand -hex 32`). Unset, the server makes one per "
        "start and hands it to `dagster dev` and to clients of the same user (docs/local-spark.md).",
    )
    spark_state_dir: str = Field(
        ".spark",
        description="Folder of the local Spark Connect server's log and scratch space.",
    )
    spark_driver_memory: str = Field(
        "2g", description="Memory of the local Spark Connect server's JVM."
    )
    spark_master: str = Field(
        "local[2]", description="Master of local Spark (the server's, or the embedded one's)."
    )
    spark_warehouse: str = Field(
        "warehouse",
        description="Local Spark's warehouse folder (`spark.sql.warehouse.dir`): bronze tables "
        "live in `<warehouse>/<schema>.db/<table>`.",
    )

    # --- bronze tables (Delta Lake on every target)
    bronze_schema: str = Field(
        "bronze",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$",
        description="Schema of the bronze tables: `bronze` locally; `<catalog>.<schema>` in a "
        "Unity Catalog workspace (e.g. `main.bronze`).",
    )

    # --- Databricks
    clusters_file: str = Field(
        "clusters.yaml", description="Named Databricks clusters an object's `cluster` picks from."
    )
    dbfs_staging: str = Field(
        "/dagster_staging",
        description="DBFS prefix for the step launcher's code bundle, pickled step and events.",
    )
    cluster_libraries: str = Field(
        "", description="PyPI requirements to attach to each Databricks run, space-separated."
    )
    install_default_libraries: bool = Field(
        False,
        description="Let the step launcher attach dagster, dagster-databricks, dagster-pyspark "
        "and databricks-sdk at this environment's versions.",
    )
    databricks_launch: Literal["step_launcher", "pipes"] = Field(
        "step_launcher",
        description="How a bronze step runs on Databricks: `step_launcher` (dagster-databricks "
        "step launcher, stages on DBFS) or `pipes` (a job run through Dagster Pipes, staged on a "
        "Unity Catalog volume; classic or serverless compute). See docs/databricks.md.",
    )
    databricks_volume: str = Field(
        "",
        description="Pipes mode: Unity Catalog volume folder for the code bundle and the Pipes "
        "context and messages (e.g. `/Volumes/main/ops/fanout`); required with `pipes`.",
    )
    databricks_poll_s: float = Field(
        5.0, gt=0, description="Seconds between polls of a running Databricks run."
    )
    databricks_timeout_s: int = Field(
        3600,
        ge=1,
        description="Seconds a Databricks run may take: sent as the run's `timeout_seconds` "
        "(Databricks stops it, also when the Dagster run worker died) and waited for at most.",
    )
    remote_step: bool = Field(
        False,
        description="Internal: set on the Databricks side of a step, where the step already "
        "runs remotely.",
    )

    @field_validator("databricks_launch", mode="before")
    @classmethod
    def _known_launch_mode(cls, value: object) -> object:
        if value not in LAUNCH_MODES:
            raise ValueError(
                f"{cls.env_name('databricks_launch')}={value!r} is not a launch mode this "
                f"deployment knows: {' or '.join(LAUNCH_MODES)}"
            )
        return value

    @field_validator("databricks_volume", mode="before")
    @classmethod
    def _volume_folder(cls, value: object) -> object:
        if isinstance(value, str) and value and not VOLUME_FOLDER.match(value):
            raise ValueError(
                f"{cls.env_name('databricks_volume')}={value!r} is not a Unity Catalog volume "
                "folder: /Volumes/<catalog>/<schema>/<volume>[/<folder>...]"
            )
        return value.rstrip("/") if isinstance(value, str) else value

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @property
    def spark_connect_url(self) -> str:
        return f"sc://{self.spark_connect_host}:{self.spark_connect_port}"

    @property
    def configs_path(self) -> str:
        return project_path(self.configs_dir)

    @property
    def data_root_path(self) -> str:
        return project_path(self.data_root)

    @property
    def clusters_path(self) -> str:
        return project_path(self.clusters_file)


def on_remote_step() -> bool:
    """`remote_step` alone: whether this process is the Databricks side of a step.

    Read apart from the other settings, so that a wrong one is reported by
    whatever uses it (the component names its attribute or variable).
    """
    value = os.environ.get(Settings.env_name("remote_step"))
    return value is not None and TypeAdapter(bool).validate_python(value)


def settings_table() -> str:
    """The docs table of every setting, generated from `Settings`."""
    lines = [
        "# Settings",
        "",
        "Generated from `fanout_dagster/settings.py` by "
        "`python -m fanout_dagster.settings > docs/settings.md`; a test keeps it current.",
        "Relative paths resolve from the project root.",
        "Most are also attributes of the `fanout_dagster.BronzeFanout` component, named "
        "without the prefix ([component.md](component.md) lists them); an attribute set in "
        "defs.yaml wins over its variable.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        lines.append(
            f"| `{Settings.env_name(name)}` | {shown if default not in ('', None) else '(none)'} "
            f"| {field.description} |"
        )
    lines += [
        "",
        "Databricks credentials are read by databricks-sdk, not by this project: "
        "`DATABRICKS_HOST` and `DATABRICKS_TOKEN`, or `DATABRICKS_CONFIG_PROFILE` naming a "
        "`~/.databrickscfg` profile.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(settings_table())
