"""Shared fixtures: one SparkSession per test process, sample configs and data
copied to a temporary folder, the project's resources pointed at it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import ResourceDefinition

from fanout_dagster.objects import load_objects
from fanout_dagster.resources.catalog import ObjectCatalog
from fanout_dagster.resources.spark import LocalSparkResource
from fanout_dagster.resources.warehouse import BronzeWarehouse

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIGS = REPO_ROOT / "configs"
SAMPLE_DATA = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def spark_resource(tmp_path_factory) -> LocalSparkResource:
    return LocalSparkResource(
        master="local[2]", warehouse_dir=str(tmp_path_factory.mktemp("spark-warehouse"))
    )


@pytest.fixture(scope="session")
def spark(spark_resource):
    # Started once per test process: JVM start-up is the slowest thing here.
    return spark_resource.get_session()


@pytest.fixture
def project(tmp_path) -> "Project":
    """A throwaway copy of the sample configs and data, and a fresh warehouse."""
    configs = tmp_path / "configs"
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    shutil.copytree(SAMPLE_DATA, data)
    return Project(tmp_path)


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.configs = root / "configs"
        self.data = root / "data"
        self.warehouse = root / "warehouse" / "bronze"

    @property
    def keys(self) -> list[str]:
        return sorted(obj.key for obj in load_objects(self.configs).objects)

    def catalog(self) -> ObjectCatalog:
        return ObjectCatalog(configs_dir=str(self.configs), data_root=str(self.data))

    def warehouse_resource(self) -> BronzeWarehouse:
        return BronzeWarehouse(format="parquet", location=str(self.warehouse))

    def resources(self, spark_resource: LocalSparkResource) -> dict:
        """The local target's resources, pointed at this project."""
        return {
            "spark": spark_resource,
            "warehouse": self.warehouse_resource(),
            "catalog": self.catalog(),
            "pyspark_step_launcher": ResourceDefinition.none_resource(),
        }

    def env(self) -> dict[str, str]:
        """Environment for a Dagster process (daemon, dagster dev) using this project."""
        return {
            "FANOUT_CONFIGS_DIR": str(self.configs),
            "FANOUT_DATA_ROOT": str(self.data),
            "FANOUT_BRONZE_LOCATION": str(self.warehouse),
            "FANOUT_WAREHOUSE": str(self.root / "spark-warehouse"),
        }
