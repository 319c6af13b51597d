"""Task-side entry point: ``python -m databricks_emulator.bootstrap SPEC``.

Plays the part of the Databricks driver for a ``spark_python_task``: sets up the globals a
script finds on a cluster (``spark``, ``sc``, ``dbutils``), then runs ``python_file`` as
``__main__`` with ``sys.argv = [python_file, *parameters]``.

* ``spark`` / ``sc`` are created on first use (stand-ins that forward every attribute). On a
  cluster they already exist; here creating a JVM costs seconds, and many tasks (and the dagster
  step launcher's setup) never touch them. With ``eager_spark`` they are the real objects.
  The session's settings come from ``$SPARK_CONF_DIR/spark-defaults.conf`` written by the
  server (cluster ``spark_conf`` + emulator defaults), so a ``SparkSession.builder.getOrCreate()``
  in user code gets exactly the same configuration.
* ``from pyspark.dbutils import DBUtils`` works, as on a cluster.
* On SIGTERM (cancel) the script is interrupted with ``TaskCancelled`` (a BaseException, so
  ``except Exception`` in user code does not swallow it) and Spark is shut down.
* At the end the Spark JVM is stopped and *reaped by this process*, so no JVM outlives the task.
* An uncaught exception is written to the error file (the server turns it into
  ``error``/``error_trace`` of ``runs/get-output``) and printed to stderr.
* Libraries the run named that the emulator could not provide are listed on stderr first.
* At the end, the top-level modules the script imported (and the files they came from) are
  written to ``imports.json`` in the task's folder: what the code really needed.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Any

from .dbutils import DBUtils
from .paths import DbfsRoot


class TaskCancelled(BaseException):
    """Raised in the task's main thread when the run is cancelled (SIGTERM)."""


class LazySparkSession:
    """Stands in for ``spark`` and creates the real SparkSession on first attribute access."""

    def __init__(self) -> None:
        object.__setattr__(self, "_session", None)
        object.__setattr__(self, "_lock", threading.Lock())

    def _get(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    from pyspark.sql import SparkSession

                    object.__setattr__(self, "_session", SparkSession.builder.getOrCreate())
        return self._session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)

    def __dir__(self) -> list[str]:
        return dir(self._get())

    def __repr__(self) -> str:
        return (
            repr(self._session)
            if self._session is not None
            else "<SparkSession (created on first use)>"
        )


class LazySparkContext:
    """Stands in for ``sc`` (the session's SparkContext), created on first use."""

    def __init__(self, session: LazySparkSession) -> None:
        object.__setattr__(self, "_session", session)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session.sparkContext, name)

    def __dir__(self) -> list[str]:
        return dir(self._session.sparkContext)

    def __repr__(self) -> str:
        return "<SparkContext (created on first use)>"


def _install_pyspark_dbutils(dbutils: DBUtils) -> None:
    """Make ``from pyspark.dbutils import DBUtils; DBUtils(spark)`` return our dbutils."""
    module = types.ModuleType("pyspark.dbutils")

    class _DBUtilsFactory:
        def __new__(cls, spark: Any = None) -> DBUtils:  # type: ignore[misc]
            return dbutils

    module.DBUtils = _DBUtilsFactory  # type: ignore[attr-defined]
    sys.modules["pyspark.dbutils"] = module


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise TaskCancelled("run cancelled")


def _stop_spark() -> None:
    """Stop Spark if anything started it, and wait for the JVM so it is reaped by us."""
    if "pyspark" not in sys.modules:
        return
    if "pyspark.sql.connect.session" in sys.modules:
        # Serverless: end the Spark Connect session (the server is the workspace's).
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        try:
            active = ConnectSession.getActiveSession()
            if active is not None:
                active.stop()
        except Exception:  # noqa: BLE001 - the server may be gone; keep shutting down
            pass
    from pyspark import SparkContext

    gateway = SparkContext._gateway  # noqa: SLF001 - the only handle on the JVM process
    if gateway is None:
        return
    try:
        if SparkContext._active_spark_context is not None:  # noqa: SLF001
            SparkContext._active_spark_context.stop()  # noqa: SLF001
    except Exception:  # noqa: BLE001 - the JVM may already be gone (cancel); keep shutting down
        pass
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return
    try:
        # The PySpark gateway JVM exits when its stdin closes.
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=20)
    except Exception:  # noqa: BLE001
        proc.kill()
        proc.wait()


def _write_error(error_file: Path, exc: BaseException) -> None:
    trace = "".join(traceback.format_exception(exc))
    summary = "".join(traceback.format_exception_only(exc)).strip()
    error_file.write_text(json.dumps({"error": summary, "error_trace": trace}))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    secrets_file = Path(spec["secrets_file"])
    secrets: dict[str, dict[str, str]] = json.loads(secrets_file.read_text())
    secrets_file.unlink()  # secret values do not stay on disk longer than needed

    volumes_root = spec.get("volumes_root")
    dbutils = DBUtils(
        DbfsRoot(spec["dbfs_root"]),
        secrets,
        Path(volumes_root) if volumes_root else None,
        dbfs_enabled=spec.get("dbfs_enabled", True),
    )
    spark = LazySparkSession()
    sc = LazySparkContext(spark)
    _install_pyspark_dbutils(dbutils)
    signal.signal(signal.SIGTERM, _on_sigterm)

    python_file: str = spec["python_file"]
    sys.argv = [python_file, *spec["parameters"]]
    # Like `python python_file`: the script's folder first on sys.path. The rest is the cluster's
    # interpreter path (see task_python): this package, the run's wheels, site-packages.
    sys.path.insert(0, os.path.dirname(os.path.abspath(python_file)))

    for note in spec.get("library_notes", []):
        print(f"[emulator] library: {note}", file=sys.stderr, flush=True)
    imported_before = set(sys.modules)
    exit_code = 0
    try:
        script_globals: dict[str, Any] = {"spark": spark, "sc": sc, "dbutils": dbutils}
        if spec.get("eager_spark"):
            # Pay the JVM start now and hand out the real objects (isinstance checks work).
            session = spark._get()  # noqa: SLF001
            script_globals.update(spark=session, sc=session.sparkContext)
        runpy.run_path(python_file, init_globals=script_globals, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _write_error(Path(spec["error_file"]), exc)
            exit_code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a FAILED run
        _write_error(Path(spec["error_file"]), exc)
        traceback.print_exc()
        exit_code = 143 if isinstance(exc, TaskCancelled) else 1
    finally:
        # The script is over: a cancel arriving now may simply terminate us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdout.flush()
        if spec.get("imports_file"):
            _write_imports(Path(spec["imports_file"]), imported_before)
        _stop_spark()
    return exit_code


def _write_imports(path: Path, imported_before: set[str]) -> None:
    """``{top-level module: file}`` of every module the script imported (builtins: null)."""
    found: dict[str, str | None] = {}
    for name in sorted(set(sys.modules) - imported_before):
        top = name.partition(".")[0]
        if top in found:
            continue
        module = sys.modules.get(top) or sys.modules.get(name)
        where = getattr(module, "__file__", None) or next(
            iter(getattr(module, "__path__", [])), None
        )
        found[top] = str(where) if where else None
    path.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
