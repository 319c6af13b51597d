"""Simulated clusters: start latency, warm all-purpose clusters, one-shot job clusters.

* An all-purpose ("existing") cluster starts TERMINATED. The first run that targets it starts
  it (PENDING for ``cluster_start_seconds``), then it stays RUNNING ("warm") and later runs
  start immediately. Runs arriving while it starts wait for the same start (paid once).
* A ``new_cluster`` task gets its own job cluster: it pays the start latency every time and is
  TERMINATED when the task ends.

No real resources exist behind a cluster: every task still runs as a local process. What a
cluster contributes is its ``spark_conf`` and ``spark_env_vars`` (given to the task) and its
timing.
"""

from __future__ import annotations

import copy
import random
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import cluster_does_not_exist, invalid_parameter
from .stats import Stats

DEFAULT_SPARK_VERSION = "15.4.x-scala2.12"
DEFAULT_NODE_TYPE = "emulator-local"


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_cluster_id() -> str:
    """An id shaped like Databricks' ``MMDD-HHMMSS-xxxxxxxx``."""
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
    return f"{time.strftime('%m%d-%H%M%S')}-{suffix}"


@dataclass
class Cluster:
    cluster_id: str
    spec: dict[str, Any]
    source: str  # "UI" for configured/auto-created all-purpose clusters, "JOB" for job clusters
    state: str = "TERMINATED"
    state_message: str = ""
    created_ms: int = field(default_factory=_now_ms)
    last_started_ms: int | None = None
    terminated_ms: int | None = None
    spark_context_id: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def spark_conf(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.spec.get("spark_conf") or {}).items()}

    @property
    def spark_env_vars(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.spec.get("spark_env_vars") or {}).items()}

    @property
    def serverless(self) -> bool:
        return self.source == "SERVERLESS"

    def instance(self) -> dict[str, str]:
        """The jobs API ``cluster_instance`` (its spark_context_id is a string there)."""
        return {"cluster_id": self.cluster_id, "spark_context_id": str(self.spark_context_id)}

    def describe(self) -> dict[str, Any]:
        """The ``clusters/get`` body."""
        name = self.spec.get("cluster_name") or (
            f"job-cluster-{self.cluster_id}"
            if self.source == "JOB"
            else f"emulator-{self.cluster_id}"
        )
        body: dict[str, Any] = copy.deepcopy(self.spec)
        body.update(
            {
                "cluster_id": self.cluster_id,
                "cluster_name": name,
                "spark_version": self.spec.get("spark_version", DEFAULT_SPARK_VERSION),
                "node_type_id": self.spec.get("node_type_id", DEFAULT_NODE_TYPE),
                "driver_node_type_id": self.spec.get(
                    "driver_node_type_id", self.spec.get("node_type_id", DEFAULT_NODE_TYPE)
                ),
                "cluster_source": self.source,
                "creator_user_name": "emulator@localhost",
                "state": self.state,
                "state_message": self.state_message,
                "start_time": self.created_ms,
                "spark_conf": self.spark_conf,
                "spark_env_vars": self.spark_env_vars,
                "default_tags": {
                    "Vendor": "Databricks",
                    "Creator": "emulator@localhost",
                    "ClusterName": name,
                    "ClusterId": self.cluster_id,
                },
                "spec": copy.deepcopy(self.spec),
            }
        )
        if "autoscale" not in body:
            body.setdefault("num_workers", 0)
        if self.state == "RUNNING":
            body["spark_context_id"] = self.spark_context_id
            body["driver"] = {
                "host_private_ip": "127.0.0.1",
                "node_id": f"driver-{self.cluster_id}",
            }
        if self.last_started_ms is not None:
            body["last_restarted_time"] = self.last_started_ms
        if self.terminated_ms is not None and self.state == "TERMINATED":
            body["terminated_time"] = self.terminated_ms
        return body


class ClusterManager:
    def __init__(self, stats: Stats, start_seconds: float, auto_create: bool = True):
        self._stats = stats
        self.start_seconds = float(start_seconds)
        # Unknown existing_cluster_id: create it on first use (convenient for local dev) or
        # refuse it like the real service (auto_create=False).
        self._auto_create = auto_create
        self._lock = threading.Lock()
        self._clusters: dict[str, Cluster] = {}
        self._shutdown = threading.Event()

    # -- definitions -----------------------------------------------------------------------------

    def define(
        self, cluster_id: str, spec: dict[str, Any] | None = None, running: bool = False
    ) -> Cluster:
        """Declare an all-purpose cluster (its spark_conf/spark_env_vars apply to its tasks)."""
        cluster = Cluster(cluster_id=cluster_id, spec=dict(spec or {}), source="UI")
        if running:
            self._mark_running(cluster)
        with self._lock:
            self._clusters[cluster_id] = cluster
        return cluster

    def existing(self, cluster_id: Any) -> Cluster:
        """The all-purpose cluster a task names with ``existing_cluster_id``."""
        if not isinstance(cluster_id, str) or not cluster_id:
            raise invalid_parameter("existing_cluster_id must be a non-empty string")
        with self._lock:
            cluster = self._clusters.get(cluster_id)
            if cluster is None:
                if not self._auto_create:
                    raise cluster_does_not_exist(cluster_id)
                cluster = Cluster(cluster_id=cluster_id, spec={}, source="UI")
                self._clusters[cluster_id] = cluster
            return cluster

    def serverless(self, environment_key: str) -> Cluster:
        """Serverless compute for one task: nothing to start, not listed by clusters/*."""
        cluster = Cluster(cluster_id=f"serverless-{environment_key}", spec={}, source="SERVERLESS")
        self._mark_running(cluster)
        return cluster

    def new_job_cluster(self, spec: dict[str, Any]) -> Cluster:
        cluster = Cluster(cluster_id=new_cluster_id(), spec=copy.deepcopy(spec), source="JOB")
        with self._lock:
            self._clusters[cluster.cluster_id] = cluster
        return cluster

    # -- life cycle ------------------------------------------------------------------------------

    def _mark_running(self, cluster: Cluster) -> None:
        cluster.state = "RUNNING"
        cluster.state_message = ""
        cluster.last_started_ms = _now_ms()
        cluster.spark_context_id = random.randint(10**17, 10**18)
        cluster.ready.set()

    def _begin_start(self, cluster: Cluster) -> None:
        """Start a TERMINATED cluster in the background (caller holds the lock)."""
        cluster.state = "PENDING"
        cluster.state_message = "Starting Spark"
        cluster.ready.clear()
        threading.Thread(
            target=self._finish_start,
            args=(cluster,),
            name=f"cluster-start-{cluster.cluster_id}",
            daemon=True,
        ).start()

    def _finish_start(self, cluster: Cluster) -> None:
        if self.start_seconds > 0:
            self._shutdown.wait(self.start_seconds)
        with self._lock:
            self._mark_running(cluster)
        self._stats.cluster_started(self.start_seconds)

    def wait_until_running(self, cluster: Cluster, cancelled: threading.Event) -> bool:
        """Start the cluster if needed and wait for it; False if ``cancelled`` fired first."""
        if cluster.serverless:
            return True  # no cluster start latency
        with self._lock:
            if cluster.state not in ("RUNNING", "PENDING"):
                self._begin_start(cluster)
            ready = cluster.ready
        while not ready.wait(0.05):
            if cancelled.is_set() or self._shutdown.is_set():
                return False
        return True

    def terminate(self, cluster: Cluster, message: str) -> None:
        with self._lock:
            cluster.state = "TERMINATED"
            cluster.state_message = message
            cluster.terminated_ms = _now_ms()
            cluster.ready.clear()

    def shutdown(self) -> None:
        self._shutdown.set()

    # -- REST --------------------------------------------------------------------------------------

    def get_api(self, query: dict[str, str]) -> dict[str, Any]:
        cluster_id = query.get("cluster_id")
        if not cluster_id:
            raise invalid_parameter("Missing required field: cluster_id")
        with self._lock:
            cluster = self._clusters.get(cluster_id)
            if cluster is None:
                raise cluster_does_not_exist(cluster_id)
            return cluster.describe()

    def list_api(self, _query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            clusters = [c.describe() for c in self._clusters.values()]
        return {"clusters": clusters} if clusters else {}

    def start_api(self, body: dict[str, Any]) -> dict[str, Any]:
        cluster_id = body.get("cluster_id")
        with self._lock:
            cluster = self._clusters.get(cluster_id) if isinstance(cluster_id, str) else None
            if cluster is None or cluster.source == "JOB":
                raise cluster_does_not_exist(cluster_id)
            if cluster.state not in ("RUNNING", "PENDING"):
                self._begin_start(cluster)
        return {}
