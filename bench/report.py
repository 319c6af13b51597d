"""Outputs: the console text, latest.json (+ a timestamped copy), summary.md, timeline.png."""

from __future__ import annotations

import json
from pathlib import Path

MODE_ORDER = [
    "naive",
    "warm_naive",
    "floor",
    "warm_floor",
    "per_process",
    "per_run",
    "packed",
    "databricks_per_run",
    "databricks_packed",
    "scale_definitions_load",
    "scale_sensor_first_tick",
    "scale_sensor_steady_tick",
]
# Sections shown in the modes table; the others have blocks of their own.
TABLE_SECTIONS = ("main", "databricks", "scale")

MODE_BLURB = {
    "naive": "what the seed posts' users write: one fresh process, one embedded local[2] "
    "SparkSession (JVM start included), a ThreadPoolExecutor (T threads) over spark.read + "
    "df.write.format('delta').saveAsTable; no audit columns, no exactly-once tracking",
    "warm_naive": "the same user code on a Spark Connect session of the warm server (a notebook "
    "on a cluster that is already up)",
    "floor": "bare Spark, started for the purpose: one fresh process, one embedded local[2] "
    "SparkSession (JVM start included), the product's loading loop over all objects (T threads)",
    "warm_floor": "bare Spark on the warm cluster: the same loop on a Spark Connect session of "
    "the already running server (the work itself, no JVM start)",
    "per_process": "a fresh Python + embedded Spark process per object, C at a time",
    "per_run": "Dagster: one UI-style backfill, one run per object (FANOUT_OBJECTS_PER_RUN=1)",
    "packed": "Dagster: one UI-style backfill, K objects per run (FANOUT_OBJECTS_PER_RUN=K, "
    "T threads)",
    "databricks_per_run": "Dagster + Databricks emulator: one remote run per object",
    "databricks_packed": "Dagster + Databricks emulator: K objects per remote run",
}

# The targets in the summary's order (a prefix of the name each record gives its target).
TARGET_ORDER = (
    "launch -> materialized",
    "all sample objects materialized",
    "Spark jobs per object load",
    "packed at N=60 vs naive",
    "per_run at N=60 vs naive",
    "packed at N=60 vs warm_naive",
    "per_run at N=60 vs warm_naive",
    "per_run at N=60 vs floor",
    "packed at N=60 vs floor",
    "backfill of",
    "partitions page",
    "server memory after",
    "per_run at N=60: peak RSS",
    "packed at N=60: peak RSS",
    "scale_",
)
# Targets listed as `not measured` when no record gives them: prefix -> (name, bar, section, mode).
TARGETS_EXPECTED = {
    "launch -> materialized": (
        "launch -> materialized, one object (median)",
        "<= 2 s, median of >= 7",
        "dev_loop",
        "dev_loop",
    ),
    "all sample objects materialized": (
        "all sample objects materialized after the UI is up (make dev)",
        "<= 20 s",
        "dev_loop",
        "dev_loop",
    ),
    "Spark jobs per object load": (
        "Spark jobs per object load (warm server)",
        "<= 2",
        "warm_server",
        "warm_server",
    ),
    "packed at N=60 vs naive": (
        "packed at N=60 vs naive (backfill pickup included)",
        "<= 1x naive",
        "main",
        "packed",
    ),
    "per_run at N=60 vs floor": ("per_run at N=60 vs floor", "<= 3x floor", "main", "per_run"),
    "packed at N=60 vs floor": (
        "packed at N=60 vs floor (backfill pickup included)",
        "<= 1.5x floor",
        "main",
        "packed",
    ),
    "backfill of": ("backfill of 1000 objects (per_run, packed)", "reported", "thousand", ""),
    "partitions page": (
        "partitions page of bronze with 10000 partitions opens in a browser",
        "<= 3 s",
        "thousand",
        "partitions_page",
    ),
    "server memory after": (
        "server memory after 500 runs: heap after GC, growth",
        "<= 50 MB",
        "server_memory",
        "server_memory",
    ),
    "per_run at N=60: peak RSS": (
        "per_run at N=60: peak RSS of the process tree",
        "reported",
        "main",
        "per_run",
    ),
}


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sort_key(r: dict):
    return (r["objects"] or 0, MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else 99)


def _rss(r: dict) -> str:
    if r.get("peak_rss_mb") is None:
        return "-"
    text = f"{r['peak_rss_mb']:.0f}"
    if r.get("server_rss_at_peak_mb"):
        text += f" ({r['server_rss_at_peak_mb']:.0f})"
    return text


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "mode",
        "N",
        "wall s",
        "CPU s",
        "x naive",
        "x warm naive",
        "x floor",
        "x warm floor",
        "overhead/obj s",
        "runs",
        "peak RSS MB (server)",
        "bg cores",
        "notes",
    ]
    rows = []
    for r in sorted(
        (r for r in records if r.get("section", "main") in TABLE_SECTIONS), key=_sort_key
    ):
        notes = []
        if r.get("extrapolated"):
            notes.append(f"extrapolated from N={','.join(map(str, r['extrapolated_from']))}")
        if r["mode"] in ("per_run", "packed") and r.get("spark"):
            notes.append(f"{r['spark']} Spark")
        if r.get("pickup_s") is not None:
            notes.append(f"pickup {r['pickup_s']:.0f}s")
        if r.get("objects_per_run") and "packed" in r["mode"]:
            notes.append(f"K={r['objects_per_run']}")
        if r.get("api_calls_per_object") is not None:
            notes.append(
                f"{r['api_calls_per_object']} API calls/obj, cluster start {r.get('cluster_start_s_paid')}s"
            )
        if r.get("server_cpu_s") is not None:
            notes.append(f"server CPU {r['server_cpu_s']:.1f}s")
        if r.get("target"):
            notes.append(("MET " if r.get("target_met") else "MISSED ") + r["target"])
        notes.extend(r.get("targets_judged") or [])
        if r.get("contended"):
            notes.append("CONTENDED")
        if r.get("error"):
            notes.append("ERROR: " + r["error"][:80])
        rows.append(
            [
                r["mode"],
                str(r["objects"]),
                _fmt(r.get("wall_s")),
                _fmt(r.get("cpu_s")),
                _fmt(r.get("ratio_to_naive"), 2),
                _fmt(r.get("ratio_to_warm_naive"), 2),
                _fmt(r.get("ratio_to_floor"), 2),
                _fmt(r.get("ratio_to_warm_floor"), 2),
                _fmt(r.get("per_object_overhead_s"), 2),
                _fmt(r.get("runs")),
                _rss(r),
                _fmt(r.get("background_cores"), 2),
                "; ".join(notes),
            ]
        )
    return header, rows


def _measured(entry: dict) -> str:
    value, unit = entry.get("measured"), entry.get("unit", "")
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "MB":
        return f"{value:.0f} MB" if abs(value) >= 10 else f"{value:.1f} MB"
    return f"{value:.2f} {unit}".strip()


def target_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every target measured, in TARGET_ORDER, and a line for each expected one that was not."""
    header = ["target", "measured", "bar", "result", "notes"]
    entries = [(e, r) for r in records for e in (r.get("targets") or []) if not r.get("error")]

    def rank(entry: dict) -> int:
        for i, prefix in enumerate(TARGET_ORDER):
            if entry["name"].startswith(prefix):
                return i
        return len(TARGET_ORDER)

    rows = []
    seen = set()
    for entry, r in sorted(entries, key=lambda er: rank(er[0])):
        seen.add(rank(entry))
        result = (
            "reported"
            if entry.get("bar") == "reported"
            else (
                "not judged" if entry.get("met") is None else ("MET" if entry["met"] else "NOT MET")
            )
        )
        notes = [entry["note"]] if entry.get("note") else []
        if r.get("contended") and entry.get("unit") in ("s", "x"):
            notes.append("CONTENDED: times inflated")
        rows.append([entry["name"], _measured(entry), entry["bar"], result, "; ".join(notes)])
    for prefix, (name, bar, _, _) in TARGETS_EXPECTED.items():
        if TARGET_ORDER.index(prefix) not in seen:
            rows.append([name, "-", bar, "not measured", _why_not(prefix, records)])
    rows.sort(
        key=lambda row: next((i for i, p in enumerate(TARGET_ORDER) if row[0].startswith(p)), 99)
    )
    return header, rows


def _why_not(prefix: str, records: list[dict]) -> str:
    _, _, section, mode = TARGETS_EXPECTED[prefix]
    failed = [
        r
        for r in records
        if r.get("error")
        and r.get("section") == section
        and (r["mode"] == section or (r["mode"] == mode and r.get("objects") in (60, None)))
    ]
    if failed:
        return "ERROR: " + failed[0]["error"][:100]
    if section in ("main", "warm_server"):
        return "not in this run's modes / N"
    ran = any(r.get("section") == section for r in records)
    return "no figure (see its record)" if ran else f"section {section} not run"


def _text_table(header: list[str], rows: list[list[str]], left: set[int]) -> str:
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    widths[-1] = len(header[-1])

    def line(cells):
        return "  ".join(
            c.ljust(w) if i in left or i == len(cells) - 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


def console_table(records: list[dict]) -> str:
    header, rows = table_rows(records)
    return _text_table(header, rows, {0})


def console_text(records: list[dict]) -> str:
    """What the run prints at its end: the targets, then the modes table (if any)."""
    t_header, t_rows = target_rows(records)
    text = "Targets\n" + _text_table(t_header, t_rows, {0, 1, 2, 3})
    if table_rows(records)[1]:
        text += "\n\n" + console_table(records)
    return text


def _markdown(header: list[str], rows: list[list[str]], left: set[int]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join(
            "---" if i in left or i == len(header) - 1 else "---:" for i in range(len(header))
        )
        + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown_table(records: list[dict]) -> str:
    header, rows = table_rows(records)
    return _markdown(header, rows, {0})


def write_json(records: list[dict], out_dir: Path, stamp: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(records, indent=1, default=str)
    latest = out_dir / "latest.json"
    stamped = out_dir / f"results-{stamp}.json"
    latest.write_text(blob + "\n")
    stamped.write_text(blob + "\n")
    return [latest, stamped]


def _dev_loop_block(records: list[dict]) -> list[str]:
    r = next((r for r in records if r["mode"] == "dev_loop"), None)
    if r is None:
        return []
    lines = ["## Dev loop (`make dev`)", ""]
    if r.get("error"):
        return lines + [f"ERROR: {r['error']}", ""]
    phases = r.get("launch_median_phases_s") or {}
    lines += [
        f"- UI answering {r.get('make_dev_to_ui_s')} s after `make dev` started (the Spark "
        f"Connect server was ready after {r.get('server_ready_s')} s of it).",
        f"- All {r.get('sample_partitions')} sample objects materialized "
        f"{r.get('first_minutes_s')} s after the UI answered ({r.get('first_minutes_runs')} runs "
        "started by the object sensor).",
        f"- One object (`{r.get('launch_object')}`), launched like the UI's Materialize button, "
        f"{r.get('launches')} times: launch -> materialized "
        + ", ".join(f"{t:.2f}" for t in r.get("launch_to_materialized_s") or [])
        + f" s (median {r.get('launch_to_materialized_median_s')} s; run end "
        f"{r.get('launch_to_run_end_median_s')} s).",
        "- Where a launch's time goes (medians, s): "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v}" for k, v in phases.items())
        + ".",
        f"- The whole `make dev` session: CPU {r.get('cpu_s')} s, peak RSS {_fmt(r.get('peak_rss_mb'), 0)} MB "
        "(server, webserver, daemon, code server, run workers).",
        "",
    ]
    return lines


def _server_memory_block(records: list[dict]) -> list[str]:
    r = next((r for r in records if r["mode"] == "server_memory"), None)
    if r is None:
        return []
    lines = ["## Spark Connect server memory over many runs", ""]
    if r.get("error"):
        return lines + [f"ERROR: {r['error']}", ""]
    lines += [
        f"{r.get('server_runs')} Dagster runs (in-process `materialize`, one Connect session "
        f"each, rotating over {r.get('objects_rotated')} sample objects; {r.get('mean_run_s')} s "
        f"per run) on one server. Heap after a full GC (jcmd) and the JVM's RSS:",
        "",
        "| runs | s | RSS MB | heap after GC MB |",
        "|---:|---:|---:|---:|",
    ]
    for sample in r.get("samples") or []:
        lines.append(
            f"| {sample['runs']} | {sample['seconds']} | {sample['rss_mb']} | "
            f"{_fmt(sample['heap_after_gc_mb'])} |"
        )
    lines.append("")
    return lines


def write_summary(
    records: list[dict], out_dir: Path, *, command: str, machine: dict, notes: list[str]
) -> Path:
    started = [r["started_at"] for r in records if r.get("started_at")]
    t_header, t_rows = target_rows(records)
    lines = [
        "# Benchmark: orchestration overhead of many small objects",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.get('cpus')} CPUs, {machine.get('memory_gb')} GB RAM, Python "
        f"{machine.get('python')}, Java {machine.get('java')}, dagster {machine.get('dagster')}, "
        f"pyspark {machine.get('pyspark')}, delta-spark {machine.get('delta_spark')}; git "
        f"{machine.get('git_commit')}{' (dirty)' if machine.get('git_dirty') else ''}  ",
        f"Started: {min(started) if started else '-'}",
        "",
        "## Targets",
        "",
        _markdown(t_header, t_rows, {0, 1, 2, 3}),
        "",
    ]
    if table_rows(records)[1]:
        lines += _modes_block(records)
    lines += _dev_loop_block(records)
    lines += _server_memory_block(records)
    if notes:
        lines += ["## Findings", ""] + [f"- {n}" for n in notes] + [""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path


def _modes_block(records: list[dict]) -> list[str]:
    lines = ["## Modes", ""]
    for mode in MODE_ORDER:
        if mode in MODE_BLURB and any(r["mode"] == mode for r in records):
            lines.append(f"- `{mode}`: {MODE_BLURB[mode]}")
    lines += [
        "",
        "`wall s`: naive, warm_naive, floor, warm_floor = process launch -> last object done "
        "(naive, floor: JVM start included; warm_*: Connect session on the running server); "
        "per_process = first "
        "launch -> last process exit; Dagster modes = backfill submit -> last run end (the "
        "daemon's start-up is in `total_s` in latest.json; the backfill daemon's pickup, "
        "`pickup s`, is included). `CPU s`: the whole process tree (Python, JVMs, daemon, code "
        "servers, run workers), plus the warm Spark Connect server's CPU during the "
        "measurement for the modes that use it (warm_floor; per_run and packed with "
        "`--spark connect`). `x naive`, `x warm naive`, `x floor`, `x warm floor` = wall / that "
        "mode's wall at the same N; `overhead/obj s` = (wall - floor wall) / N. `peak RSS MB`: the largest summed "
        "resident memory of the measurement's processes, sampled every 0.5 s, with the warm "
        "server's share at that moment in brackets when the mode uses it (shared pages count "
        "once per process). `bg cores`: CPU used by other processes on the machine during the "
        "measurement (a shared box); above 0.25 the row is marked CONTENDED and its times are "
        "inflated.",
        "",
        markdown_table(records),
        "",
    ]
    return lines


def write_timeline(timelines: dict[str, dict], n: int, path: Path) -> Path | None:
    """One subplot per mode at N objects: a bar per object, coloured by run; grey = run/process span."""
    timelines = {mode: t for mode, t in timelines.items() if t and t.get("timeline")}
    if not timelines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODE_ORDER if m in timelines] + [
        m for m in timelines if m not in MODE_ORDER
    ]
    height = sum(2.0 + 0.035 * len(timelines[m]["timeline"]) for m in modes)
    fig, axes = plt.subplots(
        len(modes),
        1,
        figsize=(13, max(4.0, height)),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(1, len(timelines[m]["timeline"])) for m in modes]},
    )
    tab20 = plt.get_cmap("tab20")
    palette = [tab20(i) for i in range(20) if i not in (6, 7)]  # no reds: failures are hatched
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        data = timelines[mode]
        t0 = data["t0"]
        objects = sorted(data["timeline"], key=lambda o: (o["start"], o["object"]))
        run_index = {
            r["run"]: i
            for i, r in enumerate(sorted(data["runs"], key=lambda r: r.get("start") or 0))
        }
        rows = {o["object"]: i for i, o in enumerate(objects)}
        # Run (or process) lifetime behind its objects: start-up and teardown show as grey.
        by_run: dict[str, list[int]] = {}
        for o in objects:
            by_run.setdefault(o["run"], []).append(rows[o["object"]])
        for run in data["runs"]:
            ys = by_run.get(run["run"])
            if not ys or not run.get("start") or not run.get("end"):
                continue
            middle = (min(ys) + max(ys)) / 2
            ax.barh(
                middle,
                run["end"] - run["start"],
                left=run["start"] - t0,
                height=max(ys) - min(ys) + 0.9,
                color="0.85",
                edgecolor="0.6",
                linewidth=0.4,
                zorder=1,
            )
            launched = run.get("starting") or run["start"]
            if run.get("created") and run["created"] < launched:
                # Queued: created by the backfill, waiting for the run queue.
                ax.hlines(
                    middle,
                    run["created"] - t0,
                    launched - t0,
                    colors="0.5",
                    linestyles=":",
                    linewidth=0.8,
                    zorder=1,
                )
            if launched < run["start"]:
                # Launched from the queue: the run worker process starting (Python, code load).
                ax.hlines(
                    middle, launched - t0, run["start"] - t0, colors="0.3", linewidth=2.0, zorder=1
                )
        for o in objects:
            colour = palette[run_index.get(o["run"], 0) % len(palette)]
            ok = o.get("ok", True)
            ax.barh(
                rows[o["object"]],
                max(0.05, o["end"] - o["start"]),
                left=o["start"] - t0,
                height=0.8,
                color=colour if ok else "white",
                edgecolor=None if ok else "black",
                hatch=None if ok else "xxx",
                zorder=2,
            )
        wall = data.get("wall_s")
        ax.set_title(
            f"{mode}: {len(objects)} objects, {len(data['runs'])} run(s), wall {wall:.1f} s "
            "(own time axis)",
            loc="left",
            fontsize=10,
        )
        horizon = max([o["end"] for o in objects] + [r["end"] or 0 for r in data["runs"]]) - t0
        ax.set_xlim(0, horizon * 1.02)
        ax.set_ylim(len(objects) - 0.5 + 0.5, -1)
        ax.set_yticks([])
        ax.set_ylabel("objects")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(
        "seconds since start (floor, warm_floor: process launch; per_process: first launch; "
        "Dagster: backfill submit)\nColour = run/process, grey = run/process lifetime, "
        "dotted = queued, dark line = run worker starting, hatched = failed"
    )
    fig.suptitle(f"Per-object timeline at N = {n}", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
