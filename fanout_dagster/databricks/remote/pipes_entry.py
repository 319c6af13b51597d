"""The remote side of the `pipes` launch mode: a Databricks `spark_python_task`.

    pipes_entry.py --fanout-bundle /Volumes/.../bundle.zip \\
        --dagster-pipes-context ... --dagster-pipes-messages ...

It runs on a Databricks cluster or on serverless compute, with `dagster-pipes`
and the uploaded bundle (this package and the configs folder) only: no
Dagster, no credentials, nothing of the launching machine. It

1. unpacks the bundle into a temporary folder and puts it first on `sys.path`
   (the same code on every kind of compute, no cluster-wide library install);
2. opens Dagster Pipes: context and messages through the Unity Catalog volume
   folders the launching side created, stdout/stderr forwarded;
3. loads the run's objects (from the Pipes extras) with the configs of the
   bundle, on this compute's SparkSession, with the same loop as everywhere
   (`loading.load_pack`), and sends each object's report as soon as it ends;
4. fails the Databricks run at the end if any object failed, naming them.

The module itself imports only the standard library, so that it can run as a
script before the bundle is on the path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Any

BUNDLE_ARG = "--fanout-bundle"
# The custom Pipes message carrying one ObjectReport (as JSON).
REPORT = "fanout_object_report"


class ObjectsFailed(RuntimeError):
    """Some objects of the run failed (each was reported to Dagster with its error)."""


def unpack_bundle(bundle: str) -> str:
    folder = tempfile.mkdtemp(prefix="fanout_bundle_")
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(folder)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(BUNDLE_ARG, dest="bundle", required=True)
    args, _ = parser.parse_known_args(argv)
    folder = unpack_bundle(args.bundle)
    sys.path.insert(0, folder)
    # The bundle's package and nothing else of that name.
    for name in [
        m for m in sys.modules if m == "fanout_dagster" or m.startswith("fanout_dagster.")
    ]:
        del sys.modules[name]
    try:
        from fanout_dagster.databricks.remote.pipes_entry import run

        return run(os.path.join(folder, "configs"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(configs_dir: str) -> int:
    """Load the run's objects and report each one through Pipes (see the module docstring)."""
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesUnityCatalogVolumesContextLoader,
        PipesUnityCatalogVolumesMessageWriter,
        open_dagster_pipes,
    )

    from fanout_dagster.core.ingest import AUDIT_COLUMNS
    from fanout_dagster.core.loading import ObjectReport, load_pack, missing_config_report
    from fanout_dagster.core.objects import load_objects
    from fanout_dagster.core.tables import BronzeTableWriter

    failures: dict[str, str] = {}
    with open_dagster_pipes(
        params_loader=PipesCliArgsParamsLoader(),
        context_loader=PipesUnityCatalogVolumesContextLoader(),
        # Chunks every ~2 s: each object's report reaches Dagster while the rest load.
        message_writer=PipesUnityCatalogVolumesMessageWriter(interval=1),
    ) as pipes:
        keys: list[str] = list(pipes.get_extra("keys"))
        data_root: str = pipes.get_extra("data_root")
        schema: str = pipes.get_extra("bronze_schema")
        threads = int(pipes.get_extra("threads"))

        def send(report: ObjectReport) -> None:
            if not report.ok:
                failures[report.key] = report.error or "failed"
            payload: dict[str, Any] = {REPORT: report.to_json()}
            pipes.report_custom_message(payload)

        load = load_objects(configs_dir)
        for error in load.errors:
            print(f"invalid object config: {error}", file=sys.stderr)
        by_key = load.by_key()
        objects = [by_key[key] for key in keys if key in by_key]
        print(
            f"fanout_dagster: loading {len(objects)} of {len(keys)} object(s) with up to "
            f"{threads} thread(s) into {schema}: {', '.join(keys)}",
            flush=True,
        )
        for key in keys:
            if key not in by_key:
                send(missing_config_report(key))
        if objects:
            from pyspark.sql import SparkSession

            spark = SparkSession.builder.getOrCreate()
            writer = BronzeTableWriter(spark, schema, system_columns=AUDIT_COLUMNS)
            for report in load_pack(
                spark,
                objects,
                data_root=data_root,
                writer=writer,
                run_id=pipes.run_id,
                threads=threads,
            ):
                send(report)
    if failures:
        raise ObjectsFailed(
            f"{len(failures)} of {len(keys)} object(s) failed: "
            + "; ".join(f"{key}: {message}" for key, message in sorted(failures.items()))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
