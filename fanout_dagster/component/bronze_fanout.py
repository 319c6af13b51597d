"""`fanout_dagster.BronzeFanout`: fanout_dagster as a Dagster Component.

A project adds it with `dg scaffold defs fanout_dagster.BronzeFanout <path>`
and configures it in that folder's `defs.yaml`:

    type: fanout_dagster.BronzeFanout
    attributes:
      configs_dir: configs
      target: databricks
      databricks_launch: pipes
      databricks_volume: "{{ env('BRONZE_VOLUME') }}"

It builds what `build_definitions` (component/build.py) builds: the
partitioned `bronze` asset, its sensor and the target's resources. Each
attribute is the setting of the same name (settings.py, docs/settings.md):
an attribute left out falls back to its `FANOUT_<NAME>` environment variable,
then to the setting's default, so a deployment configured by environment keeps
working and one code path serves both. Relative paths resolve from the
project's root (where its pyproject.toml is).

Bad attributes are refused when the definitions load (`dg check defs`), each
named with its defs.yaml file and line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from dagster import (
    Component,
    ComponentLoadContext,
    Definitions,
    Model,
    Resolvable,
    Scaffolder,
    ScaffoldRequest,
    scaffold_with,
)
from dagster.components.component_scaffolding import scaffold_component
from dagster.components.resolved.context import ResolutionContext
from dagster.components.resolved.errors import ResolutionException
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from fanout_dagster.settings import Settings

COMPONENT_TYPE = "fanout_dagster.BronzeFanout"
# Settings that are paths: relative ones resolve from the project root.
PATH_SETTINGS = ("configs_dir", "data_root", "clusters_file", "spark_warehouse")


def _about(setting: str) -> str:
    """An attribute's description: its setting's, and where it falls back to."""
    default = Settings.model_fields[setting].default
    shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
    return (
        f"{Settings.model_fields[setting].description} Left out: "
        f"${Settings.env_name(setting)}, else {shown if default != '' else 'none'}."
    )


class BronzeFanoutError(ResolutionException):
    """A BronzeFanout attribute (or the FANOUT_* variable it falls back to) is wrong."""


class BronzeFanoutScaffoldParams(BaseModel):
    configs_dir: str = Field(
        "configs", description="Folder of object configs, relative to the project root."
    )


class BronzeFanoutScaffolder(Scaffolder[BronzeFanoutScaffoldParams]):
    """Writes a defs.yaml with every attribute a first deployment sets, explained."""

    @classmethod
    def get_scaffold_params(cls) -> type[BronzeFanoutScaffoldParams]:
        return BronzeFanoutScaffoldParams

    def scaffold(self, request: ScaffoldRequest[BronzeFanoutScaffoldParams]) -> None:
        if request.scaffold_format != "yaml":
            scaffold_component(request)  # Dagster's own component.py
            return
        request.target_path.mkdir(parents=True, exist_ok=True)
        text = scaffold_yaml(request.type_name, request.params.configs_dir)
        (request.target_path / "defs.yaml").write_text(text)


def scaffold_yaml(type_name: str, configs_dir: str) -> str:
    """A first defs.yaml: the attributes a deployment sets first, each explained."""
    return textwrap.dedent(
        f"""\
        # fanout_dagster: one `bronze` asset with a partition per object config,
        # the sensor that adds partitions and runs objects, and their resources.
        # Every attribute is optional: left out, it falls back to the environment
        # variable FANOUT_<NAME> (e.g. FANOUT_OBJECTS_PER_RUN), then to its default.
        # Relative paths resolve from the project root. Values can come from the
        # environment: "{{{{ env('NAME') }}}}". All attributes: fanout_dagster's
        # docs/component.md.
        type: {type_name}

        attributes:
          # Folder of object configs: one YAML file per object or list of objects.
          configs_dir: {configs_dir}
          # Root that the objects' source paths are relative to.
          data_root: data
          # Schema of the bronze tables (`<catalog>.<schema>` in Unity Catalog).
          bronze_schema: bronze
          # Objects a run takes from a backfill or the sensor (1 for large objects),
          # and how many of them load at once on the run's Spark session.
          objects_per_run: 4
          threads_per_run: 4

          # Where bronze steps run: `local` Spark, or `databricks` (then also set
          # data_root and bronze_schema to the workspace's, e.g.
          # /Volumes/main/raw/landing and main.bronze, and the lines below).
          target: local

          # local: `embedded` starts a Spark (with Delta) in each run's process, with
          # nothing else to run; `connect` attaches each run to a warm Spark Connect
          # server instead, seconds faster per run (set spark_connect_url then).
          spark: embedded
          # spark_connect_url: sc://127.0.0.1:15002

          # databricks: Dagster Pipes runs each pack of objects as a job run on the
          # compute clusters_file names (clusters or serverless), staged on a Unity
          # Catalog volume. Credentials are never attributes: databricks-sdk reads
          # DATABRICKS_HOST and DATABRICKS_TOKEN (or DATABRICKS_CONFIG_PROFILE).
          # databricks_launch: pipes
          # databricks_volume: "{{{{ env('BRONZE_STAGING_VOLUME') }}}}"
          # clusters_file: clusters.yaml
        """
    )


@scaffold_with(BronzeFanoutScaffolder)
class BronzeFanout(Component, Resolvable, Model):
    """fanout_dagster: many objects into Bronze Delta tables, one partition per object.

    Builds the partitioned `bronze` asset (a dynamic partition per object
    config), the sensor that adds partitions and requests runs for new,
    changed, scheduled and watched objects, and the resources of the target:
    local Spark (a Spark Connect server, or embedded) or Databricks (the step
    launcher, or Dagster Pipes on clusters or serverless). Attributes left out
    fall back to the FANOUT_* environment, then to the defaults.
    """

    # --- where the objects are
    configs_dir: str | None = Field(None, description=_about("configs_dir"))
    data_root: str | None = Field(None, description=_about("data_root"))
    bronze_schema: str | None = Field(None, description=_about("bronze_schema"))
    # --- packing and the sensor
    objects_per_run: int | None = Field(None, description=_about("objects_per_run"))
    threads_per_run: int | None = Field(None, description=_about("threads_per_run"))
    max_runs_per_tick: int | None = Field(None, description=_about("max_runs_per_tick"))
    # --- the target
    target: Literal["local", "databricks"] | None = Field(None, description=_about("target"))
    # --- local Spark
    spark: Literal["connect", "embedded"] | None = Field(None, description=_about("spark"))
    spark_connect_url: str | None = Field(
        None,
        description="`sc://<host>:<port>` of the Spark Connect server runs attach to (`spark: "
        "connect`). Left out: 127.0.0.1 and $FANOUT_SPARK_CONNECT_PORT, else 15002.",
    )
    spark_master: str | None = Field(None, description=_about("spark_master"))
    spark_warehouse: str | None = Field(None, description=_about("spark_warehouse"))
    # --- Databricks
    databricks_launch: Literal["step_launcher", "pipes"] | None = Field(
        None, description=_about("databricks_launch")
    )
    databricks_volume: str | None = Field(None, description=_about("databricks_volume"))
    clusters_file: str | None = Field(None, description=_about("clusters_file"))
    cluster_libraries: list[str] | None = Field(
        None,
        description="PyPI requirements to attach to each Databricks run. Left out: "
        "$FANOUT_CLUSTER_LIBRARIES (space-separated), else none.",
    )
    install_default_libraries: bool | None = Field(
        None, description=_about("install_default_libraries")
    )
    dbfs_staging: str | None = Field(None, description=_about("dbfs_staging"))
    databricks_poll_s: float | None = Field(None, description=_about("databricks_poll_s"))
    databricks_timeout_s: int | None = Field(None, description=_about("databricks_timeout_s"))
    # --- the code location
    in_process_executor: bool = Field(
        True,
        description="Make the in-process executor the code location's default (a bronze run "
        "is one step: a second Python process per run would only cost start-up). Set false "
        "when the project defines an executor of its own.",
    )

    # Where the attributes were read (defs.yaml, with line numbers), to name
    # a bad one with its file and line when the definitions are built.
    _source: ResolutionContext | None = PrivateAttr(None)

    @classmethod
    def resolve_from_model(cls, context: ResolutionContext, model: BaseModel) -> Any:
        # A value of the wrong type or outside a fixed set, after templating:
        # named with its attribute, file and line rather than pydantic's model name.
        try:
            component = super().resolve_from_model(context, model)
        except ValidationError as exc:
            raise BronzeFanoutError(_attribute_errors(exc, context, given=None)) from None
        component._source = context
        return component

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        from fanout_dagster.component.build import build_definitions

        settings = self.settings(context.project_root, context.defs_module_name)
        return build_definitions(settings, in_process=self.in_process_executor)

    def settings(self, project_root: Path, defs_module: str) -> Settings:
        """The Settings these attributes say, the FANOUT_* environment filling in the
        rest; relative paths resolved from the project root. Raises BronzeFanoutError
        naming each wrong or missing value's attribute (file and line) or variable."""
        where = self._source or ResolutionContext.default().at_path("attributes")
        try:
            given = self.given_settings()
            settings = Settings(**given)
        except AttributeValueError as exc:
            raise BronzeFanoutError(
                f"{COMPONENT_TYPE}: " + _located(where, exc.attribute, str(exc))
            ) from None
        except ValidationError as exc:
            raise BronzeFanoutError(_attribute_errors(exc, where, given=given)) from None
        problems = deployment_problems(settings, defs_module)
        if problems:
            lines = [_located(where, attribute, problem) for attribute, problem in problems]
            raise BronzeFanoutError(f"{COMPONENT_TYPE}: " + "\n".join(lines))
        return with_project_paths(settings, project_root)

    def given_settings(self) -> dict[str, Any]:
        """The settings the attributes set (by setting name)."""
        attributes = self.model_dump(exclude_none=True, exclude={"in_process_executor"})
        given = {name: value for name, value in attributes.items() if name in Settings.model_fields}
        if "cluster_libraries" in attributes:
            given["cluster_libraries"] = " ".join(attributes["cluster_libraries"])
        if "spark_connect_url" in attributes:
            given.update(connect_host_and_port(attributes["spark_connect_url"]))
        return given


class AttributeValueError(ValueError):
    """An attribute's value the component itself checks (not a Settings field's)."""

    def __init__(self, attribute: str, message: str):
        super().__init__(message)
        self.attribute = attribute


def connect_host_and_port(url: str) -> dict[str, Any]:
    """`sc://host:port` -> the spark_connect_host and spark_connect_port settings."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "sc" or not parsed.hostname or port is None or parsed.path.strip("/"):
        raise AttributeValueError(
            "spark_connect_url",
            f"{url!r} is not a Spark Connect address: expected sc://<host>:<port>, e.g. "
            "sc://127.0.0.1:15002",
        )
    return {"spark_connect_host": parsed.hostname, "spark_connect_port": port}


def with_project_paths(settings: Settings, project_root: Path) -> Settings:
    """Relative paths (given, from the environment or default) resolved from
    `project_root`: the project's, wherever fanout_dagster is installed."""
    paths = {
        name: str(project_root / getattr(settings, name))
        for name in PATH_SETTINGS
        if _is_relative_path(getattr(settings, name))
    }
    return settings.model_copy(update=paths)


def _is_relative_path(value: str) -> bool:
    return (
        bool(value)
        and "://" not in value
        and not value.startswith("dbfs:")
        and not (Path(value).is_absolute())
    )


def deployment_problems(settings: Settings, defs_module: str) -> list[tuple[str, str]]:
    """What a target needs and these settings lack: (attribute, message)."""
    if settings.target != "databricks":
        return []
    problems = []
    if "data_root" not in settings.model_fields_set:
        problems.append(
            (
                "data_root",
                "`target: databricks` needs `data_root` (or FANOUT_DATA_ROOT): where the "
                "cluster reads sources, e.g. /Volumes/main/raw/landing",
            )
        )
    if settings.databricks_launch == "pipes" and not settings.databricks_volume:
        problems.append(
            (
                "databricks_volume",
                "`databricks_launch: pipes` needs `databricks_volume` (or "
                "FANOUT_DATABRICKS_VOLUME): a Unity Catalog volume folder for the code bundle "
                "and the Pipes messages, e.g. /Volumes/main/ops/fanout",
            )
        )
    if settings.databricks_launch == "step_launcher" and defs_module.split(".")[0] != (
        "fanout_dagster"
    ):
        # The step launcher pickles the step and has the cluster rebuild the
        # definitions from the code bundle: fanout_dagster and the configs, not
        # this project. Pipes runs only fanout_dagster's loading loop there.
        problems.append(
            (
                "databricks_launch",
                "`databricks_launch: step_launcher` runs only in fanout_dagster's own "
                f"project (the cluster gets fanout_dagster's code, not {defs_module!r}): "
                "use `databricks_launch: pipes`",
            )
        )
    return problems


def _attribute_errors(
    exc: ValidationError, context: ResolutionContext, given: Mapping[str, Any] | None
) -> str:
    """One line per wrong value: the attribute it came from (file and line) or, for a
    value read from the environment, its FANOUT_* variable."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        got = repr(error.get("input"))
        if given is not None and name not in given:
            variable = Settings.env_name(name)
            lines.append(message if variable in message else f"{variable}={got}: {message}")
            continue
        # Settings' own checks name the variable (`FANOUT_X='v' is not...`): the
        # value came from an attribute here.
        message = message.replace(f"{Settings.env_name(name)}=", "")
        shown = message if got in message else f"{message} (got {got})"
        lines.append(_located(context, _attribute_of(name), shown))
    return f"{COMPONENT_TYPE}: " + "\n".join(lines)


def _attribute_of(setting: str) -> str:
    if setting in ("spark_connect_host", "spark_connect_port"):
        return "spark_connect_url"
    return setting


def _located(context: ResolutionContext, attribute: str, message: str) -> str:
    """`attributes.<attribute>` with its file and line when the YAML source is known."""
    where = f"attributes.{attribute}"
    tree = context.source_position_tree
    if tree is not None:
        position = tree.lookup([*context.path, attribute]) or tree.lookup(context.path)
        if position is not None:
            where = f"{position.filename}:{position.start.line} {where}"
    return f"{where}: {message}"
