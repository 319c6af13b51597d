"""The emulator's Spark plugins (Java): Unity Catalog three-level names and a disabled ``dbfs:/``.

``src/databricks_emulator/UnityCatalog.java`` is a catalog plugin registered as
``spark.sql.catalog.<catalog>`` for each Unity Catalog catalog of the workspace (see its
javadoc); ``DisabledDbfsFileSystem.java`` is ``dbfs:/`` on a workspace without a DBFS root.

They are compiled with the JDK's ``javac`` against the jars of the installed pyspark into
``build/databricks-emulator-spark.jar`` (ignored by git): by ``make install``, or here on first
use when the jar is missing or older than its sources. Without ``javac`` that fails with one
clear error.

Why not something from Maven Central: the open-source Unity Catalog Spark connector
(``io.unitycatalog:unitycatalog-spark``) gives three-level names only against a running Unity
Catalog server; this plugin needs no server and keeps Delta's own catalog in charge of tables.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
BUILD_DIR = HERE / "build"
JAR_NAME = "databricks-emulator-spark.jar"
CATALOG_CLASS = "databricks_emulator.UnityCatalog"
DISABLED_DBFS_CLASS = "databricks_emulator.DisabledDbfsFileSystem"

_lock = threading.Lock()


class PluginBuildError(OSError):
    """The plugins cannot be built (a task needing them cannot start)."""


def _sources() -> list[Path]:
    return sorted(SOURCES.rglob("*.java"))


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for source in _sources():
        digest.update(source.relative_to(SOURCES).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _spark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def plugin_jar(build_dir: Path = BUILD_DIR) -> Path:
    """The plugin jar, compiled first if missing or stale."""
    jar = build_dir / JAR_NAME
    stamp = build_dir / (JAR_NAME + ".sha256")
    with _lock:
        wanted = _fingerprint()
        if jar.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
            return jar
        _build(build_dir, jar, stamp, wanted)
        return jar


def _build(build_dir: Path, jar: Path, stamp: Path, fingerprint: str) -> None:
    javac = shutil.which("javac") or (
        str(Path(os.environ["JAVA_HOME"]) / "bin" / "javac")
        if os.environ.get("JAVA_HOME")
        and (Path(os.environ["JAVA_HOME"]) / "bin" / "javac").is_file()
        else None
    )
    if javac is None:
        raise PluginBuildError(
            "The Databricks emulator needs a Java 17 JDK (javac) to build its Spark plugins "
            "(Unity Catalog names, Delta on every cluster): install e.g. openjdk-17-jdk-headless."
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_dir, prefix="classes-") as classes:
        proc = subprocess.run(
            [
                javac,
                "-nowarn",
                "-encoding",
                "UTF-8",
                "--release",
                "17",
                "-d",
                classes,
                "-cp",
                str(_spark_jars() / "*"),
                *[str(s) for s in _sources()],
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise PluginBuildError(f"javac failed:\n{proc.stderr[-4000:]}")
        fd, temp_jar = tempfile.mkstemp(dir=build_dir, suffix=".jar.tmp")
        os.close(fd)
        with zipfile.ZipFile(temp_jar, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n\n")
            for path in sorted(Path(classes).rglob("*.class")):
                zf.write(path, path.relative_to(classes).as_posix())
        os.replace(temp_jar, jar)
    stamp.write_text(fingerprint + "\n")
