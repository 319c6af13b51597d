"""What a task process sees: the uploaded code only, /Volumes and /dbfs as a cluster's FUSE mounts."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import jobs

from databricks_emulator import DatabricksEmulator, run_emulator
from databricks_emulator.sandbox import _probe
from databricks_emulator_tests.test_databricks_emulator import (
    submit,
    task_output,
    wait_terminal,
)

needs_mounts = pytest.mark.skipif(bool(_probe()), reason=f"no mount namespaces here: {_probe()}")


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[DatabricksEmulator]:
    with run_emulator(root=tmp_path / "emu", volumes=["main.raw.landing"]) as emulator:
        yield emulator


@pytest.fixture
def ws(emu: DatabricksEmulator) -> WorkspaceClient:
    return WorkspaceClient(host=emu.host, token=emu.token)


def run_ok(ws: WorkspaceClient, run_id: int) -> str:
    run, _ = wait_terminal(ws, run_id)
    output = task_output(ws, run)
    assert run.state is not None
    assert run.state.result_state == jobs.RunResultState.SUCCESS, (
        run.state.state_message,
        output.error_trace,
    )
    return output.logs or ""


def product_wheel() -> bytes:
    """A wheel-shaped zip holding a stand-in ``fanout_dagster`` package."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("fanout_dagster/__init__.py", "SOURCE = 'uploaded wheel'\n")
        zf.writestr("fanout_dagster-0.1.0.dist-info/METADATA", "Name: fanout_dagster\n")
    return buffer.getvalue()


IMPORT_PRODUCT = """
import sys
try:
    import fanout_dagster
except ImportError as exc:
    print("IMPORT FAILED:", exc)
    raise
print("IMPORTED FROM", getattr(fanout_dagster, "SOURCE", fanout_dagster.__file__))
import databricks_emulator  # the emulator's own bootstrap stays importable
print("PATH HAS REPO ROOT:", any(p == REPO for p in sys.path))
"""


def test_a_task_imports_only_what_the_run_uploaded(ws: WorkspaceClient, tmp_path: Path) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    code = f"REPO = {repo!r}\n" + IMPORT_PRODUCT
    # The working tree's package is importable here (dev .pth / editable install)...
    import fanout_dagster  # noqa: F401

    # ...but not on the emulated cluster.
    run, _ = wait_terminal(ws, submit(ws, code))
    output = task_output(ws, run)
    assert run.state is not None and run.state.result_state == jobs.RunResultState.FAILED
    assert "No module named 'fanout_dagster'" in (output.error or "")

    # Uploaded as a whl library, it is importable (from the upload, not the working tree).
    ws.dbfs.put(
        "/wheels/fanout_dagster-0.1.0-py3-none-any.whl",
        contents=base64.b64encode(product_wheel()).decode(),
        overwrite=True,
    )
    logs = run_ok(
        ws,
        submit(
            ws,
            code,
            libraries=[{"whl": "dbfs:/wheels/fanout_dagster-0.1.0-py3-none-any.whl"}],
        ),
    )
    assert "IMPORTED FROM uploaded wheel" in logs and "PATH HAS REPO ROOT: False" in logs

    # A package in the python_file's folder (uploaded beside the script) is importable too.
    ws.dbfs.put(
        "/bundle/fanout_dagster/__init__.py",
        contents=base64.b64encode(b"SOURCE = 'beside the script'\n").decode(),
        overwrite=True,
    )
    ws.dbfs.put(
        "/bundle/main.py", contents=base64.b64encode(code.encode()).decode(), overwrite=True
    )
    task = {
        "task_key": "main",
        "existing_cluster_id": "c",
        "spark_python_task": {"python_file": "dbfs:/bundle/main.py"},
    }
    run_id = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)]).bind()["run_id"]
    assert "IMPORTED FROM beside the script" in run_ok(ws, run_id)

    # A wheel that is not there fails the run like a library installation failure.
    run, _ = wait_terminal(ws, submit(ws, code, libraries=[{"whl": "dbfs:/wheels/missing.whl"}]))
    assert run.state is not None and run.state.state_message is not None
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.INTERNAL_ERROR
    assert "Library installation failed" in run.state.state_message


LIBRARY_PROBE = """
import importlib.util
import json
from importlib import metadata
names = ["pyspark", "py4j", "pandas", "yaml", "pydantic", "pydantic_core", "dagster",
         "dagster_pipes", "databricks", "requests", "pytest"]
print("IMPORTABLE:", sorted(n for n in names if importlib.util.find_spec(n)))
print("DISTRIBUTIONS:", json.dumps(sorted(d.metadata["Name"].lower().replace("_", "-") for d in metadata.distributions())))
if USE_SPARK:
    import importlib.util as u
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType
    seen = F.udf(lambda _: ",".join(n for n in ("yaml", "dagster") if u.find_spec(n)), StringType())
    print("WORKER:", spark.range(1).select(seen("id")).first()[0])
"""


def distributions(logs: str) -> set[str]:
    line = next(x for x in logs.splitlines() if x.startswith("DISTRIBUTIONS:"))
    return set(json.loads(line.split(":", 1)[1]))


def test_a_task_imports_only_its_runtime_and_the_libraries_its_run_names(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    """The emulator's own environment has Dagster, the SDK, pytest...; a cluster has its
    runtime (here pyspark and what it needs) and what the run installs, nothing else."""
    # No libraries: the runtime only.
    logs = run_ok(ws, submit(ws, "USE_SPARK = False\n" + LIBRARY_PROBE))
    assert "IMPORTABLE: ['pandas', 'py4j', 'pyspark']" in logs, logs
    runtime = distributions(logs)
    assert {"pyspark", "py4j", "pandas", "pyarrow", "grpcio"} <= runtime
    assert not {"dagster", "pydantic", "pyyaml", "databricks-sdk", "pytest"} & runtime, runtime
    imported = json.loads(next((emu.root / "runs").rglob("imports.json")).read_text())
    # What the script imported, recorded by the task: the standard library only here.
    assert imported and set(imported) <= sys.stdlib_module_names, imported

    # PyPI libraries come with their dependencies, as pip installs them; the Spark Python
    # workers see the same; a library the emulator lacks is named on the task's stderr.
    libraries = [
        {"pypi": {"package": "pydantic>=2,<3"}},
        {"pypi": {"package": "pyyaml"}},
        {"pypi": {"package": "no-such-library-here==1.0"}},
    ]
    run_id = submit(ws, "USE_SPARK = True\n" + LIBRARY_PROBE, libraries=libraries)
    logs = run_ok(ws, run_id)
    assert "IMPORTABLE: ['pandas', 'py4j', 'pydantic', 'pydantic_core', 'pyspark', 'yaml']" in logs
    assert {"pydantic", "pydantic-core", "annotated-types", "pyyaml"} <= distributions(logs)
    assert "dagster" not in distributions(logs)
    assert "WORKER: yaml" in logs, logs
    stderr = next(iter(emu.run_page(run_id)["task_logs"].values()))["stderr_tail"]
    assert "[emulator] library: no-such-library-here==1.0" in stderr, stderr


@needs_mounts
def test_tasks_see_volumes_and_dbfs_as_fuse_mounts(
    emu: DatabricksEmulator, ws: WorkspaceClient
) -> None:
    ws.files.upload("/Volumes/main/raw/landing/in/a.csv", io.BytesIO(b"id,name\n1,x\n2,y\n"))
    ws.dbfs.put("/data/b.txt", contents=base64.b64encode(b"dbfs file").decode(), overwrite=True)
    code = """
    import glob, os
    print("glob:", sorted(glob.glob("/Volumes/main/raw/landing/in/*.csv")))
    print("size:", os.stat("/Volumes/main/raw/landing/in/a.csv").st_size)
    print("dbfs:", open("/dbfs/data/b.txt").read())
    with open("/Volumes/main/raw/landing/out.txt", "w") as fh:
        fh.write("written by the task")
    print("ls:", [f.name for f in dbutils.fs.ls("/Volumes/main/raw/landing")])
    """
    logs = run_ok(ws, submit(ws, code))
    assert "glob: ['/Volumes/main/raw/landing/in/a.csv']" in logs
    assert "size: 16" in logs and "dbfs: dbfs file" in logs
    assert "ls: ['in/', 'out.txt']" in logs
    out = ws.files.download("/Volumes/main/raw/landing/out.txt").contents
    assert out is not None and out.read() == b"written by the task"
    # Nothing was put in the host's mount points.
    assert os.listdir("/Volumes") == [] and os.listdir("/dbfs") == []


@needs_mounts
@pytest.mark.slow
def test_spark_reads_and_writes_volume_paths(ws: WorkspaceClient) -> None:
    ws.files.upload("/Volumes/main/raw/landing/in/a.csv", io.BytesIO(b"id,name\n1,x\n2,y\n"))
    code = """
    df = spark.read.option("header", True).csv("/Volumes/main/raw/landing/in/a.csv")
    print("rows:", df.count())
    df.write.mode("overwrite").parquet("dbfs:/Volumes/main/raw/landing/out/parquet")
    print("back:", spark.read.parquet("/Volumes/main/raw/landing/out/parquet").count())
    """
    logs = run_ok(ws, submit(ws, code))
    assert "rows: 2" in logs and "back: 2" in logs
    names = [
        e.name for e in ws.files.list_directory_contents("/Volumes/main/raw/landing/out/parquet")
    ]
    assert any(n and n.endswith(".parquet") for n in names)


def test_python_file_on_a_volume(ws: WorkspaceClient) -> None:
    ws.files.upload("/Volumes/main/raw/landing/code/job.py", io.BytesIO(b"print('from a volume')"))
    task = {
        "task_key": "main",
        "existing_cluster_id": "c",
        "spark_python_task": {"python_file": "/Volumes/main/raw/landing/code/job.py"},
    }
    run_id = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)]).bind()["run_id"]
    assert "from a volume" in run_ok(ws, run_id)
