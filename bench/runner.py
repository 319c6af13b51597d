"""The measurement runner: one measurement in a fresh `python -m bench.worker`
process under bench.proc.run_measured (wall, CPU and peak resident memory of its
whole process tree, plus the CPU everything else on the machine used meanwhile),
its record, and the warm Spark Connect server the main section's modes share.

Modes at the same N read the same generated data; each writes tables of its
own (a warehouse of its own, or on the warm server a bronze schema
`bench_<mode>_n<N>` of its own). The warm server's start-up is in no
measurement; its CPU during a measurement is added to that measurement's
`cpu_s`, and its memory to the measurement's peak.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from bench import proc
from bench.data import write_objects
from bench.warm import WarmServer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTENDED_CORES = 0.25  # background CPU (cores) above which a measurement is flagged


def pack_size(args, n: int) -> int:
    return args.pack_size or min(60, math.ceil(n / args.concurrency))


def section_of(mode: str) -> str:
    if mode.startswith("scale_"):
        return "scale"
    if mode.startswith("databricks_"):
        return "databricks"
    if mode in ("dev_loop", "server_memory", "warm_server"):
        return mode
    return "main"


class Runner:
    """Runs measurements and keeps their records (and the warm server, while it is up)."""

    def __init__(self, args, workdir: Path, logs: Path, machine: dict):
        self.args = args
        self.workdir = workdir
        self.logs = logs
        self.machine = machine
        self.records: list[dict] = []
        self.timelines: dict[tuple[str, int], dict] = {}
        self.server: WarmServer | None = None  # up during the main section, when a mode uses it
        self.server_record: dict = {}

    def uses_server(self, mode: str) -> bool:
        return mode in ("warm_floor", "warm_naive") or (
            mode in ("per_run", "packed") and self.args.spark == "connect"
        )

    def kept(self) -> list[int]:
        return [self.server.pid] if self.server is not None else []

    def data_for(self, n: int) -> tuple[Path, Path]:
        t = time.time()
        configs, data = write_objects(self.workdir / f"n{n}", n, self.args.rows)
        if time.time() - t > 1:
            print(
                f"  generated {n} objects x {self.args.rows} rows in {time.time() - t:.1f} s",
                flush=True,
            )
        return configs, data

    def env_for(self, spec: dict) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FANOUT_", "DAGSTER_", "DATABRICKS_"))
            # pyspark's process-wide Connect flag (the orchestrator has had a Connect session)
            and k != "SPARK_CONNECT_MODE_ENABLED"
        }
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
                "FANOUT_TARGET": "local",
                "FANOUT_CONFIGS_DIR": spec["configs"],
                "FANOUT_DATA_ROOT": spec["data_root"],
                "FANOUT_SPARK": "connect" if spec.get("spark") == "connect" else "embedded",
                "FANOUT_SPARK_WAREHOUSE": spec["spark_warehouse"],
                "FANOUT_BRONZE_SCHEMA": spec.get("bronze_schema", "bronze"),
                "FANOUT_OBJECTS_PER_RUN": str(spec["pack_size"]),
                "FANOUT_THREADS_PER_RUN": str(spec["threads"]),
                "FANOUT_SPARK_MASTER": spec["spark_master"],
                "DAGSTER_HOME": str(Path(spec["workdir"]) / "dagster_home"),
            }
        )
        if spec.get("spark_connect_port"):
            env["FANOUT_SPARK_CONNECT_PORT"] = str(spec["spark_connect_port"])
        return env

    def spec(
        self, mode: str, n: int, configs: Path, data: Path, *, label: str | None = None, **extra
    ) -> dict:
        run_dir = self.workdir / f"n{n}" / "runs" / (label or mode)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        packed = mode in ("packed", "databricks_packed")
        uses_server = self.uses_server(mode)
        if uses_server and self.server is None:
            raise RuntimeError(f"{mode} needs the warm Spark Connect server, which is not up")
        spec = {
            "mode": mode,
            "label": label or mode,
            "section": section_of(mode),
            "objects": n,
            "configs": str(configs),
            "data_root": str(data),
            # connect: on the warm server; embedded: a Spark in the process; databricks: the
            # emulated cluster's.
            "spark": "connect"
            if uses_server
            else ("databricks" if mode.startswith("databricks_") else "embedded"),
            "uses_server": uses_server,
            "spark_connect_port": self.server.port if uses_server and self.server else None,
            # On the server, its warehouse (a schema of their own keeps measurements apart).
            "spark_warehouse": self.server.warehouse
            if uses_server and self.server
            else str(run_dir / "spark-warehouse"),
            "bronze_schema": f"bench_{label or mode}_n{n}",
            "spark_master": self.args.spark_master,
            "threads": self.args.threads,
            "concurrency": self.args.concurrency,
            "pack_size": pack_size(self.args, n) if packed else 1,
            "objects_limit": 0,
            "workdir": str(run_dir),
            "out": str(run_dir / "result.json"),
            "timeout_s": self.args.timeout,
            "cluster_start_s": self.args.cluster_start_s,
            "databricks_poll_s": self.args.databricks_poll_s,
        }
        spec.update(extra)
        return spec

    def measure(
        self, spec: dict, *, record_n: int | None = None, retries: int | None = None
    ) -> dict:
        """Run one measurement (again while it was contended); keep the least contended attempt."""
        attempts: list[tuple[dict, dict | None]] = []
        retries = self.args.retry_contended if retries is None else retries
        for attempt in range(1 + max(0, retries)):
            if attempt:
                print(
                    f"  contended ({attempts[-1][0]['background_cores']} cores used by other processes): "
                    "measuring again",
                    flush=True,
                )
                spec = {**spec}
                run_dir = Path(spec["workdir"])
                shutil.rmtree(run_dir)
                run_dir.mkdir(parents=True)
                # Tables of its own on the server too: the attempt before left its tables.
                base = spec.setdefault("bronze_schema_base", spec["bronze_schema"])
                spec["bronze_schema"] = f"{base}_a{attempt + 1}"
            record, timeline = self._measure_once(spec, record_n=record_n)
            attempts.append((record, timeline))
            if not record.get("contended") or record.get("error"):
                break
        record, timeline = min(
            attempts, key=lambda a: (bool(a[0].get("error")), a[0]["background_cores"])
        )
        record["attempts"] = len(attempts)
        if len(attempts) > 1:
            record["other_attempts"] = [
                {k: a[0].get(k) for k in ("wall_s", "cpu_s", "background_cores", "started_at")}
                for a in attempts
                if a[0] is not record
            ]
        if timeline is not None:
            self.timelines[(record["mode"], record["objects"])] = timeline
        self.records.append(record)
        return record

    def _measure_once(
        self, spec: dict, *, record_n: int | None = None, quiet_wait: bool = True
    ) -> tuple[dict, dict | None]:
        mode, n = spec["mode"], record_n or spec["objects"]
        uses_server = bool(spec.get("uses_server"))
        waited, background_before = (0.0, None)
        if quiet_wait and self.args.quiet_wait > 0:
            waited, background_before = proc.wait_for_quiet(
                self.args.quiet_wait, CONTENDED_CORES, keep=self.kept()
            )
        label = spec.get("label") or mode
        log = self.logs / f"{label}-n{n}.log"
        started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(
            f"> {mode} N={spec['objects']}"
            + (f" (waited {waited:.0f} s for a quiet machine)" if waited > 6 else "")
            + " ... ",
            end="",
            flush=True,
        )
        spec["t_launch"] = time.time()
        spec_path = Path(spec["workdir"]) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        m = proc.run_measured(
            [sys.executable, "-m", "bench.worker", str(spec_path)],
            env=self.env_for(spec),
            log_path=log,
            timeout=spec["timeout_s"] + 300,
            cwd=str(REPO_ROOT),
            keep=self.kept(),
            count_kept_rss=uses_server,
        )
        out = Path(spec["out"])
        result: dict = (
            json.loads(out.read_text())
            if out.exists()
            else {"error": f"no result (exit {m.returncode})"}
        )
        for name in ("daemon.log", "dev.log", "connect-server.log"):
            if (Path(spec["workdir"]) / name).exists():
                shutil.copy(Path(spec["workdir"]) / name, self.logs / f"{label}-n{n}-{name}")
        measured_s = m.reaped - m.started
        background = m.background_cpu_s / measured_s if measured_s > 0 else 0.0
        record: dict = {
            "section": spec.get("section") or section_of(mode),
            "mode": mode,
            "objects": n,
            "wall_s": rounded(result.get("wall_s")),
            # The measurement's process tree, plus the warm server's CPU meanwhile when it used it.
            "cpu_s": rounded(m.cpu_s + (m.kept_cpu_s if uses_server else 0.0)),
            "ratio_to_floor": None,
            "ratio_to_warm_floor": None,
            "per_object_overhead_s": None,
            "runs": len(result.get("runs", [])) or None,
            "peak_rss_mb": rounded(m.peak_rss_mb, 0),
            "started_at": started_at,
            "extrapolated": False,
            "process_tree_s": rounded(m.wall_s),  # worker launch -> worker exit
            "tree_cpu_s": rounded(m.cpu_s),
            "tree_peak_rss_mb": rounded(m.tree_peak_rss_mb, 0),
            "rss_samples": m.rss_samples,
            "spark": spec.get("spark"),
            "bronze_schema": spec.get("bronze_schema"),
            "uses_warm_server": uses_server,
            "background_cores": round(background, 3),
            "contended": background > CONTENDED_CORES,
            "quiet_wait_s": round(waited, 1),
            "threads": spec["threads"],
            "concurrency": spec["concurrency"],
            "rows_per_object": self.args.rows,
        }
        if self.server is not None:
            if uses_server:
                record["server_cpu_s"] = rounded(m.kept_cpu_s)
                record["server_rss_at_peak_mb"] = rounded(m.kept_rss_at_peak_mb, 0)
                record["server_peak_rss_mb"] = rounded(m.kept_peak_rss_mb, 0)
            else:  # up but unused: neither in its CPU nor in its memory, nor in the background
                record["server_idle_cpu_s"] = rounded(m.kept_cpu_s)
        extras = result.get("extras") or {}
        record.update(extras)
        unloaded = extras.get("failed_objects") or max(
            0, (extras.get("objects_expected") or 0) - (extras.get("objects_materialized") or 0)
        )
        if result.get("error") or m.returncode != 0:
            record["error"] = result.get("error") or f"worker exit {m.returncode}"
        elif unloaded:  # a measurement of work not done is no measurement
            record["error"] = f"{unloaded} object(s) not loaded; see the logs"
        if record.get("error"):
            record["log"] = str(log)
        if m.killed:
            record["leftover_processes_killed"] = len(m.killed)
        timeline = None
        if result.get("timeline") is not None:
            timeline = {
                "t0": result.get("t0"),
                "wall_s": result.get("wall_s"),
                "timeline": result.get("timeline"),
                "runs": result.get("runs", []),
            }
        status = (
            "ERROR " + record["error"][:200]
            if record.get("error")
            else (
                f"wall {record['wall_s']} s, CPU {record['cpu_s']} s"
                + (f" (server {record['server_cpu_s']})" if "server_cpu_s" in record else "")
                + f", peak RSS {record['peak_rss_mb']:.0f} MB, bg {background:.2f} cores"
            )
        )
        print(status, flush=True)
        return record, timeline

    def start_server(self, stack: contextlib.ExitStack) -> None:
        """The warm "all-purpose cluster": started (and warmed up) outside any measurement."""
        print("  starting the warm Spark Connect server ... ", end="", flush=True)
        server = WarmServer(
            self.workdir / "warm-server",
            master=self.args.spark_master,
            log_copy=self.logs / "warm-server.log",
        )
        stack.enter_context(server)
        stack.callback(self._clear_server)
        self.server = server
        print(f"up in {server.startup_s:.1f} s on port {server.port}", flush=True)
        record = {
            "section": "warm_server",
            "mode": "warm_server",
            "objects": self.args.warmup_objects,
            "wall_s": None,
            "cpu_s": None,
            "startup_s": round(server.startup_s, 2),
            "port": server.port,
            "master": self.args.spark_master,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rss_after_start_mb": round(server.rss_mb()),
        }
        if self.args.warmup_objects > 0:
            configs, data = write_objects(
                self.workdir / "warmup", self.args.warmup_objects, self.args.rows
            )
            spec = self.spec("warm_floor", self.args.warmup_objects, configs, data, label="warmup")
            print("  warm-up (not a measurement): ", end="", flush=True)
            warm, _ = self._measure_once(spec, quiet_wait=False)
            record["warmup_wall_s"] = warm.get("wall_s")
            record["warmup_server_cpu_s"] = warm.get("server_cpu_s")
            if warm.get("error"):
                raise RuntimeError(f"warming up the Spark Connect server failed: {warm['error']}")
        record["rss_after_warmup_mb"] = round(server.rss_mb())
        record["heap_after_gc_after_warmup_mb"] = rounded(server.heap_after_gc_mb(), 1)
        self.server_record = record
        self.records.append(record)

    def _clear_server(self) -> None:
        self.server = None

    def server_after_main(self) -> None:
        """The warm server once every main measurement is done (it stops right after)."""
        assert self.server is not None
        record = self.server_record
        record["cpu_total_s"] = round(self.server.cpu_s(), 1)
        record["rss_end_mb"] = round(self.server.rss_mb())
        record["heap_after_gc_end_mb"] = rounded(self.server.heap_after_gc_mb(), 1)
        record["spark_jobs"] = self.server.spark_jobs()


def rounded(value, digits: int = 2):
    return None if value is None else round(float(value), digits)
