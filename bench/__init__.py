"""The orchestration-overhead benchmark: many small objects through bare Spark
(cold, and on a warm Spark Connect server), a process per object, and the
product (a Dagster run per object, or packed runs); what `make dev` gives; the
server's memory over many runs.

Run `python -m bench --help`; see README.md beside this file. Modules:
- cli.py           orchestrator: arguments, which sections run, the outputs at the end
- runner.py        one measurement (a fresh worker, its record), the warm server's lifetime
- sections.py      the sections: main (modes x N), dev_loop, server_memory, scale, databricks
- targets.py       ratios to the floors, targets, findings
- machine.py       machine, versions and commit of a run
- worker.py        one measurement in a fresh process
- proc.py          process-tree wall/CPU/peak-RSS accounting (subreaper), background load
- warm.py          the warm Spark Connect server (its CPU, RSS, heap after GC)
- data.py          synthetic objects and configs
- spark_modes.py   floor, warm_floor and per_process
- dagster_modes.py per_run and packed (real daemon, UI-style backfill), run phases
- dev_loop.py      `make dev`: first minutes, launch -> materialized
- server_memory.py the Spark Connect server's memory over many runs
- scale.py         10k configs: definitions load, sensor first tick
- databricks.py    per_run vs packed against the Databricks workspace emulator
- report.py        tables, targets, latest.json, summary.md, timeline.png
"""
