"""A run worker forked from a warm process: `dagster api execute_run` without
the interpreter start.

A run worker that starts as a new Python process spends its first seconds
importing Dagster, pyspark's Connect client, pandas and pyarrow (about 2 s of
CPU on 2 cores), for a load that takes a second on a warm Spark. The warm run
launcher (run_launcher.py) forks workers instead from a process that has
imported those already (a multiprocessing forkserver), and each worker
imports only this project's code, so that code is as fresh as with a new
process.

No import of this project's other modules here: the forkserver imports this
module, and whatever it imports would be the code of the day it started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Imported by the forkserver once; every worker starts with them in memory.
# Third-party only (see the module docstring).
PRELOAD = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.execution.api",
    "pydantic",
    "pydantic_settings",
    "yaml",
    "pandas",
    "pyarrow",
    "pyspark.sql",
    "pyspark.sql.connect.session",
    "delta",
)


def execute_run(input_json: str, environ: Mapping[str, str], cwd: str) -> None:
    """Run one Dagster run as `dagster api execute_run INPUT_JSON` would.

    The worker takes the launching process's environment and working
    directory of the moment (the forkserver's are those of its own start).
    """
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    from dagster._cli.api import execute_run_command

    # The CLI command's own function: instance from the run's instance ref,
    # interrupts captured, the run executed, its pid reported as its first event.
    callback = execute_run_command.callback
    assert callback is not None
    callback(input_json, None)
