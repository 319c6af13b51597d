"""Jobs the warm run launcher's tests launch: importable by module name, as a
run worker loads its job from the run's code origin."""

import json
import os
import time
from pathlib import Path

from dagster import Config, OpExecutionContext, in_process_executor, job, op


class ReportConfig(Config):
    out: str = "/dev/null"
    sleep_s: float = 0.0


@op
def report_worker(context: OpExecutionContext, config: ReportConfig) -> None:
    """Writes what the worker sees (pid, parent, environment, cwd), then waits."""
    Path(config.out).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "marker": os.environ.get("WARM_TEST_MARKER"),
                "cwd": os.getcwd(),
            }
        )
    )
    deadline = time.monotonic() + config.sleep_s
    while time.monotonic() < deadline:
        time.sleep(0.05)


# In process, as the bronze job: the op runs in the run worker itself.
@job(executor_def=in_process_executor)
def warm_job() -> None:
    report_worker()
