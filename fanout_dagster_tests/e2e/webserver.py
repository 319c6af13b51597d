"""A real `dagster-webserver` for end-to-end tests, and the GraphQL the UI sends.

The webserver runs on a free loopback port against a temporary DAGSTER_HOME,
in its own process group. `GraphQL` posts to its /graphql endpoint over real
HTTP; the documents below are the ones the UI uses for the same actions
(dagster 1.13 schema), trimmed to the fields the tests read.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fanout_dagster_tests.e2e.dagster_processes import (
    VENV_BIN,
    start_in_own_group,
    stop_process_group,
)
from fanout_dagster_tests.helpers import REPO_ROOT

LOCATION_NAME = "fanout_dagster"
# Definitions(...) objects are served as a repository with this name.
REPOSITORY_NAME = "__repository__"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQLError(AssertionError):
    pass


class GraphQL:
    """POSTs GraphQL documents to a running webserver, as the UI does."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/graphql"

    def __call__(
        self, document: str, variables: Mapping[str, Any] | None = None, timeout: float = 60.0
    ) -> dict:
        body = json.dumps({"query": document, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise GraphQLError(f"HTTP {exc.code} from {self.url}: {exc.read()[:2000]!r}") from exc
        if payload.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(payload['errors'], indent=1)[:4000]}")
        return payload["data"]

    def is_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/server_info", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False


@contextmanager
def dagster_webserver(
    home: Path, env: Mapping[str, str], log_path: Path, port: int | None = None
) -> Iterator[tuple[subprocess.Popen, GraphQL]]:
    """`dagster-webserver` on the project's workspace, on 127.0.0.1:<free port>."""
    port = port or free_port()
    process = start_in_own_group(
        [
            str(VENV_BIN / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
        ],
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        cwd=REPO_ROOT,
        log_path=log_path,
    )
    try:
        yield process, GraphQL(f"http://127.0.0.1:{port}")
    finally:
        stop_process_group(process)


def wait_until_loaded(
    client: GraphQL, process: subprocess.Popen, timeout: float, log_path: Path | None = None
) -> None:
    """Until the webserver answers and the code location has loaded (an error fails fast)."""
    deadline = time.monotonic() + timeout
    last = "not answering"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"dagster-webserver exited ({process.returncode})\n{_tail(log_path)}"
            )
        if client.is_up():
            data = client(WORKSPACE_STATUS)
            entries = data["workspaceOrError"].get("locationEntries") or []
            entry = next((e for e in entries if e["name"] == LOCATION_NAME), None)
            if entry and entry["locationOrLoadError"]:
                loaded = entry["locationOrLoadError"]
                if loaded["__typename"] == "PythonError":
                    raise AssertionError(f"code location failed to load: {loaded['message']}")
                if loaded["__typename"] == "RepositoryLocation":
                    return
            last = json.dumps(entries)[:500]
        time.sleep(0.5)
    raise AssertionError(f"webserver not ready after {timeout:.0f}s: {last}\n{_tail(log_path)}")


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


# --------------------------------------------------------------------------- documents

WORKSPACE_STATUS = """
query WorkspaceStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

SENSOR_STATE = """
query SensorState($sensorSelector: SensorSelector!) {
  sensorOrError(sensorSelector: $sensorSelector) {
    __typename
    ... on Sensor { id name sensorState { id status } }
    ... on PythonError { message }
  }
}
"""

# The sensor switch in the UI sends the sensor's InstigationState id.
STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { id status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}
"""

# The launch-backfill dialog ("Materialize" -> partitions -> "Launch backfill").
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}
"""

# The backfill page's "Re-execute" menu (FROM_FAILURE / ALL_STEPS).
REEXECUTE_BACKFILL = """
mutation ReexecuteBackfill($reexecutionParams: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}
"""

# The backfill page: status, per-asset counts, targeted partitions.
BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      isAssetBackfill
      tags { key value }
      error { message }
      assetBackfillData {
        rootTargetedPartitions { partitionKeys ranges { start end } }
        assetBackfillStatuses {
          __typename
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsInProgress
            numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on BackfillNotFoundError { message }
    ... on PythonError { message stack }
  }
}
"""

# The asset's Partitions tab: the status bar and the per-partition lists.
ASSET_PARTITIONS = """
query AssetPartitions($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions
          failedPartitions
          unmaterializedPartitions
          materializingPartitions
        }
      }
    }
    ... on AssetNotFoundError { message }
  }
}
"""

# A partition's event list in the asset's Partitions tab.
PARTITION_EVENTS = """
query PartitionEvents($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetObservations(partitions: $partitions) {
        partition
        runId
        timestamp
        metadataEntries {
          label
          __typename
          ... on TextMetadataEntry { text }
          ... on FloatMetadataEntry { floatValue }
        }
      }
      assetMaterializations(partitions: $partitions) {
        partition
        runId
        timestamp
      }
    }
  }
}
"""


# --------------------------------------------------------------------------- actions


def stop_sensor(client: GraphQL, sensor_name: str) -> str:
    """Turns a sensor off the way the UI switch does; returns the stored status."""
    selector = {
        "repositoryName": REPOSITORY_NAME,
        "repositoryLocationName": LOCATION_NAME,
        "sensorName": sensor_name,
    }
    sensor = client(SENSOR_STATE, {"sensorSelector": selector})["sensorOrError"]
    if sensor["__typename"] != "Sensor":
        raise GraphQLError(f"sensor {sensor_name}: {sensor}")
    result = client(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
    if result["__typename"] != "StopSensorMutationResult":
        raise GraphQLError(f"stopSensor: {result}")
    return result["instigationState"]["status"]


def launch_asset_backfill(
    client: GraphQL,
    asset_path: list[str],
    *,
    partition_names: list[str] | None = None,
    all_partitions: bool = False,
    title: str | None = None,
) -> str:
    params: dict[str, Any] = {"assetSelection": [{"path": asset_path}], "tags": []}
    if all_partitions:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = list(partition_names or [])
        params["fromFailure"] = False
    if title:
        params["title"] = title
    result = client(LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})[
        "launchPartitionBackfill"
    ]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"launchPartitionBackfill: {result}")
    return result["backfillId"]


def reexecute_backfill(client: GraphQL, backfill_id: str, strategy: str = "FROM_FAILURE") -> str:
    result = client(
        REEXECUTE_BACKFILL,
        {"reexecutionParams": {"parentRunId": backfill_id, "strategy": strategy}},
    )["reexecutePartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"reexecutePartitionBackfill: {result}")
    return result["backfillId"]


def backfill_status(client: GraphQL, backfill_id: str) -> dict:
    backfill = client(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
    if backfill["__typename"] != "PartitionBackfill":
        raise GraphQLError(f"partitionBackfillOrError: {backfill}")
    return backfill


def asset_status_counts(backfill: dict, asset_path: list[str]) -> dict:
    """The backfill page's row for one asset: targeted / in progress / materialized / failed."""
    for entry in backfill["assetBackfillData"]["assetBackfillStatuses"]:
        if entry.get("assetKey", {}).get("path") == asset_path:
            return entry
    raise AssertionError(f"no status row for {asset_path} in {backfill}")


def asset_partitions(client: GraphQL, asset_path: list[str]) -> dict:
    node = client(ASSET_PARTITIONS, {"assetKey": {"path": asset_path}})["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise GraphQLError(f"assetNodeOrError: {node}")
    return node


def partition_events(client: GraphQL, asset_path: list[str], partition: str) -> dict:
    asset = client(PARTITION_EVENTS, {"assetKey": {"path": asset_path}, "partitions": [partition]})
    asset = asset["assetOrError"]
    if asset["__typename"] != "Asset":
        raise GraphQLError(f"assetOrError: {asset}")
    return asset


def metadata_by_label(event: dict) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for entry in event["metadataEntries"]:
        values[entry["label"]] = entry.get("text", entry.get("floatValue"))
    return values
