"""Outputs: the console table, latest.json (+ a timestamped copy), summary.md, timeline.png."""

from __future__ import annotations

import json
from pathlib import Path

MODE_ORDER = [
    "floor",
    "per_process",
    "per_run",
    "packed",
    "databricks_per_run",
    "databricks_packed",
    "scale_definitions_load",
    "scale_sensor_first_tick",
    "scale_sensor_steady_tick",
]

MODE_BLURB = {
    "floor": "bare Spark: one local[2] SparkSession, run_pack over all objects (T threads)",
    "per_process": "a fresh Python + Spark process per object, C at a time",
    "per_run": "Dagster: one backfill, one run per object (FANOUT_OBJECTS_PER_RUN=1)",
    "packed": "Dagster: one backfill, K objects per run (FANOUT_OBJECTS_PER_RUN=K, T threads)",
    "databricks_per_run": "Dagster + Databricks emulator: one remote run per object",
    "databricks_packed": "Dagster + Databricks emulator: K objects per remote run",
}


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "mode",
        "N",
        "wall s",
        "CPU s",
        "x floor",
        "overhead/obj s",
        "runs",
        "bg cores",
        "notes",
    ]
    rows = []
    for r in sorted(
        records,
        key=lambda r: (
            r["objects"],
            MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else 99,
        ),
    ):
        notes = []
        if r.get("extrapolated"):
            notes.append(f"extrapolated from N={','.join(map(str, r['extrapolated_from']))}")
        if r.get("pickup_s") is not None:
            notes.append(f"pickup {r['pickup_s']:.0f}s")
        if r.get("objects_per_run") and "packed" in r["mode"]:
            notes.append(f"K={r['objects_per_run']}")
        if r.get("api_calls_per_object") is not None:
            notes.append(
                f"{r['api_calls_per_object']} API calls/obj, cluster start {r.get('cluster_start_s_paid')}s"
            )
        if r.get("target"):
            notes.append(("MET " if r.get("target_met") else "MISSED ") + r["target"])
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
                _fmt(r.get("ratio_to_floor"), 2),
                _fmt(r.get("per_object_overhead_s"), 2),
                _fmt(r.get("runs")),
                _fmt(r.get("background_cores"), 2),
                "; ".join(notes),
            ]
        )
    return header, rows


def console_table(records: list[dict]) -> str:
    header, rows = table_rows(records)
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    widths[-1] = len(header[-1])

    def line(cells):
        return "  ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


def markdown_table(records: list[dict]) -> str:
    header, rows = table_rows(records)
    out = [
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---" if i in (0, len(header) - 1) else "---:" for i in range(len(header)))
        + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(records: list[dict], out_dir: Path, stamp: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(records, indent=1, default=str)
    latest = out_dir / "latest.json"
    stamped = out_dir / f"results-{stamp}.json"
    latest.write_text(blob + "\n")
    stamped.write_text(blob + "\n")
    return [latest, stamped]


def write_summary(
    records: list[dict], out_dir: Path, *, command: str, machine: dict, notes: list[str]
) -> Path:
    lines = [
        "# Benchmark: orchestration overhead of many small objects",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.get('cpus')} CPUs, {machine.get('memory_gb')} GB RAM, {machine.get('python')}, "
        f"Java {machine.get('java')}, dagster {machine.get('dagster')}, pyspark {machine.get('pyspark')}; "
        f"git {machine.get('git_commit')}  ",
        f"Started: {min((r.get('started_at') or '') for r in records) if records else '-'}",
        "",
        "Modes:",
        "",
    ]
    for mode in MODE_ORDER:
        if mode in MODE_BLURB and any(r["mode"] == mode for r in records):
            lines.append(f"- `{mode}`: {MODE_BLURB[mode]}")
    lines += [
        "",
        "`wall s`: floor = process launch -> last object done (incl. JVM start); per_process = first launch -> "
        "last process exit; Dagster modes = backfill submit -> last run end (the daemon's start-up is in "
        "`total_s` in latest.json). `CPU s`: the whole process tree (Python, JVMs, daemon, code servers, run "
        "workers). `x floor` = wall / floor wall; `overhead/obj s` = (wall - floor wall) / N. `bg cores`: CPU "
        "used by other processes on the machine during the measurement (a shared box); above 0.25 the row is "
        "marked CONTENDED and its times are inflated.",
        "",
        markdown_table(records),
        "",
    ]
    if notes:
        lines += ["## Findings", ""] + [f"- {n}" for n in notes] + [""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path


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
            if run.get("created") and run["created"] < run["start"]:
                # Queued: created by the backfill, waiting for the run queue.
                ax.hlines(
                    middle,
                    run["created"] - t0,
                    run["start"] - t0,
                    colors="0.5",
                    linestyles=":",
                    linewidth=0.8,
                    zorder=1,
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
        "seconds since start (floor: process launch; per_process: first launch; Dagster: backfill submit). "
        "Colour = run/process, grey = run/process lifetime, dotted = queued, hatched = failed"
    )
    fig.suptitle(f"Per-object timeline at N = {n}", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
