"""Where bronze tables are written: a Parquet folder locally, Delta on Databricks."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pyspark.sql import SparkSession

from fanout_dagster.settings import project_path
from fanout_dagster.tables import DeltaTableWriter, ParquetTableWriter, TableWriter


class BronzeTables(ConfigurableResource):
    # parquet: folder-per-table under `location` (needs no extra jars).
    # delta:   tables in the metastore schema named by `location`.
    format: Literal["parquet", "delta"] = "parquet"
    location: str = "warehouse/bronze"

    def writer(self, spark: SparkSession) -> TableWriter:
        if self.format == "delta":
            return DeltaTableWriter(spark, schema=self.location)
        return ParquetTableWriter(spark, warehouse=project_path(self.location))
