"""Config errors: where (file and field) and what, in words a config's author
understands. pydantic's own errors (missing, unknown field, wrong type) are
reworded here; the field checks raise messages that are shown as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, get_args

from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigError:
    file: str
    field: str  # dotted path inside the file, e.g. "[2].source.format"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


def format_loc(prefix: str, loc: Loc) -> str:
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


def unknown_field(model: type[BaseModel] | None) -> str:
    if model is None:
        return "unknown field"
    allowed = [name for name in model.model_fields if name != "config_file"]
    return f"unknown field (allowed: {', '.join(allowed)})"


def translate(errors: Sequence[Any], model: type[BaseModel]) -> list[tuple[Loc, str]]:
    """pydantic's errors as (location, message), in words a config's author understands."""
    out: list[tuple[Loc, str]] = []
    for error in errors:
        loc: Loc = tuple(error["loc"])
        kind = error["type"]
        got = type_name(error.get("input"))
        if kind == "problems":
            out.extend((loc + tuple(sub), message) for sub, message in error["ctx"]["problems"])
        elif loc and loc[-1] == "[key]":
            out.append((loc[:-2], f"key {loc[-2]!r} must be a string, got {got}"))
        elif kind == "missing":
            out.append((loc, "missing required field"))
        elif kind == "extra_forbidden":
            out.append((loc, unknown_field(_model_at(model, loc[:-1]))))
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


def fail(message: str) -> NoReturn:
    raise PydanticCustomError("config", "{message}", {"message": message})


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "dict"  # also the loader's own mapping type (yaml_reader.ConfigMapping)
    return type(value).__name__


# --------------------------------------------------------------------------- cross-field checks
#
# Rules that span fields (a table source takes no path; append needs files)
# look at the raw input, so they are reported together with the field errors
# of the same object rather than only once those are fixed. A model whose
# rules found problems raises one "problems" error carrying every
# (location, message) of the model; translate unpacks it.


def validate_reporting(
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
        problems = [*translate(exc.errors(), model), *problems]
    details = "; ".join(f"{format_loc('', loc) or '(object)'}: {msg}" for loc, msg in problems)
    raise PydanticCustomError(
        "problems", "{details}", {"details": details, "problems": tuple(problems)}
    )
