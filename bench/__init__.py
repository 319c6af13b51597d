"""The orchestration-overhead benchmark: many small objects through bare Spark,
a process per object, and the product (a Dagster run per object, or packed runs).

Run `python -m bench --help`. Modules:
- cli.py          orchestrator: sections, records, targets
- worker.py       one measurement in a fresh process
- proc.py         process-tree wall/CPU accounting (subreaper), background load
- data.py         synthetic objects and configs
- spark_modes.py  floor and per_process
- dagster_modes.py per_run and packed (real daemon, UI-style backfill)
- scale.py        10k configs: definitions load, sensor first tick
- databricks.py   per_run vs packed against the Databricks workspace emulator
- report.py       table, latest.json, summary.md, timeline.png
"""
