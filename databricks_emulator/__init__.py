"""A local Databricks workspace emulator for development and tests.

Speaks the real Databricks REST API (jobs runs on classic and serverless compute, DBFS, the Files
API on Unity Catalog volumes, clusters, secrets) on 127.0.0.1 with a bearer token, and really
executes ``spark_python_task`` runs as local PySpark processes (Delta and Unity Catalog names
configured), so the unmodified ``dagster_databricks`` and ``databricks-sdk`` work against it.
See README.md beside this file.

    from databricks_emulator import run_emulator

    with run_emulator(root=tmp_path, cluster_start_seconds=0.0) as emu:
        client = WorkspaceClient(host=emu.host, token=emu.token)
        ...
        emu.stats(); emu.inject_faults(http_429=2); emu.set_secret("scope", "key", "value")

CLI: ``python -m databricks_emulator --help``.
"""

from .emulator import (
    DatabricksEmulator,
    EmulatorConfig,
    generate_token,
    load_cluster_config,
    run_emulator,
)

__all__ = [
    "DatabricksEmulator",
    "EmulatorConfig",
    "generate_token",
    "load_cluster_config",
    "run_emulator",
]
