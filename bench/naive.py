"""The honest floor: `naive` and `warm_naive`, the code the seed posts' users write today.

A notebook builds a list of object configs and runs, on one Spark app, a
`ThreadPoolExecutor` over a function that reads each object's files and saves
them as a Delta table:

    def load(obj):
        df = spark.read.format(fmt).options(**opts).load(path)
        df.write.format("delta").mode("overwrite").saveAsTable(f"bronze.{table}")

    with ThreadPoolExecutor(max_workers=T) as pool:
        list(pool.map(load, objects))

No audit columns, no exactly-once tracking of source files, no empty-source or
schema policy, no commit tag, no per-object report: what the product adds is
what `per_run` and `packed` are measured against. The configs are read as plain
YAML (the product's config model is not used either).

- `naive`: one fresh process, one embedded SparkSession started for the purpose
  (JVM start included), as `floor`;
- `warm_naive`: one Spark Connect session on the warm server (bench/warm.py), as
  `warm_floor`: a notebook attached to a cluster that is already up.

Both sessions have the same cluster settings as the product's (Delta, the
warehouse, shuffle and Delta-log partitions; `local_spark.catalog.spark_conf`),
so the comparison is between the code, not between Spark tunings.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def configs(configs_dir: str) -> list[dict]:
    """Every object config of the folder, as plain dictionaries."""
    objects: list[dict] = []
    for path in sorted(Path(configs_dir).glob("*.yaml")):
        loaded = yaml.safe_load(path.read_text())
        objects.extend(loaded if isinstance(loaded, list) else [loaded])
    return objects


def session(spec: dict):
    """The notebook's `spark`: on the warm server (warm_naive) or started here (naive)."""
    from pyspark.sql import SparkSession

    if spec["mode"] == "warm_naive":
        from fanout_dagster.local_spark.connect_server import client_token, connect_url

        # The server takes only clients with its token (docs/local-spark.md), a
        # notebook's too: the one it keeps for this user.
        port = spec["spark_connect_port"]
        url = connect_url("127.0.0.1", port, client_token(port))
        return SparkSession.builder.remote(url).create()
    from delta import configure_spark_with_delta_pip

    from fanout_dagster.local_spark.catalog import spark_conf

    builder = SparkSession.builder.master(spec["spark_master"]).appName("bench-naive")
    for key, value in spark_conf(spec["spark_warehouse"]).items():
        builder = builder.config(key, value)
    builder = builder.config("spark.ui.enabled", "false").config("spark.log.level", "ERROR")
    return configure_spark_with_delta_pip(builder).getOrCreate()


def run_naive(spec: dict) -> dict:
    t0 = spec["t_launch"]  # the orchestrator's clock just before it started this process
    objects = configs(spec["configs"])[: spec.get("objects_limit") or None]
    spark = session(spec)
    t_ready = time.time()
    schema = spec["bronze_schema"]
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    timeline: list[dict] = []

    def load(obj: dict) -> None:
        started = time.time()
        source = obj["source"]
        options = {
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in (source.get("options") or {}).items()
        }
        df = (
            spark.read.format(source["format"])
            .options(**options)
            .load(f"{spec['data_root']}/{source['path']}")
        )
        df.write.format("delta").mode("overwrite").saveAsTable(f"{schema}.{obj['target']['table']}")
        timeline.append(
            {
                "object": f"{obj['code']}-{obj['name']}",
                "start": started,
                "end": time.time(),
                "ok": True,
                "run": "session",
            }
        )

    with ThreadPoolExecutor(max_workers=spec["threads"]) as pool:
        list(pool.map(load, objects))  # the first failure is raised: a user sees it
    end = max(o["end"] for o in timeline)
    spark.stop()
    return {
        "t0": t0,
        "wall_s": end - t0,
        "runs": [{"run": "session", "start": t0, "end": time.time(), "ok": True}],
        "timeline": timeline,
        "extras": {
            "session_start_s": round(t_ready - t0, 3),
            "objects_s": round(end - min(o["start"] for o in timeline), 3),
            "objects_expected": len(objects),
            "objects_materialized": len(timeline),
        },
    }
