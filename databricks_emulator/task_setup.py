"""Turning a task into a running process, and reading back what it left behind.

Per task, under ``<root>/runs/<run_id>/<task_key>/``:

* ``spark-conf/spark-defaults.conf`` -- emulator defaults + the cluster's ``spark_conf``; used via
  ``SPARK_CONF_DIR`` by *every* SparkSession the task creates, like a cluster's configuration;
* ``spark-conf/log4j2.properties`` -- quiet Spark logs (WARN+, known noise at ERROR);
* ``bootstrap.json`` -- what :mod:`.bootstrap` needs; ``secrets.json`` (0600, deleted by the task
  once read) -- the secret snapshot for ``dbutils.secrets``;
* ``stdout.log`` / ``stderr.log`` -- the process output; ``error.json`` -- an uncaught exception;
  ``imports.json`` -- the top-level modules the script imported, and from where;
* ``work/`` -- the driver's working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clusters import Cluster
from .model import Run, RunSettings, TaskRun
from .paths import DbfsRoot
from .process import TaskProcess
from .sandbox import VOLUMES_MOUNT, TaskMounts
from .secrets import SecretStore
from .task_libraries import SiteFolders, requirements_of
from .task_python import HIDDEN_PATHS_ENV, SITE_ENV
from .unity_catalog import CATALOG_CLASS, DISABLED_DBFS_CLASS, plugin_jar

JVM_QUICK_START_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
BOOTSTRAP_MODULE = f"{__package__}.bootstrap"
PACKAGE_DIR = Path(__file__).resolve().parent
# The folder holding our top-level package (the repository root): hidden from tasks, which get
# this package alone through the task interpreter (see task_python), as a cluster has none of the
# working tree -- only what the run uploaded.
PACKAGE_ROOT = Path(__file__).resolve().parents[len(__package__.split("."))]


@dataclass
class TaskHost:
    """What the emulator gives every task process: file systems, secrets, interpreter."""

    dbfs: DbfsRoot
    volumes_root: Path
    secrets: SecretStore
    settings: RunSettings
    mounts: TaskMounts
    python: str  # the emulated cluster's interpreter (task_python's wrapper)
    uc_root: Path  # Unity Catalog storage: <uc_root>/<catalog>/<schema>/<table>
    catalogs: list[str]  # Unity Catalog catalogs (three-level names)
    site_folders: SiteFolders  # the Python libraries each task sees (see task_libraries)
    dbfs_enabled: bool = True


DELTA_PACKAGE = "io.delta:delta-spark_4.1_2.13:4.1.0"


def cluster_spark_conf(host: TaskHost) -> dict[str, str]:
    """What every emulated cluster (and the serverless Spark Connect server) has configured:
    Delta as on Databricks, and the Unity Catalog catalogs of the workspace."""
    jar = plugin_jar()
    conf = {
        # As delta.configure_spark_with_delta_pip sets it up (jars resolved by Spark's ivy).
        "spark.jars.packages": DELTA_PACKAGE,
        "spark.jars": jar.as_uri(),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    }
    for catalog in host.catalogs:
        conf[f"spark.sql.catalog.{catalog}"] = CATALOG_CLASS
        conf[f"spark.sql.catalog.{catalog}.root"] = str(host.uc_root)
    return conf


class LibraryInstallError(OSError):
    """A library of the task cannot be installed (the run ends INTERNAL_ERROR)."""


def resolve_task_path(value: str, host: TaskHost) -> str:
    """python_file/parameters: ``dbfs:/`` and ``/dbfs/`` always map to the DBFS folder (as the FUSE
    mount would); ``/Volumes/...`` only when tasks cannot see the real mount."""
    value = host.dbfs.rewrite_task_path(value)
    if not host.mounts.available and (
        value == VOLUMES_MOUNT or value.startswith(VOLUMES_MOUNT + "/")
    ):
        return str(host.volumes_root / value[len(VOLUMES_MOUNT) :].lstrip("/"))
    return value


def library_paths(libraries: list[Any], host: TaskHost) -> list[str]:
    """Local files of the task's ``whl`` libraries, put on the task's path (a wheel of pure Python
    imports from the zip, as installed); ``pypi``, ``jar`` and other kinds are only recorded."""
    paths = []
    for library in libraries or []:
        if not isinstance(library, dict) or not isinstance(library.get("whl"), str):
            continue
        whl = library["whl"]
        if whl.startswith("dbfs:") or whl.startswith("/dbfs/"):
            local = Path(host.dbfs.rewrite_task_path(whl))
        elif whl.startswith(VOLUMES_MOUNT + "/"):
            local = host.volumes_root / whl[len(VOLUMES_MOUNT) :].lstrip("/")
        else:
            raise LibraryInstallError(
                f"Library installation failed for library due to user error for whl: {whl!r}. "
                "The emulator installs wheels from dbfs:/ or /Volumes/ paths only."
            )
        if not local.is_file():
            raise LibraryInstallError(
                f"Library installation failed for library due to user error for whl: {whl!r}. "
                f"Error messages: File {whl} does not exist."
            )
        paths.append(str(local))
    return paths


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
    run: Run, task: TaskRun, host: TaskHost, remote: str | None = None
) -> TaskProcess:
    """Start the task; ``remote`` (``sc://...``) makes it a serverless task on Spark Connect."""
    dbfs, secrets, settings = host.dbfs, host.secrets, host.settings
    libraries = list(task.spec.get("libraries", []))
    dependencies: list[str] = []
    if remote is not None:
        # Serverless: libraries come from the environment's dependencies.
        env_key = task.spec.get("environment_key")
        for env in run.environments:
            if env.get("environment_key") == env_key:
                dependencies = list((env.get("spec") or {}).get("dependencies", []))
        libraries += [
            {"whl": dep}
            for dep in dependencies
            if dep.endswith(".whl") and (dep.startswith("/") or dep.startswith("dbfs:"))
        ]
    wheels = library_paths(libraries, host)
    site_folder, library_notes = host.site_folders.for_task(
        requirements_of(libraries, dependencies)
    )
    task.dir.mkdir(parents=True, exist_ok=True)
    work_dir = task.dir / "work"
    work_dir.mkdir(exist_ok=True)
    conf_dir = task.dir / "spark-conf"
    conf_dir.mkdir(exist_ok=True)
    write_spark_conf(conf_dir, task, host)

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
        "python_file": resolve_task_path(python_file, host),
        "parameters": [resolve_task_path(p, host) for p in spt.get("parameters", [])],
        "dbfs_root": str(dbfs.root),
        "volumes_root": str(host.volumes_root),
        "library_paths": wheels,
        "library_notes": library_notes,
        "imports_file": str(task.dir / "imports.json"),
        "secrets_file": str(secrets_file),
        "error_file": str(task.dir / "error.json"),
        "eager_spark": settings.eager_spark,
        "serverless": remote is not None,
        "dbfs_enabled": host.dbfs_enabled,
    }
    spec_file.write_text(json.dumps(spec, indent=2))
    return TaskProcess(
        host.mounts.wrap([host.python, "-m", BOOTSTRAP_MODULE, str(spec_file)]),
        env=task_env(run, task, host, conf_dir, wheels, site_folder, remote),
        cwd=work_dir,
        stdout=task.stdout_path,
        stderr=task.stderr_path,
    )


_CALLER_SPARK_SETTINGS = (
    "PYSPARK_SUBMIT_ARGS",
    "SPARK_CONF_DIR",
    "SPARK_REMOTE",
    "SPARK_CONNECT_MODE_ENABLED",
    "SPARK_API_MODE",
)


def callers_only(name: str) -> bool:
    return name.startswith("DATABRICKS_") or name in _CALLER_SPARK_SETTINGS


def task_env(
    run: Run,
    task: TaskRun,
    host: TaskHost,
    conf_dir: Path,
    wheels: list[str],
    site_folder: Path,
    remote: str | None = None,
) -> dict[str, str]:
    # A cluster does not know the caller's credentials or Spark launcher settings,
    # nor pyspark's process-wide mode (a caller that opened a Spark Connect
    # session carries SPARK_CONNECT_MODE_ENABLED, which would turn a classic
    # cluster's getOrCreate() into a Connect one).
    env = {k: v for k, v in os.environ.items() if not callers_only(k)}
    hidden = str(PACKAGE_ROOT)
    # The run's wheels (also for Spark's Python workers), never the working tree.
    pythonpath = [
        *wheels,
        *(
            p
            for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.realpath(p) != hidden
        ),
    ]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            HIDDEN_PATHS_ENV: hidden,
            # The task's libraries, instead of the server's site-packages (task_libraries).
            SITE_ENV: str(site_folder),
            "PYTHONUNBUFFERED": "1",  # so get-output shows progress while the task runs
            "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": "127.0.0.1",
            # Spark scratch space in the task folder (this env var, unlike spark.local.dir, does
            # not make Spark print a warning).
            "SPARK_LOCAL_DIRS": str(task.dir / "spark-local"),
            "PYSPARK_PYTHON": host.python,
            "PYSPARK_DRIVER_PYTHON": host.python,
            "DB_CLUSTER_ID": task.cluster.cluster_id,
            "DATABRICKS_EMULATOR": "1",
            "DATABRICKS_EMULATOR_DBFS_ROOT": str(host.dbfs.root),
            "DATABRICKS_EMULATOR_RUN_ID": str(run.run_id),
            "DATABRICKS_EMULATOR_TASK_RUN_ID": str(task.run_id),
        }
    )
    env.update(task.cluster.spark_env_vars)
    if remote is not None:
        # Serverless: SparkSession.builder.getOrCreate() gives a Spark Connect session.
        env["SPARK_REMOTE"] = remote
        env.pop("DB_CLUSTER_ID", None)
    return env


def write_spark_conf(conf_dir: Path, task: TaskRun, host: TaskHost) -> None:
    dbfs, settings = host.dbfs, host.settings
    cluster: Cluster = task.cluster
    dbfs_uri = dbfs.root.as_uri()
    conf = {
        "spark.app.name": f"emulator-{cluster.cluster_id}-{task.task_key}",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        # Databricks' default warehouse, dbfs:/user/hive/warehouse, in our DBFS folder (without a
        # DBFS root, hive_metastore managed tables fail there as on Databricks).
        "spark.sql.warehouse.dir": f"{dbfs_uri if host.dbfs_enabled else 'dbfs:'}/user/hive/warehouse",
        # Make dbfs:/ URIs work in Spark itself: Hadoop's view file system with every path
        # falling back to the local DBFS folder, so spark.read/write("dbfs:/x") hit <root>/dbfs/x.
        "spark.hadoop.fs.dbfs.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme",
        "spark.hadoop.fs.viewfs.overload.scheme.target.dbfs.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        "spark.hadoop.fs.viewfs.mounttable.default.linkFallback": dbfs_uri,
        # dbfs:/Volumes/... is the volume, as on Databricks.
        "spark.hadoop.fs.viewfs.mounttable.default.link./Volumes": host.volumes_root.as_uri(),
        "spark.hadoop.fs.dbfs.impl.disable.cache": "true",
        **(
            {}
            if host.dbfs_enabled
            else {
                # No DBFS root: dbfs:/ fails like on Databricks ([DBFS_DISABLED] ...).
                "spark.hadoop.fs.dbfs.impl": DISABLED_DBFS_CLASS,
            }
        ),
        **cluster_spark_conf(host),
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
