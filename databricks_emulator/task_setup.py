"""Turning a task into a running process, and reading back what it left behind.

Per task, under ``<root>/runs/<run_id>/<task_key>/``:

* ``spark-conf/spark-defaults.conf`` -- emulator defaults + the cluster's ``spark_conf``; used via
  ``SPARK_CONF_DIR`` by *every* SparkSession the task creates, like a cluster's configuration;
* ``spark-conf/log4j2.properties`` -- quiet Spark logs (WARN+, known noise at ERROR);
* ``bootstrap.json`` -- what :mod:`.bootstrap` needs; ``secrets.json`` (0600, deleted by the task
  once read) -- the secret snapshot for ``dbutils.secrets``;
* ``stdout.log`` / ``stderr.log`` -- the process output; ``error.json`` -- an uncaught exception;
* ``work/`` -- the driver's working directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .clusters import Cluster
from .model import Run, RunSettings, TaskRun
from .paths import DbfsRoot
from .process import TaskProcess
from .secrets import SecretStore

JVM_QUICK_START_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
BOOTSTRAP_MODULE = f"{__package__}.bootstrap"
# The folder holding our top-level package: the task process needs it on PYTHONPATH to import
# the bootstrap even when the project is not pip-installed.
PACKAGE_ROOT = Path(__file__).resolve().parents[len(__package__.split("."))]

# Spark's own logging, quiet like a job's driver log: WARN and up on stderr, minus known noise.
# (Root at WARN also stops PySpark's "Setting default log level" banner.)
LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = emulatorStderr
appender.emulatorStderr.type = Console
appender.emulatorStderr.name = emulatorStderr
appender.emulatorStderr.target = SYSTEM_ERR
appender.emulatorStderr.layout.type = PatternLayout
appender.emulatorStderr.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
logger.sparkutils.name = org.apache.spark.util.Utils
logger.sparkutils.level = error
"""


def start_task_process(
    run: Run, task: TaskRun, dbfs: DbfsRoot, secrets: SecretStore, settings: RunSettings
) -> TaskProcess:
    task.dir.mkdir(parents=True, exist_ok=True)
    work_dir = task.dir / "work"
    work_dir.mkdir(exist_ok=True)
    conf_dir = task.dir / "spark-conf"
    conf_dir.mkdir(exist_ok=True)
    write_spark_conf(conf_dir, task, dbfs, settings)

    spt = task.spec["spark_python_task"]
    python_file: str = spt["python_file"]
    if python_file.startswith("file:"):
        python_file = python_file[len("file:") :]
    secrets_file = task.dir / "secrets.json"
    fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(secrets.snapshot(), fh)
    spec_file = task.dir / "bootstrap.json"
    spec = {
        # /dbfs/... and dbfs:/... become paths in the local DBFS folder, as the FUSE mount would.
        "python_file": dbfs.rewrite_task_path(python_file),
        "parameters": [dbfs.rewrite_task_path(p) for p in spt.get("parameters", [])],
        "dbfs_root": str(dbfs.root),
        "secrets_file": str(secrets_file),
        "error_file": str(task.dir / "error.json"),
        "eager_spark": settings.eager_spark,
    }
    spec_file.write_text(json.dumps(spec, indent=2))
    return TaskProcess(
        [sys.executable, "-m", BOOTSTRAP_MODULE, str(spec_file)],
        env=task_env(run, task, dbfs, conf_dir),
        cwd=work_dir,
        stdout=task.stdout_path,
        stderr=task.stderr_path,
    )


def task_env(run: Run, task: TaskRun, dbfs: DbfsRoot, conf_dir: Path) -> dict[str, str]:
    # A cluster does not know the caller's credentials or Spark launcher settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DATABRICKS_") and k not in ("PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR")
    }
    pythonpath = [str(PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONUNBUFFERED": "1",  # so get-output shows progress while the task runs
            "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": "127.0.0.1",
            # Spark scratch space in the task folder (this env var, unlike spark.local.dir, does
            # not make Spark print a warning).
            "SPARK_LOCAL_DIRS": str(task.dir / "spark-local"),
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "DB_CLUSTER_ID": task.cluster.cluster_id,
            "DATABRICKS_EMULATOR": "1",
            "DATABRICKS_EMULATOR_DBFS_ROOT": str(dbfs.root),
            "DATABRICKS_EMULATOR_RUN_ID": str(run.run_id),
            "DATABRICKS_EMULATOR_TASK_RUN_ID": str(task.run_id),
        }
    )
    env.update(task.cluster.spark_env_vars)
    return env


def write_spark_conf(conf_dir: Path, task: TaskRun, dbfs: DbfsRoot, settings: RunSettings) -> None:
    cluster: Cluster = task.cluster
    dbfs_uri = dbfs.root.as_uri()
    conf = {
        "spark.app.name": f"emulator-{cluster.cluster_id}-{task.task_key}",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        # Databricks' default warehouse, dbfs:/user/hive/warehouse, in our DBFS folder.
        "spark.sql.warehouse.dir": f"{dbfs_uri}/user/hive/warehouse",
        # Make dbfs:/ URIs work in Spark itself: Hadoop's view file system with every path
        # falling back to the local DBFS folder, so spark.read/write("dbfs:/x") hit <root>/dbfs/x.
        "spark.hadoop.fs.dbfs.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme",
        "spark.hadoop.fs.viewfs.overload.scheme.target.dbfs.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        "spark.hadoop.fs.viewfs.mounttable.default.linkFallback": dbfs_uri,
        "spark.hadoop.fs.dbfs.impl.disable.cache": "true",
        **(
            {"spark.driver.extraJavaOptions": JVM_QUICK_START_OPTIONS}
            if settings.jvm_quick_start
            else {}
        ),
        **settings.extra_spark_conf,
        **cluster.spark_conf,
        # The emulator, not the cluster spec, decides how many local cores a task uses.
        "spark.master": settings.spark_master,
    }
    lines = [f"{k} {v}" for k, v in conf.items() if "\n" not in k + v]
    (conf_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
    (conf_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)


def read_error(task: TaskRun, exit_code: int) -> tuple[str, str]:
    """(error, error_trace) of a failed task: the bootstrap's error file, else the stderr tail."""
    error_file = task.dir / "error.json"
    if error_file.exists():
        try:
            data = json.loads(error_file.read_text())
            return str(data.get("error") or f"Exit code {exit_code}"), str(
                data.get("error_trace") or ""
            )
        except (OSError, ValueError):
            pass
    return f"The task process exited with code {exit_code}", tail(task.stderr_path, 64 * 1024)[0]


def deliver_cluster_logs(task: TaskRun, dbfs: DbfsRoot) -> None:
    """Append the driver logs under ``cluster_log_conf.dbfs.destination``, as clusters do."""
    cluster = task.cluster
    destination = ((cluster.spec.get("cluster_log_conf") or {}).get("dbfs") or {}).get(
        "destination"
    )
    if not destination:
        return
    try:
        driver_dir = dbfs.local(destination) / cluster.cluster_id / "driver"
    except ValueError:
        return
    driver_dir.mkdir(parents=True, exist_ok=True)
    for name, source in (("stdout", task.stdout_path), ("stderr", task.stderr_path)):
        if source.exists():
            with (driver_dir / name).open("ab") as out:
                out.write(source.read_bytes())


def tail(path: Path, limit: int) -> tuple[str, bool]:
    """The last ``limit`` bytes of a log file, and whether it was truncated."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "", False
    with path.open("rb") as fh:
        if size > limit:
            fh.seek(size - limit)
        return fh.read().decode("utf-8", errors="replace"), size > limit
