"""Shared fixtures: one SparkSession per test process, sample configs and data
copied to a temporary folder, the project's resources pointed at it."""

from __future__ import annotations

import shutil

import pytest
from dagster import instance_for_test

from fanout_dagster.resources.spark import LocalSparkResource
from fanout_dagster_tests.helpers import SAMPLE_CONFIGS, SAMPLE_DATA, Project


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
def project(tmp_path) -> Project:
    """A throwaway copy of the sample configs and data, and a fresh warehouse."""
    configs = tmp_path / "configs"
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_CONFIGS, configs)
    shutil.copytree(SAMPLE_DATA, data)
    return Project(tmp_path)


@pytest.fixture
def instance():
    """A real, persistent (temporary-folder) Dagster instance."""
    with instance_for_test() as dagster_instance:
        yield dagster_instance
