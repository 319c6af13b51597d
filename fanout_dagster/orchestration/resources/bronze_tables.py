"""Where bronze tables are written: Delta tables in one schema, locally and on Databricks."""

from __future__ import annotations

from dagster import ConfigurableResource
from pyspark.sql import SparkSession

from fanout_dagster.core.ingest import AUDIT_COLUMNS
from fanout_dagster.core.tables import BronzeTableWriter
from fanout_dagster.local_spark.catalog import delta_log_dir, register_table


class BronzeTables(ConfigurableResource):
    # `bronze` locally (tables `bronze.<table>`); `<catalog>.<schema>` in Unity Catalog.
    schema_name: str = "bronze"
    # Local Spark's in-memory catalog learns of tables other processes created
    # by looking in the warehouse folder; Unity Catalog knows every table.
    local_catalog: bool = True

    def writer(self, spark: SparkSession) -> BronzeTableWriter:
        return BronzeTableWriter(
            spark,
            self.schema_name,
            prepare_table=register_table if self.local_catalog else None,
            system_columns=AUDIT_COLUMNS,
            # The local warehouse is this machine's: commits are read from their log.
            delta_log=delta_log_dir if self.local_catalog else None,
        )
