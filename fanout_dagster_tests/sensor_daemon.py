"""The object sensor run by Dagster's own sensor daemon code, tick by tick.

`tick()` in test_sensors.py calls the sensor function and looks at what it
returns; the daemon does more with that: it skips a run request whose run key
the sensor has used before (whatever became of that run), stores the cursor
only once the tick's runs are reserved, and submits the runs to the instance's
run coordinator. What the sensor decides is only right if it also holds under
that treatment, so these ticks go through `execute_sensor_iteration`, the
daemon's own loop body, with the product's definitions (definitions.py) loaded
as a code location in this process and pointed at a test project through its
environment (FANOUT_CONFIGS_DIR, FANOUT_DATA_ROOT).

The clock is Dagster's frozen clock, moved past the sensor's minimum interval
before each tick, so no test waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, Definitions, RunsFilter
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.external import RemoteSensor
from dagster._core.scheduler.instigation import SensorInstigatorData
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from fanout_dagster.definitions import build_definitions
from fanout_dagster.settings import Settings
from fanout_dagster_tests.helpers import Project

SENSOR = "object_configs_sensor"
# The sensor's minimum interval is 15 s: each tick moves the frozen clock past it.
_STEP = timedelta(seconds=30)


def daemon_definitions() -> Definitions:
    """The product's definitions, as a code location loads them: from the environment."""
    return build_definitions(Settings())


class SensorDaemon:
    """Ticks of the object sensor through the daemon's code, on a real instance."""

    def __init__(self, instance: DagsterInstance, workspace: WorkspaceProcessContext):
        self.instance = instance
        self._workspace = workspace
        self._now = datetime(2030, 1, 1, tzinfo=UTC)
        self._logger = logging.getLogger("fanout_dagster_tests.sensor_daemon")

    def tick(self) -> list[DagsterRun]:
        """One sensor tick, as the daemon runs it; the runs it created."""
        before = {run.run_id for run in self.sensor_runs()}
        self._now += _STEP
        with freeze_time(self._now):
            list(execute_sensor_iteration(self._workspace, self._logger, None, None))
        ticks = self.instance.get_ticks(self._origin_id(), self._selector_id(), limit=1)
        assert ticks, "the daemon evaluated no tick"
        assert ticks[0].error is None, ticks[0].error
        return [run for run in self.sensor_runs() if run.run_id not in before]

    def reset_cursor(self) -> None:
        """Clear the sensor's cursor, as `dagster sensor cursor --delete` (or the UI) does."""
        state = self.instance.get_instigator_state(self._origin_id(), self._selector_id())
        assert state is not None and isinstance(state.instigator_data, SensorInstigatorData)
        self.instance.update_instigator_state(
            state.with_data(state.instigator_data._replace(cursor=None))
        )

    def cursor(self) -> str | None:
        state = self.instance.get_instigator_state(self._origin_id(), self._selector_id())
        assert state is not None and isinstance(state.instigator_data, SensorInstigatorData)
        return state.instigator_data.cursor

    def sensor_runs(self) -> list[DagsterRun]:
        """Every run this sensor created, oldest first."""
        runs = self.instance.get_runs(RunsFilter(tags={SENSOR_NAME_TAG: SENSOR}))
        return list(reversed(runs))

    def run_keys(self, partition: str) -> list[str]:
        """The run keys of this sensor's runs of one partition, oldest first."""
        return [
            run.tags[RUN_KEY_TAG]
            for run in self.sensor_runs()
            if run.tags.get("dagster/partition") == partition
        ]

    def _sensor(self) -> RemoteSensor:
        context = self._workspace.create_request_context()
        [entry] = context.get_code_location_entries().values()
        assert entry.code_location is not None, entry.load_error
        [repository] = entry.code_location.get_repositories().values()
        return repository.get_sensor(SENSOR)

    def _origin_id(self) -> str:
        return self._sensor().get_remote_origin_id()

    def _selector_id(self) -> str:
        return self._sensor().selector_id


@contextmanager
def sensor_daemon(
    instance: DagsterInstance, project: Project, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SensorDaemon]:
    """The daemon's sensor loop over the product's definitions, pointed at `project`
    (a run per object)."""
    monkeypatch.setenv("FANOUT_CONFIGS_DIR", str(project.configs))
    monkeypatch.setenv("FANOUT_DATA_ROOT", str(project.data))
    monkeypatch.setenv("FANOUT_OBJECTS_PER_RUN", "1")
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute=daemon_definitions.__name__),
        location_name="fanout_dagster",
    )
    with create_test_daemon_workspace_context(
        InProcessWorkspaceLoadTarget(origin), instance
    ) as workspace:
        yield SensorDaemon(instance, workspace)
