"""Load a pack of objects and report each one: the loop every launch mode shares.

`load_pack` is what runs where the Spark session is: in the run process
(local target), on the cluster under the step launcher, and in the Pipes entry
script on a Databricks cluster or serverless compute. It yields one
`ObjectReport` per object as it finishes. A report is plain data (JSON-able),
so the Pipes entry sends it back to Dagster as it is, and the asset turns every
report into the same materialization or failure event, wherever it came from.

No Dagster import: the Pipes entry runs with `dagster-pipes` only.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from fanout_dagster.core.expectations import ExpectationsReport, failed_expectation
from fanout_dagster.core.ingest import LoadResult, ingest_object
from fanout_dagster.core.objects import ObjectConfig
from fanout_dagster.core.packing import Outcome, run_pack
from fanout_dagster.core.tables import BronzeTableWriter

NO_VALID_CONFIG = (
    "no valid config for this object: its config was removed, or is invalid "
    "(the object sensor's tick names the file and field)"
)


@dataclass(frozen=True)
class ObjectReport:
    """How one object of a run ended: loaded (with its load result) or failed (with its error)."""

    key: str
    ok: bool
    result: LoadResult | None = None
    error: str | None = None  # one line (short_error)
    traceback: str | None = None
    started: float | None = None  # time.time() when the object's load began
    finished: float | None = None
    # From the object's config (None when there is no valid config).
    write_mode: str | None = None
    schema_evolution_mode: str | None = None
    cluster: str | None = None
    config_file: str | None = None
    config_hash: str | None = None
    # Where the object ran, when that is elsewhere: e.g. the Databricks run's id and page.
    links: dict[str, str] = field(default_factory=dict)
    # The `fail` expectation a row broke, when that is what failed the object.
    failed_expectation: str | None = None

    @property
    def summary(self) -> str:
        if self.ok and self.result is not None:
            r = self.result
            return (
                f"{self.key}: {r.rows_written} rows from {r.files_read} file(s) -> {r.table} "
                f"version {r.version} ({r.rows} rows in the table)"
            )
        return f"{self.key} failed: {self.error}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        result = values.get("result")
        if isinstance(result, Mapping):
            expectations = result.get("expectations")
            values["result"] = LoadResult(
                **{
                    **result,
                    "columns": tuple(tuple(column) for column in result["columns"]),
                    "load_ids": tuple(result["load_ids"]),
                    "expectations": None
                    if expectations is None
                    else ExpectationsReport.from_json(expectations),
                }
            )
        return cls(**values)


def missing_config_report(key: str) -> ObjectReport:
    return ObjectReport(key=key, ok=False, error=NO_VALID_CONFIG)


def outcome_report(outcome: Outcome[ObjectConfig, LoadResult]) -> ObjectReport:
    obj = outcome.item
    return ObjectReport(
        key=obj.key,
        ok=outcome.ok,
        result=outcome.result,
        error=None if outcome.error is None else short_error(outcome.error),
        traceback=outcome.traceback or None,
        started=outcome.started,
        finished=outcome.finished,
        write_mode=obj.target.mode,
        schema_evolution_mode=obj.target.schema_evolution_mode,
        cluster=obj.cluster,
        config_file=obj.config_file,
        config_hash=obj.config_hash,
        failed_expectation=failed_expectation(outcome.error),
    )


def load_pack(
    spark: SparkSession,
    objects: Sequence[ObjectConfig],
    *,
    data_root: str,
    writer: BronzeTableWriter,
    run_id: str,
    threads: int,
) -> Iterator[ObjectReport]:
    """Load the objects with at most `threads` at once on one session; a report as each ends.

    The Spark operations of the run, and of each object, carry tags: the Spark
    UI shows which object a job belongs to, and a run that is cancelled (the
    generator closed or an exception thrown into it) interrupts exactly its own
    operations, while the objects not started never start. Once an object finds
    the Spark Connect server gone, the objects after it fail at once saying so.
    """
    run_tag = f"fanout-run-{run_id}"
    server_gone: list[str] = []
    cancelled: list[bool] = []

    def load(obj: ObjectConfig) -> LoadResult:
        if server_gone:
            raise SparkUnavailable(f"not started: {server_gone[0]}")
        if cancelled:
            raise RuntimeError("not started: the run was cancelled")
        object_tag = f"fanout-object-{obj.key}"
        spark.addTag(run_tag)  # tags are per thread: each pack thread tags its own work
        spark.addTag(object_tag)
        try:
            return ingest_object(spark, obj, data_root=data_root, writer=writer, run_id=run_id)
        finally:
            spark.removeTag(object_tag)

    def interrupt() -> None:  # called until the running objects have ended
        if not cancelled:
            cancelled.append(True)
            print(
                "Run cancelled: objects not started are skipped, running ones interrupted",
                flush=True,
            )
        spark.interruptTag(run_tag)

    for outcome in run_pack(objects, load, threads, on_abandon=interrupt):
        report = outcome_report(outcome)
        if report.error and report.error.startswith(SparkUnavailable.__name__):
            server_gone.append(report.error.split(": ", 1)[1])
        # On stdout (and the traceback on stderr) too: on a cluster they land in the driver log.
        print(report.summary, flush=True)
        if report.traceback:
            print(f"{report.key} failed:\n{report.traceback}", file=sys.stderr, flush=True)
        yield report


class SparkUnavailable(RuntimeError):
    """The Spark Connect server stopped or cannot be reached."""


# How pyspark's Connect client says the server went away (gRPC status UNAVAILABLE,
# a dropped stream, retries given up).
_SERVER_GONE = (
    "UNAVAILABLE",
    "failed to connect to all addresses",
    "Socket closed",
    "Connection refused",
    "RetriesExceeded",
)


SPARK_ERROR_CLASS = re.compile(r"\[[A-Z][A-Z0-9_]+(\.[A-Z0-9_]+)*\]")
# Error classes that only wrap the telling one (a write task failing because
# its input could not be read, say).
WRAPPER_ERROR_CLASSES = ("[TASK_WRITE_FAILED]",)


def short_error(error: BaseException, limit: int = 500) -> str:
    """One line for summaries. Spark errors from the JVM carry a whole Java
    stack trace (kilobytes) in their message; the traceback metadata keeps it.
    Their telling line is the first with Spark's error class that is not a
    mere wrapper, e.g. "[FAILED_READ_FILE.NO_HINT] Encountered error while
    reading file ..."; otherwise the first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [""]
    if isinstance(error, SparkUnavailable):
        return f"{SparkUnavailable.__name__}: {error}"
    if type(error).__module__.startswith(("pyspark.errors", "grpc")) and any(
        marker in str(error) or marker in type(error).__name__ for marker in _SERVER_GONE
    ):
        return (
            f"{SparkUnavailable.__name__}: the Spark Connect server stopped or cannot be "
            f"reached ({lines[0][:200]}); nothing of this object was committed"
        )
    classed = [line for line in lines if SPARK_ERROR_CLASS.search(line)]
    telling = [
        line for line in classed if not any(wrapper in line for wrapper in WRAPPER_ERROR_CLASSES)
    ]
    line = (telling or classed or lines)[0].removeprefix("Caused by: ")
    if len(line) > limit:
        line = line[:limit] + "..."
    return f"{type(error).__name__}: {line}"
