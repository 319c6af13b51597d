"""The object config model: an object (source, target, cluster, refresh) and the
file-level defaults, as pydantic models. They are the one definition of a
valid object: they validate the files (loader.py) and generate the JSON Schema
editors use (`python -m fanout_dagster.core.objects --json-schema`)."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from fanout_dagster.core.ddl import DdlError, parse_ddl, to_ddl
from fanout_dagster.core.objects.errors import Loc, unknown_field, validate_reporting
from fanout_dagster.core.objects.expressions import AUDIT_COLUMNS, RESCUED_COLUMN, unknown_columns
from fanout_dagster.core.objects.fields import (
    DEFAULT_CLUSTER,
    EXPECTATION_ACTIONS,
    MAX_IDENT_LEN,
    MAX_RETRIES,
    MAX_TABLE_LEN,
    QUARANTINE_SUFFIX,
    SOURCE_FORMATS,
    TABLE_SOURCE_FORMAT,
    Cron,
    Ddl,
    ExpectationActionField,
    ExpectationName,
    Identifier,
    OnEmptyField,
    Options,
    Retries,
    SchemaEvolutionMode,
    SchemaEvolutionModeField,
    SourceFormatField,
    SourcePath,
    SourceTable,
    SqlExpression,
    TargetTable,
    WriteModeField,
)


def _field_of(value: Any, name: str) -> Any:
    """A field of raw input (a mapping) or of an already built model."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def partition_key(code: str, name: str) -> str:
    # "-" is not allowed inside code or name, so the key splits back unambiguously.
    return f"{code}-{name}"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


_TABLE_SOURCE_CONFLICTS = {
    "format": "format is for files: a table source (source.table) takes no format",
    "path": "path is for files: a table source (source.table) takes no path",
    "schema_hints": "schema_hints are for files (Auto Loader); a table source has its table's schema",
}


def _source_json_schema(schema: dict[str, Any]) -> None:
    # Either files (format and path) or a catalog table, never both.
    schema.pop("required", None)
    for name in ("format", "path"):
        schema["properties"][name].pop("default", None)
    schema["anyOf"] = [
        {
            "title": "files",
            "required": ["format", "path"],
            "properties": {"table": {"type": "null"}},
        },
        {
            "title": "catalog table",
            "required": ["table"],
            "properties": {
                "table": {"type": "string"},
                "watch": {"const": False},
                "options": {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]},
            },
            "not": {"anyOf": [{"required": [name]} for name in _TABLE_SOURCE_CONFLICTS]},
        },
    ]


# `schema` shadows BaseModel.schema(), pydantic v1's deprecated name for
# model_json_schema(); the field is what callers read as `source.schema`.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class SourceSpec(_Model):
        """Where the rows come from: files under the data root, or a catalog table."""

        model_config = ConfigDict(json_schema_extra=_source_json_schema)

        format: SourceFormatField = Field(
            TABLE_SOURCE_FORMAT,
            description="File format: csv, json or parquet. Required for files; not given "
            "with source.table.",
        )
        path: SourcePath = Field(
            "",
            description="Files to read, relative to the data root: a file, a folder (every "
            "file below it) or a glob such as erp/orders/*.csv. No absolute paths, URIs, "
            "'..', backslashes, {a,b} alternatives or '**'. Required for files.",
        )
        options: Options = Field(
            default_factory=dict,
            description="Spark reader options (strings, numbers, booleans), e.g. "
            "{header: true}. Files only.",
        )
        schema: Ddl | None = Field(  # type: ignore[assignment]  # shadows BaseModel.schema()
            None,
            description="Explicit schema as Spark DDL, e.g. 'id INT, amount DECIMAL(10,2), "
            "at TIMESTAMP'. Without it the schema is inferred.",
        )
        schema_hints: Ddl | None = Field(
            None,
            description="Types for some columns of an inferred schema, as Spark DDL "
            "(Auto Loader's cloudFiles.schemaHints), e.g. 'amount DECIMAL(10,2)'. Files "
            "only; not with schema.",
        )
        watch: bool = Field(
            False,
            description="Ingest new or changed files within one sensor interval. Files only.",
        )
        table: SourceTable | None = Field(
            None,
            description="Read a catalog table (spark.table) instead of files: table, "
            "schema.table or catalog.schema.table. Always overwritten.",
        )

        def __init__(self, *args: Any, **data: Any) -> None:
            """Also SourceSpec(format, path, options), as the dataclass it replaces."""
            if args:
                if len(args) > 3:
                    raise TypeError("SourceSpec takes at most format, path, options positionally")
                positional = dict(zip(("format", "path", "options"), args, strict=False))
                if positional.keys() & data.keys():
                    raise TypeError("SourceSpec got a field both positionally and by name")
                data = {**positional, **data}
            super().__init__(**data)

        # Validation must not call this __init__ (pydantic would then validate
        # twice); RootModel marks its own __init__ the same way.
        __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

        @model_validator(mode="wrap")
        @classmethod
        def _source_rules(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
            problems: list[tuple[Loc, str]] = []
            if isinstance(data, Mapping):
                data = dict(data)
                if data.get("table") is not None:
                    for name, message in _TABLE_SOURCE_CONFLICTS.items():
                        if name in data:
                            problems.append(((name,), message))
                            del data[name]
                    if data.get("watch") is True:
                        problems.append((("watch",), "watch needs a file source (format/path)"))
                    if data.get("options") not in (None, {}):
                        problems.append(
                            (
                                ("options",),
                                "reader options are for files: a table source takes none",
                            )
                        )
                        del data["options"]
                else:
                    for name in ("format", "path"):
                        if name not in data:
                            problems.append(((name,), "missing required field"))
                    if data.get("format") == TABLE_SOURCE_FORMAT:
                        problems.append(
                            (
                                ("format",),
                                f"'table' is not one of {', '.join(SOURCE_FORMATS)} "
                                "(read a catalog table with source.table)",
                            )
                        )
                    if data.get("schema") is not None and data.get("schema_hints") is not None:
                        problems.append(
                            (
                                ("schema_hints",),
                                "schema_hints only apply when the schema is inferred: "
                                "give schema or schema_hints, not both",
                            )
                        )
            return validate_reporting(cls, data, handler, problems)

        @property
        def schema_columns(self) -> list[tuple[str, str]] | None:
            """(column, Spark type) of the explicit schema, or None when it is inferred."""
            return None if self.schema is None else _columns(self.schema)

        @property
        def schema_hint_columns(self) -> list[tuple[str, str]]:
            """(column, Spark type) of the schema hints (none: [])."""
            return [] if self.schema_hints is None else _columns(self.schema_hints)


def _target_json_schema(schema: dict[str, Any]) -> None:
    # The default depends on source.schema (the description says how).
    schema["properties"]["schema_evolution_mode"].pop("default", None)


class TargetSpec(_Model):
    """The bronze table the object is loaded into, and how."""

    model_config = ConfigDict(json_schema_extra=_target_json_schema)

    table: TargetTable = Field(
        description="Bronze table name: lower-case letters, digits and '_', starting with "
        f"a letter, at most {MAX_TABLE_LEN} characters. Unique across all configs."
    )
    mode: WriteModeField = Field(
        "overwrite",
        description="overwrite: each load replaces the table. append: each new or changed "
        "source file is added (files only).",
    )
    schema_evolution_mode: SchemaEvolutionModeField = Field(
        "addNewColumns",
        description="What happens when the source gains columns (Auto Loader's names): "
        "addNewColumns, failOnNewColumns, rescue or none. Default: addNewColumns, or none "
        "when source.schema is given.",
    )
    on_empty: OnEmptyField = Field(
        "fail",
        description="fail: a load without rows fails and the table keeps its previous "
        "load. allow: an empty load is written.",
    )


class Expectation(_Model):
    """A data-quality rule every row of a load is checked against (Lakeflow's expectations)."""

    name: ExpectationName = Field(
        description="Names the rule, unique within the object; also the name of its Dagster "
        "asset check on bronze: lower-case letters, digits and '_'."
    )
    expression: SqlExpression = Field(
        description="A Spark SQL condition over the row, e.g. 'amount >= 0' or "
        "\"email RLIKE '^[^@]+@[^@]+$'\". A row passes only when it is true (false and "
        "null break the rule). Columns are the load's columns and the audit columns."
    )
    action: ExpectationActionField = Field(
        "warn",
        description="What a row that breaks the rule does. warn: it is loaded and counted. "
        "drop: it is left out and counted. fail: the object's load fails and commits "
        "nothing. quarantine: it goes to the table <target.table>_quarantine instead, "
        "with the names of the rules it broke.",
    )


def _object_json_schema(schema: dict[str, Any]) -> None:
    schema["properties"].pop("config_file", None)


class ObjectConfig(_Model):
    """One object: a source loaded into one bronze table, a partition of the bronze asset."""

    model_config = ConfigDict(json_schema_extra=_object_json_schema)

    code: Identifier = Field(
        description=f"Source system, e.g. erp: lower-case letters, digits and '_', at most "
        f"{MAX_IDENT_LEN} characters. The partition key is code-name."
    )
    name: Identifier = Field(
        description="Object name within its system, same alphabet as code. The partition "
        "key is code-name, unique across all configs."
    )
    source: SourceSpec = Field(description="Where the rows come from.")
    target: TargetSpec = Field(description="The bronze table they go to.")
    cluster: Identifier = Field(
        DEFAULT_CLUSTER,
        description="Named cluster (clusters.yaml on Databricks) whose runs and limits the "
        "object's runs use.",
    )
    schedule: Cron | None = Field(
        None,
        description="Also refresh on this cron schedule (5 fields, UTC), e.g. '0 6 * * *'.",
    )
    retries: Retries | None = Field(
        None,
        description=f"Dagster run retries for this object's runs, 0 to {MAX_RETRIES}. "
        "Default: the deployment's.",
    )
    expectations: list[Expectation] = Field(
        default_factory=list,
        description="Data-quality rules each row is checked against while it loads, each "
        "one a Dagster asset check on bronze (" + ", ".join(EXPECTATION_ACTIONS) + ").",
    )
    # Where the object was declared (for messages); set by the loader, not by files.
    config_file: SkipJsonSchema[str] = Field("", description="The file it was declared in.")

    @model_validator(mode="wrap")
    @classmethod
    def _object_rules(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        problems: list[tuple[Loc, str]] = []
        if isinstance(data, Mapping):
            data = dict(data)
            context = info.context or {}
            if "config_file" in context:
                if "config_file" in data:
                    problems.append((("config_file",), unknown_field(ObjectConfig)))
                data["config_file"] = context["config_file"]
            source, target = data.get("source"), data.get("target")
            has_schema = _field_of(source, "schema") is not None
            # The effective default: addNewColumns, or none with an explicit schema.
            if isinstance(target, Mapping) and "schema_evolution_mode" not in target:
                data["target"] = {**target, "schema_evolution_mode": _default_evolution(source)}
            elif (
                isinstance(target, TargetSpec)
                and "schema_evolution_mode" not in target.model_fields_set
            ):
                data["target"] = target.model_copy(
                    update={"schema_evolution_mode": _default_evolution(source)}
                )
            target = data.get("target")
            if has_schema and _field_of(target, "schema_evolution_mode") == "addNewColumns":
                problems.append(
                    (
                        ("target", "schema_evolution_mode"),
                        "addNewColumns needs an inferred schema: with source.schema use "
                        "failOnNewColumns, rescue or none (or give source.schema_hints instead "
                        "of source.schema)",
                    )
                )
            if _field_of(source, "table") is not None and _field_of(target, "mode") == "append":
                problems.append(
                    (("target", "mode"), "append ingests files; a table source is overwritten")
                )
            problems += _expectation_problems(data.get("expectations"), source, target)
        return validate_reporting(cls, data, handler, problems)

    @property
    def quarantine_table(self) -> str | None:
        """The table rows of `quarantine` expectations go to (None: the object has none)."""
        if any(e.action == "quarantine" for e in self.expectations):
            return self.target.table + QUARANTINE_SUFFIX
        return None

    @property
    def key(self) -> str:
        """The partition key: object identity, stable while code and name are."""
        return partition_key(self.code, self.name)

    @property
    def config_hash(self) -> str:
        """Content hash of what the object does (not where or how it is written down).

        The sensor requests a run when this changes, so moving an object to
        another file or reformatting the YAML never re-runs it. Fields added
        after the first release count only when they differ from their
        default, so the objects that do not use them keep their hash.
        """
        source, target = self.source, self.target
        payload: dict[str, Any] = {
            "code": self.code,
            "name": self.name,
            "source": {
                "format": source.format,
                "path": source.path,
                "options": dict(sorted(source.options.items())),
            },
            "target": {"table": target.table, "mode": target.mode},
            "cluster": self.cluster,
        }
        added_source = {
            "table": source.table,
            "schema": _canonical_ddl(source.schema),
            "schema_hints": _canonical_ddl(source.schema_hints),
            "watch": source.watch or None,
        }
        payload["source"].update({k: v for k, v in added_source.items() if v is not None})
        if target.schema_evolution_mode != _default_evolution(source):
            payload["target"]["schema_evolution_mode"] = target.schema_evolution_mode
        if target.on_empty != "fail":
            payload["target"]["on_empty"] = target.on_empty
        if self.schedule is not None:
            payload["schedule"] = self.schedule
        if self.retries is not None:
            payload["retries"] = self.retries
        if self.expectations:
            # Their order changes nothing a load does.
            payload["expectations"] = sorted(
                (e.model_dump() for e in self.expectations), key=lambda e: e["name"]
            )
        return _content_hash(payload)

    @property
    def source_hash(self) -> str:
        """Hash of what defines which rows are read: format, path, options, the
        schema's and schema hints' column names and types, table. An append table
        starts over when it changes; a comment or NOT NULL edit changes no row
        (file readers make every column nullable), so it changes nothing here."""
        return self._source_hash(_data_shape)

    @property
    def accepted_source_hashes(self) -> frozenset[str]:
        """The source hashes rows loaded under this same source may carry: today's,
        and the form before comments and NOT NULL were left out (rows loaded by
        an earlier release must not trigger a reload of an append table)."""
        return frozenset((self.source_hash, self._source_hash(_canonical_ddl)))

    def _source_hash(self, schema_text: Callable[[str | None], str | None]) -> str:
        source = self.source
        return _content_hash(
            {
                "format": source.format,
                "path": source.path,
                "options": dict(sorted(source.options.items())),
                "schema": schema_text(source.schema),
                "schema_hints": schema_text(source.schema_hints),
                "table": source.table,
            }
        )


def _expectation_problems(expectations: Any, source: Any, target: Any) -> list[tuple[Loc, str]]:
    """Names unique; the quarantine table's name not too long; with an explicit
    schema, every column an expression names is one the load has."""
    if not isinstance(expectations, list):
        return []
    problems: list[tuple[Loc, str]] = []
    first_of: dict[Any, int] = {}
    known = _known_columns(source, target)
    for index, expectation in enumerate(expectations):
        name = _field_of(expectation, "name")
        if isinstance(name, str) and name in first_of:
            problems.append(
                (
                    ("expectations", index, "name"),
                    f"{name!r} is declared twice (also expectations[{first_of[name]}])",
                )
            )
        first_of.setdefault(name, index)
        expression = _field_of(expectation, "expression")
        if known is not None and isinstance(expression, str):
            declared, every = known
            unknown = unknown_columns(expression, every)
            if unknown:
                problems.append(
                    (
                        ("expectations", index, "expression"),
                        f"{expression!r} names column(s) {', '.join(unknown)} that the load "
                        f"cannot have: source.schema has {', '.join(declared)}; the audit "
                        f"columns are {', '.join(AUDIT_COLUMNS)}",
                    )
                )
    quarantines = any(_field_of(e, "action") == "quarantine" for e in expectations)
    table = _field_of(target, "table")
    if quarantines and isinstance(table, str) and len(table + QUARANTINE_SUFFIX) > MAX_TABLE_LEN:
        problems.append(
            (
                ("target", "table"),
                f"is too long for a quarantine table beside it ({table}{QUARANTINE_SUFFIX}, "
                f"at most {MAX_TABLE_LEN} characters)",
            )
        )
    return problems


def _known_columns(source: Any, target: Any) -> tuple[list[str], set[str]] | None:
    """(the schema's columns, every column a load has) when they are known (an
    explicit schema that parses), else None."""
    schema = _field_of(source, "schema")
    if not isinstance(schema, str) or _field_of(source, "table") is not None:
        return None
    try:
        declared = [column.name for column in parse_ddl(schema)]
    except DdlError:
        return None  # reported on source.schema
    every = {*declared, *AUDIT_COLUMNS}
    if _field_of(target, "schema_evolution_mode") == "rescue":
        every.add(RESCUED_COLUMN)
    return declared, every


def _default_evolution(source: Any) -> SchemaEvolutionMode:
    return "none" if _field_of(source, "schema") is not None else "addNewColumns"


def _content_hash(payload: Mapping[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=65536)
def _canonical_ddl(text: str | None) -> str | None:
    # Same columns and types, same text: reformatting a schema changes no hash.
    # Cached: the sensor hashes every object on every tick.
    return None if text is None else to_ddl(parse_ddl(text))


@lru_cache(maxsize=65536)
def _data_shape(text: str | None) -> str | None:
    # Column names and types only: what decides the rows a reader returns.
    return None if text is None else to_ddl(parse_ddl(text, metadata=False))


def _columns(text: str) -> list[tuple[str, str]]:
    return [(column.name, column.type) for column in parse_ddl(text)]


# --------------------------------------------------------------------------- file-level defaults


class SourceDefaults(_Model):
    """Defaults for file sources; objects reading source.table do not take them."""

    options: Options | None = Field(
        None, description="Reader options, merged key by key under the object's own."
    )
    watch: bool | None = Field(None, description="Default for source.watch.")


class TargetDefaults(_Model):
    """Defaults for the objects' targets."""

    mode: WriteModeField | None = Field(None, description="Default for target.mode.")
    schema_evolution_mode: SchemaEvolutionModeField | None = Field(
        None, description="Default for target.schema_evolution_mode."
    )
    on_empty: OnEmptyField | None = Field(None, description="Default for target.on_empty.")


class Defaults(_Model):
    """Values merged under every object of the file; an object's own value wins."""

    cluster: Identifier | None = Field(None, description="Default for cluster.")
    schedule: Cron | None = Field(None, description="Default for schedule (cron, 5 fields, UTC).")
    retries: Retries | None = Field(None, description="Default for retries.")
    source: SourceDefaults | None = Field(None, description="Defaults for file sources.")
    target: TargetDefaults | None = Field(None, description="Defaults for targets.")
    expectations: list[Expectation] | None = Field(
        None,
        description="Expectations of every object of the file; an object's own expectation "
        "of the same name replaces one of these, its others are added.",
    )


class DefaultsFile(_Model):
    """A file of objects sharing defaults."""

    defaults: Defaults | None = Field(
        None, description="Merged under every object of `objects`; an object's own value wins."
    )
    objects: list[ObjectConfig] = Field(min_length=1, description="The objects.")


_FILE_KEYS = tuple(DefaultsFile.model_fields)

# A config file: one object, a list of objects, or {defaults, objects}.
ConfigFile = ObjectConfig | Annotated[list[ObjectConfig], Field(min_length=1)] | DefaultsFile


def config_file_json_schema() -> dict[str, Any]:
    """JSON Schema of one config file, for editors (configs/object-config.schema.json)."""
    schema = TypeAdapter(ConfigFile).json_schema()
    schema.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fanout_dagster object config file",
        "description": "One object, a list of objects, or {defaults, objects}: see "
        "docs/configs.md. Generated by `python -m fanout_dagster.core.objects --json-schema`.",
        **schema,
    }
