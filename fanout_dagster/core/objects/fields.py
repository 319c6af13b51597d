"""The fields of an object config: allowed values, the checks each field gets,
and the JSON Schema each field shows editors. Every check raises a message a
config's author can act on (errors.py places it at its file and field)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from fanout_dagster.core.ddl import DdlError, parse_ddl
from fanout_dagster.core.objects.errors import fail, type_name
from fanout_dagster.core.objects.expressions import expression_problem

SOURCE_FORMATS = ("csv", "json", "parquet")
WRITE_MODES = ("overwrite", "append")
# Databricks Auto Loader's cloudFiles.schemaEvolutionMode values.
SCHEMA_EVOLUTION_MODES = ("addNewColumns", "failOnNewColumns", "rescue", "none")
ON_EMPTY_MODES = ("fail", "allow")
# What a row that breaks an expectation does (Lakeflow's expect, expect_or_drop,
# expect_or_fail, and SDP-META's quarantine).
EXPECTATION_ACTIONS = ("warn", "drop", "fail", "quarantine")
# The quarantine table of bronze table `t` is `t_quarantine`, in the same schema.
QUARANTINE_SUFFIX = "_quarantine"
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
MAX_EXPECTATION_NAME_LEN = 64

SourceFormat = Literal["csv", "json", "parquet", "table"]
WriteMode = Literal["overwrite", "append"]
SchemaEvolutionMode = Literal["addNewColumns", "failOnNewColumns", "rescue", "none"]
OnEmpty = Literal["fail", "allow"]
ExpectationAction = Literal["warn", "drop", "fail", "quarantine"]
OptionValue = str | int | float | bool


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
        fail(message)

    return check


def _identifier(value: str) -> str:
    if len(value) > MAX_IDENT_LEN:
        fail(f"is {len(value)} characters long; at most {MAX_IDENT_LEN} allowed")
    if not IDENT_RE.fullmatch(value):
        fail(
            f"{value!r} is not a safe identifier: use lower-case letters, digits and '_' "
            "(starting with a letter or digit); no spaces, commas, '-' or upper case"
        )
    return value


def _target_table(value: str) -> str:
    if len(value) > MAX_TABLE_LEN:
        fail(f"is {len(value)} characters long; at most {MAX_TABLE_LEN}")
    if not TABLE_RE.fullmatch(value):
        # Table names are interpolated into paths and (on Databricks) SQL
        # identifiers, so anything but a plain identifier is refused.
        fail(
            f"{value!r} is not a plain table name: use lower-case letters, digits and '_', "
            "starting with a letter (no dots, quotes, spaces or SQL)"
        )
    return value


def _expectation_name(value: str) -> str:
    # The name is also the Dagster asset check's name.
    if len(value) > MAX_EXPECTATION_NAME_LEN:
        fail(f"is {len(value)} characters long; at most {MAX_EXPECTATION_NAME_LEN} allowed")
    if not IDENT_RE.fullmatch(value):
        fail(
            f"{value!r} is not a safe name: use lower-case letters, digits and '_' "
            "(it names the expectation's Dagster asset check)"
        )
    return value


def _sql_expression(value: str) -> str:
    problem = expression_problem(value)
    if problem:
        fail(problem)
    return value


def _source_table(value: str) -> str:
    if len(value) > MAX_SOURCE_TABLE_LEN or not SOURCE_TABLE_RE.fullmatch(value):
        fail(
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
        return f"must be a string, got {type_name(path)}"
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
        fail(problem)
    return value


def _ddl(value: str) -> str:
    problem = _ddl_problem(value)
    if problem:
        fail(problem)
    return value


@lru_cache(maxsize=65536)
def _ddl_problem(value: str) -> str | None:
    try:
        parse_ddl(value)
    except DdlError as exc:
        return str(exc)
    return None


# A cron check beyond the shape below is the caller's (validation context
# `cron_check`): the Dagster side passes Dagster's own (orchestration/resources/
# object_configs.py), so what validates is what its schedules accept; the
# Pipes remote side has no Dagster and never schedules, and checks the shape only.
CronCheck = Callable[[str], bool]
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _cron(value: str, info: ValidationInfo) -> str:
    if value != value.strip():
        fail(f"{value!r} must not start or end with spaces or line breaks")
    check: CronCheck | None = (info.context or {}).get("cron_check")
    shaped = value in _CRON_MACROS or len(value.split()) == 5
    if not shaped or (check is not None and not check(value)):
        fail(
            f"{value!r} is not a valid cron schedule (5 fields: minute hour "
            "day-of-month month day-of-week, in UTC; e.g. '0 6 * * *')"
        )
    return value


def _retries(value: int) -> int:
    if not 0 <= value <= MAX_RETRIES:
        fail(f"must be between 0 and {MAX_RETRIES}, got {value}")
    return value


def _option_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    fail(f"must be a string, number or boolean, got {type_name(value)}")


# Reader options Spark takes as a location: `path` / `paths` replace or add to
# the files a reader loads, `basePath` moves partition discovery, and
# `badRecordsPath` / `checkpointLocation` make Spark write there. Any of them
# would read or write outside the checked source.path, so none is passed on;
# nor is any option named like one (`...path`, `...location`), whatever its case
# (Spark's option names are case-insensitive).
_LOCATION_SUFFIXES = ("path", "paths", "location", "locations")


def _reader_options(options: dict[str, Any]) -> dict[str, Any]:
    problems: list[tuple[tuple[str], str]] = []
    seen: dict[str, str] = {}
    for key in options:
        folded = key.lower()
        if folded.endswith(_LOCATION_SUFFIXES):
            problems.append(
                (
                    (key,),
                    f"{key!r} would make Spark read or write another location than "
                    "source.path; the files to read are source.path (relative to the "
                    "data root), so location options are not allowed",
                )
            )
        elif folded in seen:
            problems.append(
                (
                    (key,),
                    f"{key!r} is the same option as {seen[folded]!r} (Spark's option names "
                    "are case-insensitive): keep one",
                )
            )
        seen.setdefault(folded, key)
    if problems:
        details = "; ".join(f"{loc[0]}: {message}" for loc, message in problems)
        raise PydanticCustomError(
            "problems", "{details}", {"details": details, "problems": tuple(problems)}
        )
    return options


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
ExpectationName = Annotated[
    str,
    AfterValidator(_expectation_name),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{IDENT_RE.pattern}$",
            "maxLength": MAX_EXPECTATION_NAME_LEN,
        }
    ),
]
SqlExpression = Annotated[
    str, AfterValidator(_sql_expression), WithJsonSchema({"type": "string", "minLength": 1})
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
    AfterValidator(_reader_options),
    WithJsonSchema(
        {
            "type": ["object", "null"],
            # A hint for editors (JSON Schema regexes have no case-insensitive flag).
            "propertyNames": {
                "pattern": "^(?![\\s\\S]*([Pp][Aa][Tt][Hh][Ss]?|[Ll][Oo][Cc][Aa][Tt][Ii][Oo][Nn][Ss]?)$)"
            },
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
ExpectationActionField = Annotated[
    ExpectationAction,
    BeforeValidator(_one_of(EXPECTATION_ACTIONS)),
    _enum(EXPECTATION_ACTIONS),
]
