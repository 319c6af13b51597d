"""The named Databricks compute of clusters.yaml (an all-purpose cluster, a job
cluster, or serverless) and the compute a run gets: its `fanout/cluster` tag
names the entry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fanout_dagster.core.objects import DEFAULT_CLUSTER
from fanout_dagster.orchestration.tags import CLUSTER_TAG


class ClusterConfigError(ValueError):
    """The deployment's Databricks settings or clusters.yaml are wrong (names what to fix)."""


ComputeKind = Literal["existing", "new", "serverless"]


@dataclass(frozen=True)
class ClusterDefinition:
    """One entry of clusters.yaml: an all-purpose cluster, a job cluster, or serverless."""

    name: str
    kind: ComputeKind
    existing_cluster_id: str | None = None
    new_cluster: dict[str, Any] = field(default_factory=dict)
    serverless: dict[str, Any] = field(default_factory=dict)  # the environment spec

    def launcher_cluster(self) -> dict[str, Any]:
        """The step launcher's `run_config.cluster`."""
        if self.kind == "existing":
            return {"existing": self.existing_cluster_id}
        if self.kind == "new":
            return {"new": launcher_new_cluster(self.new_cluster)}
        raise ClusterConfigError(
            f"clusters.{self.name}: serverless compute needs FANOUT_DATABRICKS_LAUNCH=pipes "
            "(the step launcher runs on clusters only)"
        )


def load_cluster_definitions(path: str | Path) -> dict[str, ClusterDefinition]:
    """Named clusters from clusters.yaml, each with exactly one form of compute."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"{path}: cannot read cluster definitions: {exc}") from exc
    clusters = document.get("clusters") if isinstance(document, Mapping) else None
    if not isinstance(clusters, Mapping) or not clusters:
        raise ClusterConfigError(f"{path}: expected a non-empty `clusters:` mapping")
    forms = {"existing_cluster_id", "new_cluster", "serverless"}
    result = {}
    for name, spec in clusters.items():
        where = f"{path}: clusters.{name}"
        if not isinstance(spec, Mapping) or len(spec) != 1 or not (set(spec) <= forms):
            raise ClusterConfigError(
                f"{where}: give exactly one of existing_cluster_id, new_cluster or serverless"
            )
        if "existing_cluster_id" in spec:
            result[name] = ClusterDefinition(
                name, "existing", existing_cluster_id=str(spec["existing_cluster_id"])
            )
        elif "new_cluster" in spec:
            if not isinstance(spec["new_cluster"], Mapping):
                raise ClusterConfigError(
                    f"{where}.new_cluster: expected a mapping (a cluster spec)"
                )
            result[name] = ClusterDefinition(name, "new", new_cluster=dict(spec["new_cluster"]))
        else:
            environment = spec["serverless"] or {}
            if not isinstance(environment, Mapping):
                raise ClusterConfigError(
                    f"{where}.serverless: expected a mapping (an environment spec, or {{}})"
                )
            dependencies = environment.get("dependencies", [])
            if not isinstance(dependencies, list) or not all(
                isinstance(d, str) for d in dependencies
            ):
                raise ClusterConfigError(
                    f"{where}.serverless.dependencies: expected a list of pip requirements"
                )
            result[name] = ClusterDefinition(name, "serverless", serverless=dict(environment))
    return result


def launcher_new_cluster(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A job-cluster spec in the step launcher's shape (`nodes`, `size`); clusters.yaml
    may use that shape or Databricks' own (`node_type_id`, `num_workers`...)."""
    spec = dict(spec)
    if "nodes" in spec or "size" in spec:
        return spec
    if "instance_pool_id" in spec:
        nodes: dict[str, Any] = {"instance_pool_id": spec.pop("instance_pool_id")}
        if "driver_instance_pool_id" in spec:
            nodes["driver_instance_pool_id"] = spec.pop("driver_instance_pool_id")
    else:
        node_types = {"node_type_id": spec.pop("node_type_id", None)}
        if "driver_node_type_id" in spec:
            node_types["driver_node_type_id"] = spec.pop("driver_node_type_id")
        nodes = {"node_types": node_types}
    size = (
        {"autoscale": spec.pop("autoscale")}
        if "autoscale" in spec
        else {"num_workers": spec.pop("num_workers", 0)}
    )
    return {**spec, "nodes": nodes, "size": size}


def api_new_cluster(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A job-cluster spec in Databricks' own shape (what `runs/submit` takes)."""
    spec = dict(spec)
    if "nodes" not in spec and "size" not in spec:
        return spec
    nodes = spec.pop("nodes", {}) or {}
    size = spec.pop("size", {}) or {}
    if "instance_pool_id" in nodes:
        spec["instance_pool_id"] = nodes["instance_pool_id"]
        if "driver_instance_pool_id" in nodes:
            spec["driver_instance_pool_id"] = nodes["driver_instance_pool_id"]
    else:
        node_types = nodes.get("node_types", {}) or {}
        spec["node_type_id"] = node_types.get("node_type_id")
        if "driver_node_type_id" in node_types:
            spec["driver_node_type_id"] = node_types["driver_node_type_id"]
    if "autoscale" in size:
        spec["autoscale"] = size["autoscale"]
    else:
        spec["num_workers"] = size.get("num_workers", 0)
    return spec


def cluster_for_run(
    clusters: Mapping[str, ClusterDefinition], run_tags: Mapping[str, str]
) -> ClusterDefinition:
    name = run_tags.get(CLUSTER_TAG, DEFAULT_CLUSTER)
    if name not in clusters:
        raise ClusterConfigError(
            f"cluster {name!r} (run tag {CLUSTER_TAG}) is not defined in clusters.yaml "
            f"(defined: {', '.join(sorted(clusters))})"
        )
    return clusters[name]
