"""The bare-Spark modes: `floor` and `warm_floor` (one session, a thread pool over
all objects) and `per_process` (one fresh Python + Spark process per object, C
at a time).

None imports Dagster: they run the product's own loading loop
(`fanout_dagster.core.loading.load_pack`: `run_pack` threads over `ingest_object`,
Spark job tags per run and object) with the product's bronze Delta writer
(`BronzeTables`, schema `FANOUT_BRONZE_SCHEMA` of the measurement), on the
product's own sessions:

- `floor`, `per_process`: `LocalSparkResource` - an embedded Spark started for
  the purpose (JVM start included in the wall time);
- `warm_floor`: `SparkConnectResource` - a session of its own on the warm
  Spark Connect server the orchestrator keeps up (bench/warm.py): the work
  itself on a warm cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path


def new_session(spec: dict, app_name: str):
    """The mode's session, configured exactly as the product's (Delta, warehouse)."""
    if spec["mode"] == "warm_floor":
        from fanout_dagster.orchestration.resources.spark import SparkConnectResource

        return SparkConnectResource(port=spec["spark_connect_port"]).get_session()
    from fanout_dagster.orchestration.resources.spark import LocalSparkResource

    return LocalSparkResource(
        master=spec["spark_master"], warehouse_dir=spec["spark_warehouse"], app_name=app_name
    ).get_session()


def _ingest(spec: dict, keys: list[str] | None, app_name: str) -> dict:
    """Load the objects (all, or `keys`) on one new session; per-object start/finish."""
    from fanout_dagster.core.loading import load_pack
    from fanout_dagster.core.objects import load_objects
    from fanout_dagster.orchestration.resources.bronze_tables import BronzeTables

    objects = load_objects(spec["configs"]).objects
    if keys is not None:
        wanted = set(keys)
        objects = tuple(o for o in objects if o.key in wanted)
    limit = spec.get("objects_limit") or len(objects)
    objects = objects[:limit]
    t_session = time.time()
    spark = new_session(spec, app_name)
    t_ready = time.time()
    writer = BronzeTables(schema_name=spec["bronze_schema"]).writer(spark)
    objects_out = []
    for report in load_pack(
        spark,
        list(objects),
        data_root=spec["data_root"],
        writer=writer,
        run_id=str(uuid.uuid4()),
        threads=spec["threads"],
    ):
        objects_out.append(
            {
                "object": report.key,
                "start": report.started,
                "end": report.finished,
                "ok": report.ok,
                "rows": report.result.rows if report.result is not None else None,
                "error": report.error,
            }
        )
    t_done = time.time()
    spark.stop()  # a Connect session: released on the server
    return {
        "session_start": t_session,
        "session_ready": t_ready,
        "done": t_done,
        "stopped": time.time(),
        "objects": objects_out,
    }


def run_floor(spec: dict) -> dict:
    """One session in this (fresh) process, all N objects through the loading loop.

    `floor`: an embedded Spark started here; `warm_floor`: a Connect session on the warm server.
    """
    t0 = spec["t_launch"]  # the orchestrator's clock just before it started this process
    out = _ingest(spec, None, f"bench-{spec['mode']}")
    end = max(o["end"] for o in out["objects"])
    return {
        "t0": t0,
        "wall_s": end - t0,
        "runs": [{"run": "session", "start": t0, "end": out["stopped"], "ok": True}],
        "timeline": [{**o, "run": "session"} for o in out["objects"]],
        "extras": {
            "session_start_s": round(out["session_ready"] - t0, 3),
            "objects_s": round(end - min(o["start"] for o in out["objects"]), 3),
            "failed_objects": sum(not o["ok"] for o in out["objects"]),
        },
    }


def run_single(spec_path: str, key: str, out_path: str) -> None:
    """Entry point of one per_process child: one object, one session, then exit."""
    spec = json.loads(Path(spec_path).read_text())
    result = _ingest({**spec, "threads": 1}, [key], f"bench-{key}")
    Path(out_path).write_text(json.dumps(result))


def run_per_process(spec: dict) -> dict:
    """A fresh `python -m bench.worker --single` per object, `concurrency` at a time."""
    from fanout_dagster.core.objects import load_objects

    keys = [o.key for o in load_objects(spec["configs"]).objects]
    limit = spec["objects_limit"] or len(keys)
    keys = keys[:limit]
    workdir = Path(spec["workdir"]) / "per_process"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    pending = list(enumerate(keys))
    running: dict[int, tuple[subprocess.Popen, str, float, Path]] = {}
    finished: list[dict] = []
    t0 = time.time()
    log = open(workdir / "children.log", "ab")  # noqa: SIM115 - shared by every child
    while pending or running:
        while pending and len(running) < spec["concurrency"]:
            index, key = pending.pop(0)
            out = workdir / f"{index:05d}.json"
            cmd = [sys.executable, "-m", "bench.worker", "--single", str(spec_path), key, str(out)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (proc, key, time.time(), out)
        time.sleep(0.02)
        for pid, (proc, key, launched, out) in list(running.items()):
            if proc.poll() is None:
                continue
            exited = time.time()
            del running[pid]
            result = json.loads(out.read_text()) if out.exists() else {"objects": []}
            finished.append(
                {
                    "key": key,
                    "launched": launched,
                    "exited": exited,
                    "rc": proc.returncode,
                    **result,
                }
            )
    log.close()
    end = max(f["exited"] for f in finished)
    timeline: list[dict] = []
    runs: list[dict] = []
    for i, f in enumerate(sorted(finished, key=lambda f: f["launched"])):
        run = f"proc-{i:04d}"
        runs.append({"run": run, "start": f["launched"], "end": f["exited"], "ok": f["rc"] == 0})
        objs = f["objects"] or [
            {"object": f["key"], "start": f["launched"], "end": f["exited"], "ok": False}
        ]
        timeline.extend({**o, "run": run} for o in objs)
    per_proc = [f["exited"] - f["launched"] for f in finished]
    return {
        "t0": t0,
        "wall_s": end - t0,
        "runs": runs,
        "timeline": timeline,
        "extras": {
            "mean_process_s": round(sum(per_proc) / len(per_proc), 3),
            "mean_session_start_s": round(
                sum(f["session_ready"] - f["launched"] for f in finished if "session_ready" in f)
                / max(1, sum("session_ready" in f for f in finished)),
                3,
            ),
            "failed_objects": sum(f["rc"] != 0 for f in finished),
        },
    }
