"""Expectations in Spark: each row of a load checked against the object's rules,
in the same pass as the load's write, with the same transaction semantics.

A row passes a rule only when its expression is true (false and null break
it). The actions, strongest first, decide what a row that breaks rules does:

- `fail`: the write itself raises (`raise_error` inside the written rows), so
  Delta commits nothing and the table keeps its previous version;
- `quarantine`: the row goes to the quarantine table `<table>_quarantine`
  (same schema, plus `_expectations_failed`: the names of the rules it broke),
  not to bronze; the quarantine commits first and replaces exactly this load's
  rows (its load ids, or the whole table for an overwrite), so a retry after a
  failure between the two writes leaves no row twice and loses none;
- `drop`: the row is left out;
- `warn`: the row is loaded.

Counting needs no pass of its own: the rows are observed (`DataFrame.observe`)
by the write that reads them, and the counts arrive with the write's result,
over Spark Connect as on a classic session. Two loads count with one
aggregation over their rows first instead: a table's first load (Delta's
create-table-as-select runs its query nested and reports no observed metrics)
and an append load replacing some files' rows (tables.py keeps replaceWhere).

No Dagster import: it runs wherever a load runs (tables.py calls it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from fanout_dagster.core.objects.model import Expectation, ObjectConfig
from fanout_dagster.core.tables import BronzeTableWriter

FAILED_COLUMN = "_expectations_failed"  # the quarantine table's: the rules a row broke
# Internal columns, dropped before anything is written.
_VERDICT = "__fanout_verdict"
_BROKEN = "__fanout_broken_{}"
_KEEP, _DROP, _QUARANTINE = "keep", "drop", "quarantine"
# Starts the message of the error a `fail` rule raises inside Spark.
FAIL_MARKER = "fanout expectation failed:"
_FAILED_NAME = re.compile(re.escape(FAIL_MARKER) + r" '([a-z0-9_]+)'")


@dataclass(frozen=True)
class ExpectationResult:
    """One rule over one load."""

    name: str
    action: str
    expression: str
    failed_rows: int  # rows that broke it

    @property
    def passed(self) -> bool:
        return self.failed_rows == 0


@dataclass(frozen=True)
class ExpectationsReport:
    """What a load's rules did (travels in the object's report, as JSON)."""

    rows_checked: int  # rows of the load (after its schema fit the table)
    rows_dropped: int
    rows_quarantined: int
    quarantine_table: str | None  # full name, when the object quarantines
    results: tuple[ExpectationResult, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpectationsReport:
        return cls(
            **{
                **data,
                "results": tuple(ExpectationResult(**result) for result in data["results"]),
            }
        )


def failed_expectation(error: BaseException | str | None) -> str | None:
    """The name of the `fail` rule whose row failed a load, from the load's error."""
    if error is None:
        return None
    found = _FAILED_NAME.search(str(error))
    return found.group(1) if found else None


class ExpectationChecks:
    """The rules of one object's load, as tables.py applies them (its RowChecks).

    `kept` gives the rows the table gets, `write_aside` commits the quarantine,
    `to_write` gives the kept rows as the table's write reads them, counting;
    `report` is the counts once that write succeeded.
    """

    def __init__(
        self,
        expectations: Sequence[Expectation],
        *,
        writer: BronzeTableWriter,
        quarantine_table: str | None,
    ) -> None:
        if not expectations:
            raise ValueError("no expectations to check")
        self.expectations = tuple(expectations)
        self.writer = writer
        self.quarantine_table = quarantine_table
        self._observation: Any = None
        self._unobserved: Any = None  # the observed rows' plan without the observation
        self._counts: dict[str, int] | None = None

    @classmethod
    def of(cls, obj: ObjectConfig, writer: BronzeTableWriter) -> ExpectationChecks | None:
        """The checks of an object's load (None: it declares no expectations)."""
        if not obj.expectations:
            return None
        return cls(obj.expectations, writer=writer, quarantine_table=obj.quarantine_table)

    @property
    def quarantine_full_name(self) -> str | None:
        return (
            None if self.quarantine_table is None else self.writer.full_name(self.quarantine_table)
        )

    # ------------------------------------------------------------------ per row

    def _broken(self, expectation: Expectation) -> Column:
        # Null is not true: a row passes only when the expression is true.
        return ~F.coalesce(F.expr(expectation.expression), F.lit(False))

    def _flagged(self, rows: DataFrame) -> DataFrame:
        """The rows with each rule's breach and the row's verdict, strongest action first."""
        broken = [F.col(_BROKEN.format(i)) for i in range(len(self.expectations))]
        cases: list[tuple[Column, Column]] = []
        for expectation, column in zip(self.expectations, broken, strict=True):
            if expectation.action == "fail":
                # Raised while the write runs: the job fails, Delta commits nothing.
                message = (
                    f"{FAIL_MARKER} '{expectation.name}' ({expectation.expression}) is "
                    "false or null for a row; nothing of this load was committed"
                )
                cases.append((column, F.raise_error(F.lit(message))))
        for action in (_QUARANTINE, _DROP):
            of_action = [
                column
                for expectation, column in zip(self.expectations, broken, strict=True)
                if expectation.action == action
            ]
            if of_action:
                cases.append((_any(of_action), F.lit(action)))
        verdict = F.lit(_KEEP)
        if cases:
            verdict = F.when(*cases[0])
            for condition, value in cases[1:]:
                verdict = verdict.when(condition, value)
            verdict = verdict.otherwise(F.lit(_KEEP))
        breaches = [
            self._broken(e).alias(_BROKEN.format(i)) for i, e in enumerate(self.expectations)
        ]
        return rows.select("*", *breaches).select("*", verdict.alias(_VERDICT))

    def _only(self, flagged: DataFrame, verdict: str) -> DataFrame:
        """The rows of one verdict, without the internal columns."""
        return flagged.where(F.col(_VERDICT) == verdict).drop(*self._internal_columns)

    @property
    def _internal_columns(self) -> list[str]:
        return [_VERDICT, *[_BROKEN.format(i) for i in range(len(self.expectations))]]

    def _metrics(self) -> list[Column]:
        verdict = F.col(_VERDICT)
        return [
            F.count(F.lit(1)).alias("rows"),
            F.count_if(verdict == _DROP).alias(_DROP),
            F.count_if(verdict == _QUARANTINE).alias(_QUARANTINE),
            *[
                F.count_if(F.col(_BROKEN.format(i))).alias(_BROKEN.format(i))
                for i in range(len(self.expectations))
            ],
        ]

    # ------------------------------------------------------------------ tables.RowChecks

    def kept(self, rows: DataFrame) -> DataFrame:
        """The rows the table gets (what its emptiness check looks at)."""
        return self._only(self._flagged(rows), _KEEP)

    def write_aside(self, rows: DataFrame, *, load_ids: Collection[str] | None, tag: str) -> None:
        """Commit the quarantined rows of this load (all of its rows' load ids: None)."""
        if self.quarantine_table is None:
            return
        flagged = self._flagged(rows)
        names = F.filter(
            F.array(
                *[
                    F.when(F.col(_BROKEN.format(i)), F.lit(e.name))
                    for i, e in enumerate(self.expectations)
                ]
            ),
            lambda name: name.isNotNull(),
        )
        quarantined = flagged.withColumn(FAILED_COLUMN, names)
        quarantined = self._only(quarantined, _QUARANTINE)
        self.writer.write_beside(
            quarantined, table=self.quarantine_table, load_ids=load_ids, tag=tag
        )

    def to_write(self, rows: DataFrame, *, counted: bool) -> DataFrame:
        """The kept rows as the table's write reads them. `counted`: that write
        reports observed metrics; otherwise the rows are counted here, first."""
        flagged = self._flagged(rows)
        if counted:
            # A new Observation per load: each gets the metrics of the one action
            # that reads it, this write (the emptiness check read other rows).
            self._unobserved = flagged
            self._observation = Observation()
            flagged = flagged.observe(self._observation, *self._metrics())
        else:
            self._counts = self._count(flagged)
        return self._only(flagged, _KEEP)

    def _count(self, flagged: DataFrame) -> dict[str, int]:
        [row] = flagged.agg(*self._metrics()).collect()
        return {name: int(value) for name, value in row.asDict().items()}

    # ------------------------------------------------------------------ after the write

    def _observed(self) -> dict[str, int]:
        """The write's observed counts. Should a Spark not report them (the write
        committed all the same), the rows are counted again rather than the
        committed load reported as failed."""
        try:
            counts = dict(self._observation.get)
        except Exception:  # noqa: BLE001 - classic pyspark asserts on missing metrics
            counts = {}
        if counts:
            return {name: int(value) for name, value in counts.items()}
        print(
            "fanout expectations: the write reported no observed metrics; counting again",
            file=sys.stderr,
            flush=True,
        )
        return self._count(self._unobserved)

    def report(self) -> ExpectationsReport:
        """The counts of the load just written."""
        counts = self._counts
        if counts is None and self._observation is not None:
            counts = self._observed()
        if counts is None:
            raise RuntimeError("the expectations of this load were never counted")
        return ExpectationsReport(
            rows_checked=int(counts["rows"]),
            rows_dropped=int(counts[_DROP]),
            rows_quarantined=int(counts[_QUARANTINE]),
            quarantine_table=self.quarantine_full_name,
            results=tuple(
                ExpectationResult(
                    name=e.name,
                    action=e.action,
                    expression=e.expression,
                    failed_rows=int(counts[_BROKEN.format(i)]),
                )
                for i, e in enumerate(self.expectations)
            ),
        )

    def empty_report(self) -> ExpectationsReport:
        """A load that read no rows (nothing new in an append table)."""
        return ExpectationsReport(
            rows_checked=0,
            rows_dropped=0,
            rows_quarantined=0,
            quarantine_table=self.quarantine_full_name,
            results=tuple(
                ExpectationResult(e.name, e.action, e.expression, 0) for e in self.expectations
            ),
        )


def _any(columns: Sequence[Column]) -> Column:
    combined = columns[0]
    for column in columns[1:]:
        combined = combined | column
    return combined
