"""The bare-Spark modes: `floor` (one SparkSession, a thread pool over all objects)
and `per_process` (one fresh Python + Spark process per object, C at a time).

Neither imports Dagster: they call the product's plain-Spark code
(`fanout_dagster.ingest.ingest_object`, `fanout_dagster.packing.run_pack`,
the bronze Delta writer) on the product's own `LocalSparkResource` session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path


def new_session(master: str, warehouse_dir: str, app_name: str):
    """A session configured exactly as the product's embedded one (Delta, warehouse)."""
    from fanout_dagster.resources.spark import LocalSparkResource

    return LocalSparkResource(
        master=master, warehouse_dir=warehouse_dir, app_name=app_name
    ).get_session()


def _ingest(spec: dict, keys: list[str] | None, app_name: str) -> dict:
    """Load the objects (all, or `keys`) on one new session; per-object start/finish."""
    from fanout_dagster.ingest import ingest_object
    from fanout_dagster.objects import load_objects
    from fanout_dagster.packing import run_pack
    from fanout_dagster.resources.bronze_tables import BronzeTables

    objects = load_objects(spec["configs"]).objects
    if keys is not None:
        wanted = set(keys)
        objects = tuple(o for o in objects if o.key in wanted)
    t_session = time.time()
    spark = new_session(spec["spark_master"], spec["spark_warehouse"], app_name)
    t_ready = time.time()
    writer = BronzeTables().writer(spark)
    run_id = str(uuid.uuid4())

    def load(obj):
        return ingest_object(spark, obj, data_root=spec["data_root"], writer=writer, run_id=run_id)

    objects_out = []
    for outcome in run_pack(list(objects), load, spec["threads"]):
        objects_out.append(
            {
                "object": outcome.item.key,
                "start": outcome.started,
                "end": outcome.finished,
                "ok": outcome.ok,
                "rows": outcome.result.rows if outcome.ok else None,
                "error": None if outcome.ok else f"{type(outcome.error).__name__}: {outcome.error}",
            }
        )
    t_done = time.time()
    spark.stop()
    return {
        "session_start": t_session,
        "session_ready": t_ready,
        "done": t_done,
        "stopped": time.time(),
        "objects": objects_out,
    }


def run_floor(spec: dict) -> dict:
    """One SparkSession in this (fresh) process, all N objects through run_pack."""
    t0 = spec["t_launch"]  # the orchestrator's clock just before it started this process
    out = _ingest(spec, None, "bench-floor")
    end = max(o["end"] for o in out["objects"])
    return {
        "t0": t0,
        "wall_s": end - t0,
        "runs": [{"run": "session", "start": t0, "end": out["stopped"], "ok": True}],
        "timeline": [{**o, "run": "session"} for o in out["objects"]],
        "extras": {
            "session_start_s": round(out["session_ready"] - t0, 3),
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
    from fanout_dagster.objects import load_objects

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
    timeline, runs = [], []
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
