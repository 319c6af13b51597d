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

from fanout_dagster.core.connect_sessions import stop_tagged
from fanout_dagster.core.expectations import ExpectationsReport, failed_expectation
from fanout_dagster.core.ingest import LoadResult, ingest_object
from fanout_dagster.core.objects import ObjectConfig
from fanout_dagster.core.packing import Outcome, run_pack
from fanout_dagster.core.tables import BronzeTableWriter, history, is_commit_of

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
    the Spark Connect server gone, the objects after it fail at once saying so;
    its own failure says what is known of its write (what_was_committed).
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
        except Exception as error:
            if not is_server_gone(error):
                raise
            reason = server_gone_reason(error)
            server_gone.append(reason)
            committed = what_was_committed(spark, writer, obj, run_id, object_tag)
            raise SparkUnavailable(f"{reason}; {committed}") from error
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
        # On stdout (and the traceback on stderr) too: on a cluster they land in the driver log.
        print(report.summary, flush=True)
        if report.traceback:
            print(f"{report.key} failed:\n{report.traceback}", file=sys.stderr, flush=True)
        yield report


def what_was_committed(
    spark: SparkSession, writer: BronzeTableWriter, obj: ObjectConfig, run_id: str, tag: str
) -> str:
    """What is known of an object's write after the connection to Spark was lost.

    Its operations still running on the server (those carrying `tag`) are
    stopped and waited out first: a write whose client lost the connection goes
    on there, and may commit later. Then the table's history tells whether the
    write committed (the commit carries this load's userMetadata). Without the
    server, nothing is known, and the message says where to look.
    """
    table = writer.full_name(obj.target.table)
    try:
        stop_tagged(spark, tag)
        version = committed_version(spark, writer, obj.target.table, run_id, obj.key)
    except Exception:
        return (
            f"whether its write committed is not known: the history of {table} "
            f"(DESCRIBE HISTORY) shows a commit whose userMetadata has dagster_run_id "
            f"{run_id!r} and partition_key {obj.key!r} if it did"
        )
    if version is None:
        return (
            "nothing of this object was committed (its operations on the server were "
            f"stopped, and the history of {table} has no commit of this load)"
        )
    return f"its write had committed before: version {version} of {table} holds this load"


def committed_version(
    spark: SparkSession, writer: BronzeTableWriter, table: str, run_id: str, key: str
) -> int | None:
    """The version of the table that this load committed (by its userMetadata), if any."""
    if not writer.exists(table):
        return None
    for entry in history(spark, writer.full_name(table)):
        metadata = entry.get("userMetadata")
        if is_commit_of(metadata if isinstance(metadata, str) else None, run_id, key):
            return int(str(entry["version"]))
    return None


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


def is_server_gone(error: BaseException) -> bool:
    """Whether an error is pyspark's Connect client saying the server went away."""
    return type(error).__module__.startswith(("pyspark.errors", "grpc")) and any(
        marker in str(error) or marker in type(error).__name__ for marker in _SERVER_GONE
    )


def server_gone_reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # A gRPC error's telling line is its details ("failed to connect to all addresses...").
    details = [line.split("=", 1)[1].strip(' "') for line in lines if line.startswith("details =")]
    said = (details or lines or [""])[0]
    return f"the Spark Connect server stopped or cannot be reached ({said[:200]})"


def short_error(error: BaseException, limit: int = 500) -> str:
    """One line for summaries. Spark errors from the JVM carry a whole Java
    stack trace (kilobytes) in their message; the traceback metadata keeps it.
    Their telling line is the first with Spark's error class that is not a
    mere wrapper, e.g. "[FAILED_READ_FILE.NO_HINT] Encountered error while
    reading file ..."; otherwise the first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [""]
    if isinstance(error, SparkUnavailable):
        return f"{SparkUnavailable.__name__}: {error}"
    if is_server_gone(error):  # outside an object's load: no write of its own
        return f"{SparkUnavailable.__name__}: {server_gone_reason(error)}"
    classed = [line for line in lines if SPARK_ERROR_CLASS.search(line)]
    telling = [
        line for line in classed if not any(wrapper in line for wrapper in WRAPPER_ERROR_CLASSES)
    ]
    line = (telling or classed or lines)[0].removeprefix("Caused by: ")
    if len(line) > limit:
        line = line[:limit] + "..."
    return f"{type(error).__name__}: {line}"
