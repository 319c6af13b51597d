"""The emulator object: wires DBFS, clusters, runs, secrets, faults and stats to an HTTP server.

Use :func:`run_emulator` in tests (server in a background thread of the current process) or
``python -m databricks_emulator`` for a foreground server.

Layout of ``root``: ``dbfs/`` (what DBFS paths map to), ``runs/<run_id>/<task_key>/`` (logs,
Spark conf, working dir of each task), ``uploads/`` (in-flight DBFS streams).
"""

from __future__ import annotations

import contextlib
import json
import secrets as _secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clusters import ClusterManager
from .dbfs import DbfsService
from .errors import invalid_parameter
from .faults import FaultInjector
from .model import TERMINAL_STATES, RunSettings
from .permissions import PermissionStore
from .runs import RunManager
from .sandbox import TaskMounts
from .secrets import SecretStore
from .server import EmulatorHTTPServer
from .serverless import ConnectServer
from .stats import Stats
from .task_libraries import RUNTIME_LIBRARIES, SiteFolders
from .task_python import write_wrapper
from .task_setup import PACKAGE_DIR, TaskHost
from .volumes import FilesApi, VolumeStore


@dataclass
class EmulatorConfig:
    root: Path
    token: str
    port: int = 0  # 0: pick a free port
    cluster_start_seconds: float = 0.0
    cancel_grace_seconds: float = 5.0
    spark_master: str = "local[2]"
    eager_spark: bool = False  # True: create `spark` before the script runs, as a cluster has it
    auto_create_clusters: bool = (
        True  # False: unknown existing_cluster_id is rejected (real behaviour)
    )
    # {cluster_id: {"spark_conf": {...}, "spark_env_vars": {...}, "cluster_name": ..., "running": bool}}
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_spark_conf: dict[str, str] = field(default_factory=dict)  # under the cluster's spark_conf
    jvm_quick_start: bool = (
        True  # faster driver JVM start (C1 JIT, serial GC); see runs.RunSettings
    )
    # Unity Catalog volumes ("catalog.schema.volume") for the Files API and /Volumes in tasks.
    volumes: list[str] = field(default_factory=list)
    # Unity Catalog catalogs tasks can use with three-level names (volumes add theirs).
    catalogs: list[str] = field(default_factory=lambda: ["main"])
    # The documented limit of concurrently active task runs per workspace (429 beyond it).
    max_active_task_runs: int = 1000
    # Serverless compute for jobs (tasks with environment_key and no cluster).
    serverless: bool = True
    # False: a workspace whose "DBFS root and mounts" access is disabled.
    dbfs_root: bool = True
    # What every task can import besides the standard library and what its run names (pip
    # requirements; see task_libraries). The default is pyspark with what it needs.
    runtime_libraries: list[str] = field(default_factory=lambda: list(RUNTIME_LIBRARIES))


def load_cluster_config(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Read a JSON file ``{"clusters": {id: spec}, "secrets": {scope: {key: value}}}``."""
    data = json.loads(Path(path).read_text())
    clusters = data.get("clusters", {})
    if isinstance(clusters, list):  # also accept [{"cluster_id": ..., ...}]
        clusters = {
            c["cluster_id"]: {k: v for k, v in c.items() if k != "cluster_id"} for c in clusters
        }
    return dict(clusters), dict(data.get("secrets", {}))


def load_volume_config(path: Path) -> list[str]:
    """The ``"volumes": ["catalog.schema.volume", ...]`` list of the same config file."""
    volumes = json.loads(Path(path).read_text()).get("volumes", [])
    if not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes):
        raise ValueError(f"{path}: 'volumes' must be a list of catalog.schema.volume names")
    return list(volumes)


class DatabricksEmulator:
    """A local Databricks workspace: REST API on 127.0.0.1, tasks as local PySpark processes."""

    def __init__(self, config: EmulatorConfig):
        if not config.token:
            raise ValueError("The emulator needs a non-empty token")
        self.config = config
        self.root = Path(config.root).resolve()
        self.token = config.token
        self.stats_recorder = Stats()
        self.faults = FaultInjector()
        self.secrets = SecretStore()
        self.permissions = PermissionStore()
        self.dbfs = DbfsService(self.root / "dbfs", self.root / "uploads", enabled=config.dbfs_root)
        self.volumes = VolumeStore(self.root / "volumes")
        for name in config.volumes:
            self.volumes.create(name)
        self.files_api = FilesApi(self.volumes, self.root / "uploads")
        self.clusters = ClusterManager(
            self.stats_recorder,
            config.cluster_start_seconds,
            auto_create=config.auto_create_clusters,
        )
        for cluster_id, spec in config.clusters.items():
            spec = dict(spec)
            running = bool(spec.pop("running", False))
            self.clusters.define(cluster_id, spec, running=running)
        self.task_host = TaskHost(
            dbfs=self.dbfs.paths,
            volumes_root=self.volumes.root,
            secrets=self.secrets,
            settings=RunSettings(
                spark_master=config.spark_master,
                eager_spark=config.eager_spark,
                cancel_grace_seconds=config.cancel_grace_seconds,
                extra_spark_conf=dict(config.extra_spark_conf),
                jvm_quick_start=config.jvm_quick_start,
                max_active_task_runs=config.max_active_task_runs,
                serverless=config.serverless,
            ),
            mounts=TaskMounts(
                self.volumes.root, self.dbfs.paths.root, dbfs_enabled=config.dbfs_root
            ),
            python=write_wrapper(str(self.root / "task-env"), str(PACKAGE_DIR), sys.executable),
            uc_root=self.root / "unity-catalog",
            catalogs=sorted({*config.catalogs, *self.volumes.catalogs()}),
            site_folders=SiteFolders(self.root / "task-env" / "site", config.runtime_libraries),
            dbfs_enabled=config.dbfs_root,
        )
        self.connect_server = ConnectServer(self.task_host, self.root / "serverless")
        self.runs = RunManager(
            self.root / "runs",
            self.task_host,
            self.clusters,
            self.stats_recorder,
            base_url=lambda: self.host,
            connect_url=self.connect_server.url,
        )
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None  # kept after stop() so run pages/URLs stay readable

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> DatabricksEmulator:
        """Bind 127.0.0.1 (loopback only) and serve in a background thread."""
        self._bind()
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="databricks-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def _bind(self) -> None:
        # Loopback only: the emulator runs arbitrary submitted code and must not be reachable.
        self._server = EmulatorHTTPServer(("127.0.0.1", self.config.port), self)
        self._port = int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting requests, kill every running task, release the port."""
        if self._server is not None:
            self._server.stopped = True
        self.runs.shutdown()
        self.clusters.shutdown()
        self.connect_server.stop()
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=10)
            self._server.server_close()
            self._server = None
            self._thread = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The emulator is not started")
        return self._port

    @property
    def host(self) -> str:
        # An explicit http:// scheme matters: the SDK prefixes scheme-less hosts with https://.
        return f"http://127.0.0.1:{self.port}"

    @property
    def dbfs_root(self) -> Path:
        return self.dbfs.paths.root

    # -- Python API for tests and benchmarks ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.stats_recorder.snapshot()

    def reset_stats(self) -> None:
        self.stats_recorder.reset()

    def inject_faults(
        self,
        *,
        drop_submit_responses: int = 0,
        unavailable_after_submit: int = 0,
        http_429: int = 0,
        http_503: int = 0,
        path_prefix: str | None = None,
        method: str | None = None,
        retry_after_seconds: int | None = 1,
    ) -> None:
        """See :mod:`.faults`. Faults add up; ``clear_faults()`` removes pending ones."""
        self.faults.inject(
            drop_submit_responses=drop_submit_responses,
            unavailable_after_submit=unavailable_after_submit,
            http_429=http_429,
            http_503=http_503,
            path_prefix=path_prefix,
            method=method,
            retry_after_seconds=retry_after_seconds,
        )

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_secret(self, scope: str, key: str, value: str | bytes) -> None:
        self.secrets.set(scope, key, value)

    def define_cluster(
        self,
        cluster_id: str,
        *,
        spark_conf: dict[str, str] | None = None,
        spark_env_vars: dict[str, str] | None = None,
        running: bool = False,
        **spec: Any,
    ) -> None:
        """Declare an all-purpose cluster whose conf/env vars apply to tasks that use it."""
        full = dict(spec)
        if spark_conf:
            full["spark_conf"] = dict(spark_conf)
        if spark_env_vars:
            full["spark_env_vars"] = dict(spark_env_vars)
        self.clusters.define(cluster_id, full, running=running)

    def create_volume(self, name: str) -> Path:
        """Declare the Unity Catalog volume ``catalog.schema.volume``; returns its folder."""
        folder = self.volumes.create(name)
        catalog = name.split(".")[0]
        if catalog not in self.task_host.catalogs:
            self.task_host.catalogs.append(catalog)  # tasks started from now on have it
        return folder

    def run_state_history(self, run_id: int) -> list[str]:
        """Every run-level life_cycle_state the run went through, in order."""
        return self.runs.state_history(run_id)

    def run_page(self, run_id: int) -> dict[str, Any]:
        return self.runs.page(run_id)

    def wait_for_run(self, run_id: int, timeout: float = 120.0) -> dict[str, Any]:
        """Block until the run is in a terminal state; returns its runs/get body."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.runs.get({"run_id": str(run_id)})
            if body["state"]["life_cycle_state"] in TERMINAL_STATES:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {run_id} still {body['state']['life_cycle_state']} after {timeout}s"
                )
            time.sleep(0.1)

    # -- REST handlers that live here (not Databricks services) --------------------------------

    def current_user(self, _query: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "1",
            "userName": "emulator@localhost",
            "displayName": "Databricks emulator",
            "active": True,
            "emails": [{"value": "emulator@localhost", "primary": True}],
        }

    def admin_reset_stats(self, _body: dict[str, Any]) -> dict[str, Any]:
        self.reset_stats()
        return {}

    def admin_inject_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        allowed = {
            "drop_submit_responses",
            "unavailable_after_submit",
            "http_429",
            "http_503",
            "path_prefix",
            "method",
            "retry_after_seconds",
        }
        unknown = set(body) - allowed
        if unknown:
            raise invalid_parameter(f"Unknown fault fields: {sorted(unknown)}")
        try:
            self.inject_faults(**body)
        except (TypeError, ValueError) as exc:
            raise invalid_parameter(str(exc)) from None
        return self.faults.pending()

    def admin_clear_faults(self, _body: dict[str, Any]) -> dict[str, Any]:
        self.clear_faults()
        return {}

    def admin_set_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("scope", "key", "value"):
            if not isinstance(body.get(name), str):
                raise invalid_parameter(f"Missing required field: {name}")
        self.set_secret(body["scope"], body["key"], body["value"])
        return {}

    def admin_define_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = dict(body)
        cluster_id = spec.pop("cluster_id", None)
        if not isinstance(cluster_id, str) or not cluster_id:
            raise invalid_parameter("Missing required field: cluster_id")
        running = bool(spec.pop("running", False))
        self.clusters.define(cluster_id, spec, running=running)
        return {}

    def admin_create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            self.create_volume(body.get("name", ""))
        except ValueError as exc:
            raise invalid_parameter(str(exc)) from None
        return {"volumes": self.volumes.names()}

    def admin_list_volumes(self, _query: dict[str, Any]) -> dict[str, Any]:
        return {"volumes": self.volumes.names()}

    def admin_run_page(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.run_page(int(params["run_id"]))


@contextlib.contextmanager
def run_emulator(
    root: Path | str | None = None,
    token: str | None = None,
    cluster_start_seconds: float = 0.0,
    **options: Any,
) -> Iterator[DatabricksEmulator]:
    """Run an emulator in a background thread for the duration of the ``with`` block.

    ``root`` holds DBFS (``<root>/dbfs``) and run directories (``<root>/runs``); a temporary
    directory is used when omitted. ``token`` defaults to a random one (``emu.token``). Other
    keyword options are :class:`EmulatorConfig` fields.
    """
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="databricks-emulator-"))
        config = EmulatorConfig(
            root=Path(root),
            token=token or generate_token(),
            cluster_start_seconds=cluster_start_seconds,
            **options,
        )
        emu = DatabricksEmulator(config).start()
        try:
            yield emu
        finally:
            emu.stop()


def generate_token() -> str:
    # Shaped like a Databricks PAT ("dapi" + 32 hex) so code that sanity-checks tokens accepts it.
    return "dapi" + _secrets.token_hex(16)
