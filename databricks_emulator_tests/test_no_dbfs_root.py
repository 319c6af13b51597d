"""A workspace whose DBFS root is disabled: DBFS API, dbutils, /dbfs and dbfs:/ refuse; volumes work."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dagster_databricks import DatabricksClient
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import PermissionDenied
from databricks.sdk.service import jobs

from databricks_emulator import run_emulator
from databricks_emulator.sandbox import _probe
from databricks_emulator_tests.test_databricks_emulator import task_output, wait_terminal

TASK = """
import os
try:
    dbutils.fs.ls("dbfs:/FileStore")
except Exception as exc:
    print("dbutils:", exc)
if MOUNTS:
    try:
        open("/dbfs/FileStore/x.txt", "w")
    except OSError as exc:
        print("fuse:", type(exc).__name__)
print("volume:", open("/Volumes/main/raw/landing/in.txt").read() if MOUNTS else "skipped")
print("dbutils volume:", [f.name for f in dbutils.fs.ls("/Volumes/main/raw/landing")])
try:
    spark.range(1).write.parquet("dbfs:/tmp/x")
except Exception as exc:
    print("spark:", "[DBFS_DISABLED] Public DBFS root is disabled" in str(exc))
# Unity Catalog tables do not need the DBFS root; hive_metastore managed tables do.
spark.sql("CREATE SCHEMA IF NOT EXISTS main.bronze")
spark.range(3).write.format("delta").saveAsTable("main.bronze.t")
print("uc table:", spark.table("main.bronze.t").count())
try:
    spark.range(1).write.format("delta").saveAsTable("default.legacy")
    print("hive_metastore: written")
except Exception as exc:
    print("hive_metastore: refused", "dbfs:/user/hive/warehouse" in str(exc))
"""


def test_no_dbfs_root(tmp_path: Path) -> None:
    with run_emulator(root=tmp_path / "emu", dbfs_root=False, volumes=["main.raw.landing"]) as emu:
        ws = WorkspaceClient(host=emu.host, token=emu.token)
        with pytest.raises(PermissionDenied) as denied:
            ws.dbfs.get_status("/FileStore")
        assert denied.value.error_code == "PERMISSION_DENIED"
        assert str(denied.value).startswith(
            "Public DBFS root is disabled. Access is denied on path: /FileStore"
        )
        # The step launcher's DBFS calls fail with it, clearly.
        client = DatabricksClient(host=emu.host, token=emu.token)
        with pytest.raises(PermissionDenied, match="Public DBFS root is disabled"):
            client.put_file(io.BytesIO(b"x"), "dbfs:///dagster_staging/x", overwrite=True)

        # Volumes keep working, code included.
        ws.files.upload("/Volumes/main/raw/landing/in.txt", io.BytesIO(b"volume data"))
        code = f"MOUNTS = {not _probe()}\n" + TASK
        ws.files.upload("/Volumes/main/raw/landing/job.py", io.BytesIO(code.encode()))
        task = {
            "task_key": "main",
            "existing_cluster_id": "c",
            "spark_python_task": {"python_file": "/Volumes/main/raw/landing/job.py"},
        }
        run_id = ws.jobs.submit(tasks=[jobs.SubmitTask.from_dict(task)]).bind()["run_id"]
        run, _ = wait_terminal(ws, run_id, timeout=300)
        output = task_output(ws, run)
        assert run.state is not None
        assert run.state.result_state == jobs.RunResultState.SUCCESS, output.error_trace
        logs = output.logs or ""
        assert (
            "dbutils: [DBFS_DISABLED] Public DBFS root is disabled. Access is denied on path: "
            "/FileStore SQLSTATE: 56038" in logs
        )
        assert "dbutils volume: ['in.txt', 'job.py']" in logs
        assert "spark: True" in logs
        assert "uc table: 3" in logs, output.error_trace
        assert "hive_metastore: refused True" in logs
        if not _probe():
            assert "fuse: FileNotFoundError" in logs and "volume: volume data" in logs
        assert not (emu.dbfs_root / "FileStore").exists()
