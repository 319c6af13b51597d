"""How the bronze asset gets its objects loaded: one method, one report per object.

`ObjectLoader.load(context, keys, threads)` yields an `ObjectReport` for every
key of the run, as each object finishes. The asset turns reports into events
and never asks where the work ran. definitions.py picks the implementation:

- `LocalObjectLoader`: threads over this process's SparkSession (the local
  target, and the cluster side of the Databricks step launcher);
- `PipesObjectLoader` (databricks/pipes.py): a Databricks job run
  through Dagster Pipes, its reports streamed back while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dagster import AssetExecutionContext, ConfigurableResource

from fanout_dagster.core.loading import ObjectReport, load_pack, missing_config_report
from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.spark import SparkResource


class ObjectLoader(ConfigurableResource):
    """Loads a run's objects and reports each one (see the module docstring)."""

    def load(
        self, context: AssetExecutionContext, keys: Sequence[str], threads: int
    ) -> Iterator[ObjectReport]:
        raise NotImplementedError


class LocalObjectLoader(ObjectLoader):
    """The run's objects loaded here, with a bounded thread pool over one SparkSession."""

    spark: SparkResource
    bronze_tables: BronzeTables
    object_configs: ObjectConfigs

    def load(
        self, context: AssetExecutionContext, keys: Sequence[str], threads: int
    ) -> Iterator[ObjectReport]:
        objects, missing = self.object_configs.lookup(keys)
        for key in missing:
            yield missing_config_report(key)
        if not objects:
            return
        session = self.spark.get_session()
        yield from load_pack(
            session,
            objects,
            data_root=self.object_configs.data_root_path,
            writer=self.bronze_tables.writer(session),
            run_id=context.run.run_id,
            threads=threads,
        )
