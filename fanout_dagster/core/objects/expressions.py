"""Expectation expressions checked without Spark, so that a typo is a config
error at the sensor tick rather than a failed run.

An expression is parsed with sqlglot's Spark dialect: it must be one Spark SQL
expression over a row (no statement, subquery, aggregate or window), and the
columns it names must be columns the load can have, when the source's columns
are known (an explicit `source.schema`): those, the audit columns and, in
rescue mode, `_rescued_data`. Spark's own analyzer has the last word when the
load runs; an expression it refuses fails that object only.

sqlglot is imported lazily and is optional: the remote side of a Databricks
Pipes run (dagster-pipes, pydantic, PyYAML and pyspark only) loads the same
configs without it, and skips these checks; the orchestrator made them already.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from types import ModuleType
from typing import Any, NamedTuple

# The columns ingest.py adds to every row (ingest.AUDIT_COLUMNS, which imports
# pyspark; a test keeps the two equal).
AUDIT_COLUMNS = (
    "_ingested_at",
    "_source_file",
    "_source_size",
    "_source_modified",
    "_source_hash",
    "_load_id",
    "_dagster_run_id",
    "_partition_key",
)
RESCUED_COLUMN = "_rescued_data"  # schema_policy.RESCUED_COLUMN

# Spark functions callable without parentheses, which sqlglot reads as columns.
_NILADIC_FUNCTIONS = frozenset(
    {
        "current_catalog",
        "current_database",
        "current_date",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "localtimestamp",
        "session_user",
        "user",
    }
)


def _sqlglot() -> ModuleType | None:
    try:
        import sqlglot
    except ImportError:  # the remote side of a Pipes run: Spark checks at run time
        return None
    return sqlglot


class _Analysis(NamedTuple):
    problem: str | None  # why the text is no row condition; None: fine, or not known
    columns: frozenset[str] | None  # the columns it names; None: not known


def expression_problem(text: str) -> str | None:
    """Why `text` is not a row expression of Spark SQL, or None (also when sqlglot is absent)."""
    if not text.strip():
        return "must not be empty"
    return _analysis(text).problem


def referenced_columns(text: str) -> frozenset[str] | None:
    """The top-level columns `text` names (lower case), or None when that is not
    known (sqlglot absent, or the text is no valid expression)."""
    return _analysis(text).columns


@lru_cache(maxsize=4096)
def _analysis(text: str) -> _Analysis:
    """One parse per text (the sensor reads every config each tick; changed files only)."""
    sqlglot = _sqlglot()
    if sqlglot is None:
        return _Analysis(None, None)
    from sqlglot.errors import ParseError, SqlglotError

    try:
        parsed = [tree for tree in sqlglot.parse(text, read="spark") if tree is not None]
    except ParseError as exc:
        where = exc.errors[0] if exc.errors else {}
        if where.get("highlight"):
            return _Analysis(
                f"{text!r} is not valid Spark SQL: error near {where['highlight']!r} "
                f"(line {where.get('line')}, column {where.get('col')})",
                None,
            )
        return _Analysis(f"{text!r} is not valid Spark SQL: {_first_line(exc)}", None)
    except SqlglotError as exc:  # e.g. a string left open
        return _Analysis(f"{text!r} is not valid Spark SQL: {_first_line(exc)}", None)
    if len(parsed) != 1:
        return _Analysis(f"{text!r} must be one expression, not {len(parsed)} statements", None)
    problem = _shape_problem(text, parsed[0])
    return _Analysis(problem, None if problem else _columns(parsed[0]))


def _shape_problem(text: str, tree: Any) -> str | None:
    from sqlglot import exp

    if isinstance(tree, (exp.Query, exp.Command)) or not isinstance(tree, exp.Condition):
        return f"{text!r} must be an expression over a row, not a statement"
    if tree.find(exp.Subquery, exp.Query) is not None:
        return f"{text!r} must not hold a subquery: an expectation checks each row on its own"
    if tree.find(exp.Window) is not None:
        return f"{text!r} must not hold a window function: an expectation checks each row"
    aggregate = tree.find(exp.AggFunc)
    if aggregate is not None:
        return (
            f"{text!r} must not hold an aggregate ({aggregate.sql(dialect='spark')}): "
            "an expectation checks each row on its own"
        )
    if isinstance(tree, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.DPipe, exp.Literal)):
        return f"{text!r} is not a condition: give a boolean expression, e.g. 'amount >= 0'"
    return None


def _columns(tree: Any) -> frozenset[str]:
    from sqlglot import exp

    # Lambda parameters (`exists(items, x -> x > 0)`) are not columns.
    parameters = {
        parameter.name.lower()
        for function in tree.find_all(exp.Lambda)
        for parameter in function.expressions
    }
    names: set[str] = set()
    for column in tree.find_all(exp.Column):
        parts = column.parts
        # `a.b.c` is column a's field b.c (a row has no table to qualify it with).
        root = parts[0].name.lower()
        if len(parts) == 1 and (root in parameters or root in _NILADIC_FUNCTIONS):
            continue
        names.add(root)
    return frozenset(names)


def _first_line(error: Exception) -> str:
    # sqlglot underlines the offending token with terminal escape codes.
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.replace("\x1b[4m", "").replace("\x1b[0m", "")


def unknown_columns(text: str, known: Collection[str]) -> list[str]:
    """The columns `text` names that are not among `known` (case-insensitively, as
    Spark resolves them), sorted; [] when that cannot be told."""
    named = referenced_columns(text)
    if named is None:
        return []
    folded = {name.lower() for name in known}
    return sorted(name for name in named if name not in folded)
