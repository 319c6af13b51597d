"""A run worker forked from a warm process: `dagster api execute_run` without
the interpreter start.

A run worker that starts as a new Python process spends its first seconds
importing Dagster, pyspark's Connect client, pandas and pyarrow (about 2 s of
CPU on 2 cores), for a load that takes a second on a warm Spark. The warm run
launcher (run_launcher.py) forks workers instead from a process that has
imported those already (a multiprocessing forkserver), and each worker
imports only this project's code, so that code is as fresh as with a new
process.

Before it runs its run, a worker records who it is (worker_identity.py) and
keeps that record beating, so the run launcher's health check knows it by what
its own process read about itself, not by when it was forked.

No import of this project's other modules at the top: the forkserver imports
this module, and whatever it imports would be the code of the day it started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from dagster._utils.interrupts import capture_interrupts

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


def execute_run(
    input_json: str, environ: Mapping[str, str], cwd: str, beat_interval_s: float
) -> None:
    """Run one Dagster run as `dagster api execute_run INPUT_JSON` would.

    The worker takes the launching process's environment and working
    directory of the moment (the forkserver's are those of its own start).
    """
    # An interrupt (the run terminated) from here on cancels the run once it
    # executes, as Dagster's own command does from its start.
    with capture_interrupts():
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        from dagster import DagsterRunStatus
        from dagster._cli.api import _execute_run_command_body
        from dagster._cli.utils import get_instance_for_cli
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import deserialize_value

        from fanout_dagster.single_host.worker_identity import (
            Heartbeat,
            delete_record,
            record_of,
            write_record,
        )

        args = deserialize_value(input_json, ExecuteRunArgs)
        # The command's own steps (dagster/_cli/api.py, execute_run_command), with
        # one instance for the run and the worker's record.
        with get_instance_for_cli(instance_ref=args.instance_ref) as instance:
            record = record_of(os.getpid(), beat_interval_s)
            assert record is not None  # this very process
            write_record(instance, args.run_id, record)
            heartbeat = Heartbeat(instance, args.run_id, record)
            heartbeat.start()
            try:
                # Recorded before it looks: a terminate that found no record yet
                # marked the run canceling first, and is answered here.
                run = instance.get_run_by_id(args.run_id)
                if run is not None and run.status == DagsterRunStatus.CANCELING:
                    instance.report_run_canceled(run, "The run was terminated before it started.")
                    return
                # The run executed, the worker's pid reported as its first event.
                return_code = _execute_run_command_body(
                    args.run_id,
                    instance,
                    lambda _event: None,  # the command buffers events it never reads
                    set_exit_code_on_failure=args.set_exit_code_on_failure or False,
                )
            finally:
                heartbeat.stop()
                delete_record(instance, args.run_id)
        if return_code != 0:
            sys.exit(return_code)
