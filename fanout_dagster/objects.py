"""Object configs: the fan-out list.

Each YAML file in the configs folder holds one object (a mapping), a list of
objects, or `{defaults: {...}, objects: [...]}` (defaults merged under each
object; docs/configs.md lists every field). The pydantic models below are the
one definition of a valid object: they validate the files, and they generate
the JSON Schema editors use (`python -m fanout_dagster.objects --json-schema`).
Every problem is reported with its file and field, in the form
`erp.yaml: [3].source.format: 'xml' is not one of csv, json, parquet`, so one
bad object never hides the valid objects of its own or other files.

No Dagster import at module level: the loader is plain Python, used by the
sensor, the asset, the run coordinator and the benchmark alike. (A `schedule`
is checked with Dagster's own cron check, imported when one is first seen,
wherever Dagster is installed; see `_valid_cron` for where it is not.)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, NoReturn, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from fanout_dagster.ddl import DdlError, parse_ddl, to_ddl

SOURCE_FORMATS = ("csv", "json", "parquet")
WRITE_MODES = ("overwrite", "append")
# Databricks Auto Loader's cloudFiles.schemaEvolutionMode values.
SCHEMA_EVOLUTION_MODES = ("addNewColumns", "failOnNewColumns", "rescue", "none")
ON_EMPTY_MODES = ("fail", "allow")
DEFAULT_CLUSTER = "default"
TABLE_SOURCE_FORMAT: Literal["table"] = "table"  # SourceSpec.format of a source.table object

# Partition keys end up in URLs, run tags and backfill selections. Dagster's UI
# splits partition selections on commas, so keys keep to a small safe alphabet.
# Every pattern here is matched whole (fullmatch): `$` would let a trailing
# newline (a YAML block scalar) through.
IDENT_RE = re.compile(r"[a-z0-9][a-z0-9_]*")
# Table names start with a letter: the Parquet writer keeps its own folders
# (_staging, _trash) and lock files (.<table>.lock) next to the tables.
TABLE_RE = re.compile(r"[a-z][a-z0-9_]*")
# A catalog table a source reads: table, schema.table or catalog.schema.table.
SOURCE_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,2}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
MAX_IDENT_LEN = 40
MAX_TABLE_LEN = 128
MAX_SOURCE_TABLE_LEN = 3 * 255 + 2
MAX_RETRIES = 10

# libyaml's parser (bundled in PyYAML's wheels) reads 10,000 configs about 5x
# faster than the pure-Python one, and the sensor reads them every tick.
# Same safe subset of YAML, same error marks.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SourceFormat = Literal["csv", "json", "parquet", "table"]
WriteMode = Literal["overwrite", "append"]
SchemaEvolutionMode = Literal["addNewColumns", "failOnNewColumns", "rescue", "none"]
OnEmpty = Literal["fail", "allow"]
OptionValue = str | int | float | bool
Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- field checks
#
# Each check raises a "config" error whose message is shown as it is; the
# errors pydantic raises itself (missing, unknown field, wrong type) are
# reworded in _translate.


def _fail(message: str) -> NoReturn:
    raise PydanticCustomError("config", "{message}", {"message": message})


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_of(values: Sequence[str], *, internal: Sequence[str] = ()) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, str) and (value in values or value in internal):
            return value
        shown = "null" if value is None else repr(value)
        message = f"{shown} is not one of {', '.join(values)}"
        if isinstance(value, str):
            same = [v for v in values if v.lower() == value.lower()]
            if same:
                message += f" (did you mean {same[0]!r}?)"
        _fail(message)

    return check


def _identifier(value: str) -> str:
    if len(value) > MAX_IDENT_LEN:
        _fail(f"is {len(value)} characters long; at most {MAX_IDENT_LEN} allowed")
    if not IDENT_RE.fullmatch(value):
        _fail(
            f"{value!r} is not a safe identifier: use lower-case letters, digits and '_' "
            "(starting with a letter or digit); no spaces, commas, '-' or upper case"
        )
    return value


def _target_table(value: str) -> str:
    if len(value) > MAX_TABLE_LEN:
        _fail(f"is {len(value)} characters long; at most {MAX_TABLE_LEN}")
    if not TABLE_RE.fullmatch(value):
        # Table names are interpolated into paths and (on Databricks) SQL
        # identifiers, so anything but a plain identifier is refused.
        _fail(
            f"{value!r} is not a plain table name: use lower-case letters, digits and '_', "
            "starting with a letter (no dots, quotes, spaces or SQL)"
        )
    return value


def _source_table(value: str) -> str:
    if len(value) > MAX_SOURCE_TABLE_LEN or not SOURCE_TABLE_RE.fullmatch(value):
        _fail(
            f"{value!r} is not a table name: give table, schema.table or "
            "catalog.schema.table, each part letters, digits and '_' "
            "(starting with a letter or '_'; no quotes or spaces)"
        )
    return value


def source_path_problem(path: Any) -> str | None:
    """Why a configured source path may not be used, or None when it is fine.

    Paths are relative to the data root. Absolute paths, URIs and '..' are
    refused here; symlinks that lead outside the root are refused when the
    files are resolved (ingest.resolve_source_files). Globs are read by
    Python's glob locally and by Hadoop's on cloud storage, so the patterns
    they read differently are refused too.
    """
    if not isinstance(path, str):
        return f"must be a string, got {_type_name(path)}"
    if not path.strip():
        return "must not be empty"
    if "\x00" in path or "\\" in path:
        return "must not contain NUL or backslashes"
    if _CONTROL_CHARS.search(path):
        return (
            f"{path!r} must not contain control characters (a line break from a YAML block scalar?)"
        )
    if "://" in path or re.match(r"[A-Za-z]+:", path):
        return f"{path!r} must be relative to the data root, not a URI"
    if path.startswith("/"):
        return f"{path!r} must be relative to the data root, not absolute"
    if ".." in path.split("/"):
        return f"{path!r} must stay inside the data root ('..' is not allowed)"
    if "{" in path or "}" in path:
        return (
            f"{path!r}: brace alternatives {{a,b}} are not supported (Spark would expand "
            "them after this check, so one could leave the data root, and Python's glob "
            "would not): declare one object per alternative, or use a broader glob"
        )
    if "**" in path:
        return (
            f"{path!r}: '**' matches any depth in Python's glob but one folder level in "
            "Hadoop's, so it would read other files locally than on cloud storage: give "
            "the folder path to read every file below it"
        )
    return None


def _source_path(value: str) -> str:
    problem = source_path_problem(value)
    if problem:
        _fail(problem)
    return value


def _ddl(value: str) -> str:
    problem = _ddl_problem(value)
    if problem:
        _fail(problem)
    return value


@lru_cache(maxsize=65536)
def _ddl_problem(value: str) -> str | None:
    try:
        parse_ddl(value)
    except DdlError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=1024)
def _valid_cron(value: str) -> bool:
    # Dagster's own check, so what validates here is what its schedules accept.
    # The Pipes remote side (remote/pipes_entry.py) has no Dagster: it never
    # schedules, and the orchestrator that requested its run checked the same
    # configs with this very check. A cron check of our own there could only
    # disagree with Dagster's, and refuse an object the orchestrator accepted.
    if importlib.util.find_spec("dagster") is None:
        return True
    from dagster._utils.schedules import is_valid_cron_string

    return is_valid_cron_string(value)


def _cron(value: str) -> str:
    if value != value.strip():
        _fail(f"{value!r} must not start or end with spaces or line breaks")
    if not _valid_cron(value):
        _fail(
            f"{value!r} is not a valid cron schedule (5 fields: minute hour "
            "day-of-month month day-of-week, in UTC; e.g. '0 6 * * *')"
        )
    return value


def _retries(value: int) -> int:
    if not 0 <= value <= MAX_RETRIES:
        _fail(f"must be between 0 and {MAX_RETRIES}, got {value}")
    return value


def _option_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    _fail(f"must be a string, number or boolean, got {_type_name(value)}")


def _none_as_empty(value: Any) -> Any:
    return {} if value is None else value


def _enum(values: Sequence[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(values)})


Identifier = Annotated[
    str,
    AfterValidator(_identifier),
    WithJsonSchema(
        {"type": "string", "pattern": f"^{IDENT_RE.pattern}$", "maxLength": MAX_IDENT_LEN}
    ),
]
TargetTable = Annotated[
    str,
    AfterValidator(_target_table),
    WithJsonSchema(
        {"type": "string", "pattern": f"^{TABLE_RE.pattern}$", "maxLength": MAX_TABLE_LEN}
    ),
]
SourceTable = Annotated[
    str,
    AfterValidator(_source_table),
    WithJsonSchema({"type": "string", "pattern": f"^{SOURCE_TABLE_RE.pattern}$"}),
]
SourcePath = Annotated[
    str,
    AfterValidator(_source_path),
    WithJsonSchema(
        {
            "type": "string",
            # A hint for editors; the loader's checks are the rule.
            "pattern": r"^(?!/)(?!.*://)(?!.*\*\*)(?!(?:.*/)?\.\.(?:/|$))[^{}\\]+$",
        }
    ),
]
Ddl = Annotated[str, AfterValidator(_ddl)]
Cron = Annotated[str, AfterValidator(_cron)]
Retries = Annotated[
    int,
    AfterValidator(_retries),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}),
]
Options = Annotated[
    dict[
        str,
        Annotated[
            OptionValue,
            PlainValidator(_option_value),
            WithJsonSchema({"type": ["string", "number", "boolean"]}),
        ],
    ],
    BeforeValidator(_none_as_empty),
    WithJsonSchema(
        {
            "type": ["object", "null"],
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        }
    ),
]
SourceFormatField = Annotated[
    SourceFormat,
    BeforeValidator(_one_of(SOURCE_FORMATS, internal=(TABLE_SOURCE_FORMAT,))),
    _enum(SOURCE_FORMATS),
]
WriteModeField = Annotated[WriteMode, BeforeValidator(_one_of(WRITE_MODES)), _enum(WRITE_MODES)]
SchemaEvolutionModeField = Annotated[
    SchemaEvolutionMode,
    BeforeValidator(_one_of(SCHEMA_EVOLUTION_MODES)),
    _enum(SCHEMA_EVOLUTION_MODES),
]
OnEmptyField = Annotated[OnEmpty, BeforeValidator(_one_of(ON_EMPTY_MODES)), _enum(ON_EMPTY_MODES)]


# --------------------------------------------------------------------------- cross-field checks
#
# Rules that span fields (a table source takes no path; append needs files)
# look at the raw input, so they are reported together with the field errors
# of the same object rather than only once those are fixed. A model whose
# rules found problems raises one "problems" error carrying every
# (location, message) of the model; _translate unpacks it.


def _validate_reporting(
    model: type[BaseModel],
    data: Any,
    handler: ValidatorFunctionWrapHandler,
    problems: list[tuple[Loc, str]],
) -> Any:
    if not problems:
        return handler(data)
    try:
        handler(data)
    except ValidationError as exc:
        problems = [*_translate(exc.errors(), model), *problems]
    details = "; ".join(f"{_format_loc('', loc) or '(object)'}: {msg}" for loc, msg in problems)
    raise PydanticCustomError(
        "problems", "{details}", {"details": details, "problems": tuple(problems)}
    )


def _field_of(value: Any, name: str) -> Any:
    """A field of raw input (a mapping) or of an already built model."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


# --------------------------------------------------------------------------- models


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
            return _validate_reporting(cls, data, handler, problems)

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
                    problems.append((("config_file",), _unknown_field(ObjectConfig)))
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
        return _validate_reporting(cls, data, handler, problems)

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
        return _content_hash(payload)

    @property
    def source_hash(self) -> str:
        """Hash of what defines which rows are read: format, path, options, schema,
        schema hints, table. An append table starts over when it changes."""
        source = self.source
        return _content_hash(
            {
                "format": source.format,
                "path": source.path,
                "options": dict(sorted(source.options.items())),
                "schema": _canonical_ddl(source.schema),
                "schema_hints": _canonical_ddl(source.schema_hints),
                "table": source.table,
            }
        )


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
        "docs/configs.md. Generated by `python -m fanout_dagster.objects --json-schema`.",
        **schema,
    }


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigError:
    file: str
    field: str  # dotted path inside the file, e.g. "[2].source.format"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


def _format_loc(prefix: str, loc: Loc) -> str:
    """("source", "format") under "[3]" -> "[3].source.format"."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at loc (list indexes skipped)."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        current = found
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_field(model: type[BaseModel] | None) -> str:
    if model is None:
        return "unknown field"
    allowed = [name for name in model.model_fields if name != "config_file"]
    return f"unknown field (allowed: {', '.join(allowed)})"


def _translate(errors: Sequence[Any], model: type[BaseModel]) -> list[tuple[Loc, str]]:
    """pydantic's errors as (location, message), in words a config's author understands."""
    out: list[tuple[Loc, str]] = []
    for error in errors:
        loc: Loc = tuple(error["loc"])
        kind = error["type"]
        got = _type_name(error.get("input"))
        if kind == "problems":
            out.extend((loc + tuple(sub), message) for sub, message in error["ctx"]["problems"])
        elif loc and loc[-1] == "[key]":
            out.append((loc[:-2], f"key {loc[-2]!r} must be a string, got {got}"))
        elif kind == "missing":
            out.append((loc, "missing required field"))
        elif kind == "extra_forbidden":
            out.append((loc, _unknown_field(_model_at(model, loc[:-1]))))
        elif kind == "string_type":
            out.append((loc, f"must be a string, got {got}"))
        elif kind == "int_type":
            out.append((loc, f"must be an integer, got {got}"))
        elif kind == "bool_type":
            out.append((loc, f"must be true or false, got {got}"))
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            out.append((loc, f"must be a mapping, got {got}"))
        elif kind == "list_type":
            out.append((loc, f"must be a list, got {got}"))
        elif kind == "too_short" and error.get("input") == []:
            out.append((loc, "is an empty list"))
        else:
            out.append((loc, error["msg"]))  # "config" errors and anything unforeseen
    return out


# --------------------------------------------------------------------------- loading


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


def partition_key(code: str, name: str) -> str:
    # "-" is not allowed inside code or name, so the key splits back unambiguously.
    return f"{code}-{name}"


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
_cache: OrderedDict[tuple[str, str], tuple[tuple[int, int, int], _ParsedFile]] = OrderedDict()
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
    configs_dir: str | Path, known_clusters: Collection[str] | None = None
) -> ConfigsLoad:
    """Read every *.yaml / *.yml file under configs_dir (sorted, recursive).

    With known_clusters, an object whose cluster is not among them is an error.
    """
    root = Path(configs_dir)
    if not root.is_dir():
        return ConfigsLoad((), (ConfigError(str(root), "", "configs folder does not exist"),))
    candidates: list[ObjectConfig] = []
    errors: list[ConfigError] = []
    for path, name in _config_files(root):
        parsed = _parse_cached(path, name)
        errors.extend(parsed.errors)
        for prefix, obj in parsed.objects:
            if known_clusters is not None and obj.cluster not in known_clusters:
                errors.append(
                    ConfigError(
                        name,
                        _format_loc(prefix, ("cluster",)),
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


def _parse_cached(path: str, name: str) -> _ParsedFile:
    try:
        stat = os.stat(path)
    except OSError:
        return _parse_file(Path(path), name)  # gone meanwhile: report it, cache nothing
    now = time.time_ns()
    key, stamp = (path, name), (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == stamp:
            _cache.move_to_end(key)
            _cache_counts["hits"] += 1
            return cached[1]
    parsed = _parse_file(Path(path), name)
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
    path: Path, display_name: str | None = None
) -> tuple[list[ObjectConfig], list[ConfigError]]:
    """Parse one file. A file with any invalid object contributes only its valid ones."""
    parsed = _parse_file(path, display_name or path.name)
    return [obj for _, obj in parsed.objects], list(parsed.errors)


def _parse_file(path: Path, name: str) -> _ParsedFile:
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return _ParsedFile((), (ConfigError(name, where, f"malformed YAML: {problem}"),))
    except (OSError, UnicodeDecodeError) as exc:
        return _ParsedFile((), (ConfigError(name, "", f"cannot read file: {exc}"),))
    return _parse_document(document, name)


def _parse_document(document: Any, name: str) -> _ParsedFile:
    def only(field: str, message: str) -> _ParsedFile:
        return _ParsedFile((), (ConfigError(name, field, message),))

    errors: list[ConfigError] = []
    defaults: dict[str, Any] = {}
    if document is None:
        return only("", "file is empty: expected an object or a list of objects")
    if isinstance(document, Mapping) and ("objects" in document or "defaults" in document):
        for key in document:
            if key not in _FILE_KEYS:
                errors.append(ConfigError(name, str(key), _unknown_field(DefaultsFile)))
        defaults_ok = True
        raw_defaults = document.get("defaults")
        if raw_defaults is not None:
            try:
                validated = Defaults.model_validate(raw_defaults)
                defaults = validated.model_dump(exclude_none=True)
            except ValidationError as exc:
                defaults_ok = False
                errors.extend(
                    ConfigError(name, _format_loc("defaults", loc), message)
                    for loc, message in _translate(exc.errors(), Defaults)
                )
        items = document.get("objects")
        if "objects" not in document:
            errors.append(ConfigError(name, "objects", "missing required field"))
            return _ParsedFile((), tuple(errors))
        if not isinstance(items, list):
            errors.append(
                ConfigError(name, "objects", f"must be a list of objects, got {_type_name(items)}")
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
            f"got {_type_name(document)}",
        )

    objects: list[tuple[str, ObjectConfig]] = []
    for prefix, entry in entries:
        if not isinstance(entry, Mapping):
            errors.append(
                ConfigError(name, prefix, f"expected an object (mapping), got {_type_name(entry)}")
            )
            continue
        data = _with_defaults(defaults, entry) if defaults else entry
        try:
            obj = ObjectConfig.model_validate(data, context={"config_file": name})
        except ValidationError as exc:
            errors.extend(
                ConfigError(name, _format_loc(prefix, loc), message)
                for loc, message in _translate(exc.errors(), ObjectConfig)
            )
            continue
        objects.append((prefix, obj))
    return _ParsedFile(tuple(objects), tuple(errors))


def _with_defaults(defaults: Mapping[str, Any], entry: Mapping[Any, Any]) -> dict[Any, Any]:
    """The object over the file's defaults, mappings merged key by key; the object wins.

    Source defaults are for files: an object reading source.table does not take them.
    """
    source = entry.get("source")
    if isinstance(source, Mapping) and source.get("table") is not None:
        defaults = {key: value for key, value in defaults.items() if key != "source"}
    return _deep_merge(defaults, entry)


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
    """Partition keys and target tables must be unique across all files.

    Every object in a clash is rejected (not just the second one), because
    which file "wins" would otherwise depend on file-name order.
    """
    errors: list[ConfigError] = []
    rejected: set[int] = set()
    attributes: tuple[tuple[Callable[[ObjectConfig], str], str], ...] = (
        (lambda o: o.key, "partition key"),
        (lambda o: o.target.table, "table"),
    )
    for attr, label in attributes:
        seen: dict[str, list[int]] = {}
        for index, obj in enumerate(candidates):
            seen.setdefault(attr(obj), []).append(index)
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


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout_dagster.objects", description="Object config tools."
    )
    parser.add_argument(
        "--json-schema",
        action="store_true",
        help="print the JSON Schema of a config file (configs/object-config.schema.json)",
    )
    args = parser.parse_args(argv)
    if not args.json_schema:
        parser.print_help()
        return 2
    sys.stdout.write(json.dumps(config_file_json_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
