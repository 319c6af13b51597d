"""The derived figures (ratios to the floors), the targets (each on the record it
is measured on) and the findings (where the time goes), from the records alone.
"""

from __future__ import annotations

from bench.runner import section_of

DAGSTER_MODES = ("per_run", "packed", "databricks_per_run", "databricks_packed")
TARGET_N = 60  # the N the mode targets are judged at (and the timeline drawn)
# (mode, baseline, bar): `mode`'s wall at TARGET_N over `baseline`'s; bar None: reported.
RATIO_TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("per_run", "floor", 3.0),
    ("packed", "floor", 1.5),
    ("per_run", "naive", None),
    ("packed", "naive", 1.0),  # issue 18: the product packed is no slower than user code
    ("per_run", "warm_naive", None),
    ("packed", "warm_naive", None),
)
JOBS_PER_LOAD_TARGET = 2.0
HEAP_GROWTH_TARGET_MB = 50.0
SERVER_RUNS_TARGET = 500
LAUNCH_TARGET_S = 2.0
MIN_LAUNCHES = 7
FIRST_MINUTES_TARGET_S = 20.0
DEFS_LOAD_TARGET_S = 5.0
SENSOR_TICK_TARGET_S = 30.0
STEADY_TICK_TARGET_S = 2.0
CURSOR_TARGET_BYTES = 10_000


def finish(records: list[dict], machine: dict) -> list[str]:
    """Ratios and targets on the records; the findings, as notes for the summary."""
    derive(records, machine)
    set_targets(records)
    return findings(records)


# The baselines every comparable record is divided by (`ratio_to_<baseline>`).
BASELINES = ("floor", "warm_floor", "naive", "warm_naive")


def derive(records: list[dict], machine: dict) -> None:
    """The ratios to the baselines, on every comparable record; the overhead per object
    over `floor` and over `naive`."""
    walls = {
        (r["mode"], r["objects"]): r["wall_s"]
        for r in records
        if r["mode"] in BASELINES and r.get("wall_s") and not r.get("error")
    }
    for r in records:
        r.setdefault("section", section_of(r["mode"]))
        r.setdefault("machine", machine)
        if r["section"] not in ("main", "databricks") or r.get("wall_s") is None:
            continue
        for baseline in BASELINES:
            wall = walls.get((baseline, r["objects"]))
            if not wall:
                continue
            r[f"ratio_to_{baseline}"] = round(r["wall_s"] / wall, 3)
            if r.get("pickup_s") is not None:
                # Without the wait for the backfill daemon's next 30 s loop.
                r[f"ratio_to_{baseline}_excl_pickup"] = round(
                    (r["wall_s"] - r["pickup_s"]) / wall, 3
                )
        for baseline, key in (("floor", "per_object_overhead_s"), ("naive", "overhead_vs_naive_s")):
            wall = walls.get((baseline, r["objects"]))
            if wall:
                r[key] = round((r["wall_s"] - wall) / r["objects"], 3)


def findings(records: list[dict]) -> list[str]:
    """Where the time goes, from the records themselves."""
    notes = []
    for r in sorted(records, key=lambda r: (r["objects"] or 0, r["mode"])):
        if r["mode"] in DAGSTER_MODES and r.get("mean_run_s") is not None:
            notes.append(
                f"{r['mode']} N={r['objects']} ({r.get('spark')} Spark): {r.get('runs')} runs, "
                f"mean run {r['mean_run_s']} s, backfill pickup {r.get('pickup_s')} s, "
                f"mean queue wait {r.get('mean_queue_wait_s')} s, daemon-included total "
                f"{r.get('total_s')} s"
                + (
                    f"; x floor without the pickup {r['ratio_to_floor_excl_pickup']}"
                    if r.get("ratio_to_floor_excl_pickup") is not None
                    else ""
                )
                + (
                    "; mean run phases: " + _phases_text(r["mean_run_phases_s"])
                    if r.get("mean_run_phases_s")
                    else ""
                )
            )
        if r["mode"] == "per_process" and r.get("mean_process_s") is not None:
            notes.append(
                f"per_process N={r['objects']}: mean process {r['mean_process_s']} s "
                f"(Python + JVM start {r.get('mean_session_start_s')} s)"
            )
        if r["mode"] in BASELINES and r.get("session_start_s") is not None:
            notes.append(
                f"{r['mode']} N={r['objects']}: session ready {r['session_start_s']} s after "
                f"launch, objects {r.get('objects_s')} s"
            )
        if r["mode"] == "warm_server":
            jobs = r.get("spark_jobs") or {}
            parts = [
                f"warm server: up in {r.get('startup_s')} s (outside every measurement)",
                f"warm-up of {r['objects']} objects {r.get('warmup_wall_s')} s"
                if r.get("warmup_wall_s") is not None
                else "no warm-up",
                f"RSS {r.get('rss_after_start_mb')} MB started, {r.get('rss_after_warmup_mb')} "
                "MB warmed up"
                + (
                    f", {r['rss_end_mb']} MB after the main section"
                    if r.get("rss_end_mb") is not None
                    else ""
                ),
                f"heap after GC {r.get('heap_after_gc_after_warmup_mb')} -> "
                f"{r.get('heap_after_gc_end_mb')} MB"
                if r.get("heap_after_gc_end_mb") is not None
                else "",
                f"Spark jobs per object load {jobs['jobs_per_object']} ({jobs['job_s_per_object']}"
                f" s of jobs per load, median job {jobs['median_job_s']} s; over the last "
                f"{jobs['loads_seen']} loads)"
                if jobs.get("jobs_per_object")
                else "",
            ]
            notes.append("; ".join(p for p in parts if p))
        if r["mode"] == "dev_loop" and not r.get("error"):
            notes.append(
                f"make dev: UI up {r.get('make_dev_to_ui_s')} s after the command (Spark Connect "
                f"server ready in {r.get('server_ready_s')} s), all {r.get('sample_partitions')} "
                f"sample objects materialized {r.get('first_minutes_s')} s after the UI "
                f"({r.get('first_minutes_runs')} runs; mean run phases: "
                f"{_phases_text(r.get('first_minutes_mean_run_phases_s') or {})}); one launch "
                f"-> materialized {r.get('launch_to_materialized_s')} s (median phases: "
                f"{_phases_text(r.get('launch_median_phases_s') or {})})"
            )
        if r["mode"] == "server_memory" and not r.get("error"):
            notes.append(
                f"server memory over {r.get('server_runs')} runs ({r.get('mean_run_s')} s each, "
                f"in-process): RSS {r.get('rss_after_first_run_mb')} -> {r.get('rss_end_mb')} MB, "
                f"heap after GC {r.get('heap_after_gc_after_first_run_mb')} -> "
                f"{r.get('heap_after_gc_end_mb')} MB"
            )
        if r["mode"] == "scale_sensor_first_tick" and not r.get("error"):
            notes.append(
                f"sensor first tick over {r['objects']} configs: reading the configs alone "
                f"{r.get('config_load_s')} s, the sensor function alone {r.get('sensor_eval_in_process_s')} s "
                f"({r.get('run_requests_in_tick')} run requests); all partitions in after {r.get('wall_s')} s; "
                f"then queued runs created at {r.get('run_creation_per_s')}/s, so the whole tick takes "
                f"{'~' if r.get('tick_total_estimated') else ''}{r.get('tick_total_s')} s; "
                f"code server heartbeat timeouts during it: {r.get('code_server_heartbeat_timeouts')}"
            )
        if r["mode"] == "scale_sensor_steady_tick":
            notes.append(
                f"sensor steady ticks over {r['objects']} configs (nothing changed): "
                f"{r.get('steady_tick_s')} s each through the daemon and a long-lived code "
                f"server (median {r.get('steady_tick_median_s')} s); the sensor function alone "
                f"{r.get('sensor_eval_steady_in_process_s')} s, its first tick in a fresh "
                f"process {r.get('cold_process_tick_s')} s; cursor {r.get('cursor_bytes')} "
                f"bytes; {r.get('state_entries')} per-object entries in the key-value store; "
                f"first tick (every object requested, {r.get('first_tick_runs')} runs) "
                f"{r.get('first_tick_s')} s"
            )
        if r.get("contended"):
            notes.append(
                f"{r['mode']} N={r['objects']}: other processes used {r['background_cores']} cores on average "
                "during this measurement; its times are inflated"
            )
    return notes


def set_targets(records: list[dict]) -> None:
    """The targets, each on the record it is measured on (`targets`: name, measured, unit,
    bar, met - None where there is no bar or too little to judge)."""
    by = {
        (r["mode"], r["objects"]): r
        for r in records
        if not r.get("error") and r["section"] in ("main", "databricks")
    }

    def add(record, name, measured, unit, bar, met, note=""):
        entry = {"name": name, "measured": measured, "unit": unit, "bar": bar, "met": met}
        if note:
            entry["note"] = note
        record.setdefault("targets", []).append(entry)

    for r in records:
        r.pop("targets", None)
        r.pop("targets_judged", None)
        if r.get("error"):
            continue
        if r["mode"] == "dev_loop":
            median = r.get("launch_to_materialized_median_s")
            enough = (r.get("launches") or 0) >= MIN_LAUNCHES
            add(
                r,
                "launch -> materialized, one object (median)",
                median,
                "s",
                f"<= {LAUNCH_TARGET_S:g} s, median of >= {MIN_LAUNCHES}",
                (median <= LAUNCH_TARGET_S) if median is not None and enough else None,
                f"median of {r.get('launches')}"
                + ("" if enough else f": fewer than {MIN_LAUNCHES}, not judged"),
            )
            first = r.get("first_minutes_s")
            add(
                r,
                "all sample objects materialized after the UI is up (make dev)",
                first,
                "s",
                f"<= {FIRST_MINUTES_TARGET_S:g} s",
                None if first is None else first <= FIRST_MINUTES_TARGET_S,
                f"{r.get('sample_partitions')} objects",
            )
        if r["mode"] == "server_memory":
            runs = r.get("server_runs")
            growth = r.get("heap_after_gc_growth_mb")
            enough = (runs or 0) >= SERVER_RUNS_TARGET
            add(
                r,
                f"server memory after {runs} runs: heap after GC, growth",
                growth,
                "MB",
                f"<= {HEAP_GROWTH_TARGET_MB:g} MB over {SERVER_RUNS_TARGET} runs",
                growth <= HEAP_GROWTH_TARGET_MB if growth is not None and enough else None,
                f"{r.get('heap_after_gc_after_first_run_mb')} -> "
                f"{r.get('heap_after_gc_end_mb')} MB from run 1 to run {runs}"
                if r.get("heap_measured")
                else "no jcmd (JDK) on this machine",
            )
            add(
                r,
                f"server memory after {runs} runs: RSS",
                r.get("rss_end_mb"),
                "MB",
                "reported",
                None,
                f"{r['rss_growth_mb']:+.1f} MB since run 1"
                if r.get("rss_growth_mb") is not None
                else "",
            )
        if r["mode"] == "warm_server" and (r.get("spark_jobs") or {}).get("jobs_per_object"):
            jobs = r["spark_jobs"]
            add(
                r,
                "Spark jobs per object load (warm server)",
                jobs["jobs_per_object"],
                "",
                f"<= {JOBS_PER_LOAD_TARGET:g}",
                jobs["jobs_per_object"] <= JOBS_PER_LOAD_TARGET,
                f"small CSV loads of the main section; {jobs['job_s_per_object']} s of jobs per "
                f"load; over the last {jobs['loads_seen']} loads",
            )
        if r.get("target") and r["mode"].startswith("scale_"):  # set by scale_section
            add(r, r["mode"], r.get("wall_s"), "s", r["target"], r.get("target_met"))
    for mode, baseline, bar in RATIO_TARGETS:
        found = by.get((mode, TARGET_N))
        ratio = None if found is None else found.get(f"ratio_to_{baseline}")
        if found is None or ratio is None:
            continue
        r = found
        note = "; ".join(
            x
            for x in (
                "extrapolated" if r.get("extrapolated") else "",
                f"{r['spark']} Spark" if r.get("spark") else "",
                f"pickup {r['pickup_s']:.1f} s" if r.get("pickup_s") is not None else "",
                f"{r[f'ratio_to_{baseline}_excl_pickup']:.2f}x without it"
                if r.get(f"ratio_to_{baseline}_excl_pickup") is not None
                else "",
            )
            if x
        )
        name = f"{mode} at N={TARGET_N} vs {baseline}" + (
            " (backfill pickup included)" if mode == "packed" else ""
        )
        if bar is None:
            add(r, name, ratio, "x", "reported", None, note)
            continue
        add(r, name, ratio, "x", f"<= {bar:g}x {baseline}", ratio <= bar, note)
        judged = f"{'MET' if ratio <= bar else 'MISSED'} <= {bar:g}x {baseline} at N={TARGET_N}"
        r.setdefault("targets_judged", []).append(judged)
    for mode in ("per_run", "packed"):
        found = by.get((mode, TARGET_N))
        if found is not None and found.get("peak_rss_mb") is not None:
            r = found
            add(
                r,
                f"{mode} at N={TARGET_N}: peak RSS of the process tree",
                r["peak_rss_mb"],
                "MB",
                "reported",
                None,
                f"warm server's share {r['server_rss_at_peak_mb']:.0f} MB"
                if r.get("server_rss_at_peak_mb")
                else "no warm server",
            )


def _phases_text(phases: dict) -> str:
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v}" for k, v in phases.items())
