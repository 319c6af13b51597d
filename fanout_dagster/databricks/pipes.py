"""The `pipes` launch mode: a bronze step's objects load in a Databricks job run
driven through Dagster Pipes, staged on a Unity Catalog volume (no DBFS).

Per step (one object or a pack), `PipesObjectLoader.load`:

1. checks the volume (`FANOUT_DATABRICKS_VOLUME`) by creating the step's
   staging folder `<volume>/staging/<run id>/<step>-<attempt>/` there, and
   uploads the code bundle (`bundle.zip`: this package and the configs) and
   the entry script (fanout_dagster/databricks/remote/pipes_entry.py);
2. opens a Pipes session whose context and messages go through temporary
   folders on the same volume (dagster-databricks' Unity Catalog volume
   injector and reader, which remove them at the end);
3. submits one `spark_python_task` with `runs/submit` on the run's compute
   from clusters.yaml (an existing cluster, a job cluster, or serverless with
   an environment), an idempotency token from run, step and attempt, the
   deployment's `timeout_seconds`, and a run name carrying the Dagster run id
   and objects;
4. polls the run and yields each object's report as the remote side sends it
   (a Pipes custom message per object), so materializations and failures
   show while the Databricks run is still going;
5. at the end copies the remote stdout/stderr (forwarded through Pipes) and
   the run's error and traceback (`runs/get-output`) into the step's log, and
   reports every object the run never reported as failed with the run's
   state; cancels the Databricks run if the Dagster run is terminated; and
   removes the staging folder, whatever happened.

Every API call (jobs, Files API, the Pipes context and messages) goes through
one client that rides out throttling and unavailability (databricks_api.py).

The token stays in this process: nothing staged or submitted carries it.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from dagster import AssetExecutionContext, PreviewWarning
from dagster._core.errors import raise_execution_interrupts
from dagster._core.pipes.client import PipesContextInjector, PipesMessageReader
from dagster._core.pipes.context import PipesMessageHandler, PipesSession
from dagster_databricks.pipes import (
    PipesUnityCatalogVolumesContextInjector,
    PipesUnityCatalogVolumesMessageReader,
    delete_volume_directory_recursive,
)
from dagster_pipes import PipesContextData, PipesExtras, PipesMessage, PipesParams
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    DatabricksError,
    NotFound,
    PermissionDenied,
    ResourceConflict,
)
from databricks.sdk.service import files, jobs

from fanout_dagster.core.loading import ObjectReport
from fanout_dagster.databricks.api import ThrottlePolicy, ride_out_throttling
from fanout_dagster.databricks.clusters import (
    ClusterConfigError,
    ClusterDefinition,
    api_new_cluster,
    cluster_for_run,
    load_cluster_definitions,
)
from fanout_dagster.databricks.remote import pipes_entry
from fanout_dagster.databricks.submission import (
    databricks_run_name,
    idempotency_token,
    write_code_bundle,
)
from fanout_dagster.orchestration.resources.object_configs import ObjectConfigs
from fanout_dagster.orchestration.resources.object_loader import ObjectLoader
from fanout_dagster.settings import Settings

TASK_KEY = "bronze"
ENVIRONMENT_KEY = "fanout"
DEFAULT_ENVIRONMENT_VERSION = "4"
BUNDLE_NAME = "bundle.zip"
ENTRY_NAME = "pipes_entry.py"
LOG_TAIL_CHARS = 64 * 1024  # of each remote stream, copied into the step's log
CANCEL_WAIT_S = 120.0
TERMINAL = {
    jobs.RunLifeCycleState.TERMINATED,
    jobs.RunLifeCycleState.SKIPPED,
    jobs.RunLifeCycleState.INTERNAL_ERROR,
}


class DatabricksLaunchError(RuntimeError):
    """A run cannot start on Databricks as the deployment is set up (names the setting)."""


class PipesObjectLoader(ObjectLoader):
    """Loads a run's objects in a Databricks job run through Dagster Pipes."""

    configs_dir: str  # bundled with the package
    data_root: str
    bronze_schema: str
    volume: str  # /Volumes/<catalog>/<schema>/<volume>[/...]
    clusters_file: str
    cluster_libraries: str = ""
    poll_s: float = 5.0
    timeout_s: int = 3600
    # How long one API call may be refused (429/503) before the step fails.
    api_retry_budget_s: float = ThrottlePolicy.budget_s

    @classmethod
    def from_settings(cls, settings: Settings, object_configs: ObjectConfigs) -> PipesObjectLoader:
        return cls(
            configs_dir=object_configs.configs_path,
            data_root=object_configs.data_root_path,
            bronze_schema=settings.bronze_schema,
            volume=settings.databricks_volume,
            clusters_file=settings.clusters_path,
            cluster_libraries=settings.cluster_libraries,
            poll_s=settings.databricks_poll_s,
            timeout_s=settings.databricks_timeout_s,
        )

    def load(
        self, context: AssetExecutionContext, keys: Sequence[str], threads: int
    ) -> Iterator[ObjectReport]:
        cluster = cluster_for_run(load_cluster_definitions(self.clusters_file), context.run.tags)
        workspace = workspace_client(ThrottlePolicy(budget_s=self.api_retry_budget_s))
        step_key = context.get_step_execution_context().step.key
        attempt = context.retry_number
        run_folder = f"{self.volume}/staging/{context.run.run_id}"
        staging = f"{run_folder}/{step_key}-{attempt}"
        prepare_staging(workspace.files, self.volume, staging)
        try:
            upload_code(workspace.files, staging, self.configs_dir)
            submission = Submission(
                token=idempotency_token(context.run.run_id, step_key, attempt),
                run_name=databricks_run_name(context.run.run_id, keys, cluster.name),
                timeout_s=self.timeout_s,
                staging=staging,
                cluster=cluster,
                libraries=[f"dagster-pipes=={version('dagster-pipes')}"]
                + self.cluster_libraries.split(),
                clusters_file=self.clusters_file,
            )
            extras: PipesExtras = {
                "keys": list(keys),
                "data_root": self.data_root,
                "bronze_schema": self.bronze_schema,
                "threads": threads,
            }
            yield from self._run(context, workspace, submission, keys, extras)
        finally:
            remove_staging(workspace.files, staging, run_folder, context)

    def _run(
        self,
        context: AssetExecutionContext,
        workspace: WorkspaceClient,
        submission: Submission,
        keys: Sequence[str],
        extras: PipesExtras,
    ) -> Iterator[ObjectReport]:
        injector = PipesUnityCatalogVolumesContextInjector(
            client=workspace, volume_path=self.volume
        )
        reader = VolumeMessageReader(
            client=workspace, volume_path=self.volume, interval=self.poll_s
        )
        reported: set[str] = set()
        links: dict[str, str] = {}
        seen = 0
        run: jobs.Run | None = None

        def arrived(session: PipesSession) -> Iterator[ObjectReport]:
            nonlocal seen
            messages = session.get_custom_messages()[seen:]
            seen += len(messages)
            for message in messages:
                if isinstance(message, Mapping) and isinstance(
                    message.get(pipes_entry.REPORT), Mapping
                ):
                    report = ObjectReport.from_json(message[pipes_entry.REPORT])
                    if report.key in keys and report.key not in reported:
                        reported.add(report.key)
                        yield dataclasses.replace(report, links=dict(links))

        with pipes_session(context, injector, reader, extras) as (session, handler):
            databricks_run_id = submission.submit(workspace, session)
            run = workspace.jobs.get_run(databricks_run_id)
            links.update(databricks_run_id=str(databricks_run_id))
            if run.run_page_url:
                links["databricks_run_url"] = run.run_page_url
            context.log.info(
                f"Databricks run {databricks_run_id} ({submission.cluster.kind} compute "
                f"'{submission.cluster.name}'): {run.run_page_url or '(no run page)'}"
            )
            started = time.monotonic()
            try:
                # Terminating the Dagster run interrupts this wait (and cancels below).
                with raise_execution_interrupts():
                    while True:
                        run = workspace.jobs.get_run(databricks_run_id)
                        yield from arrived(session)
                        if run.state is not None and run.state.life_cycle_state in TERMINAL:
                            break
                        if time.monotonic() - started > self.timeout_s + 600:
                            raise DatabricksLaunchError(
                                f"Databricks run {databricks_run_id} still not finished "
                                f"{self.timeout_s + 600}s after its submit "
                                "(FANOUT_DATABRICKS_TIMEOUT_S)"
                            )
                        time.sleep(self.poll_s)
            except BaseException:
                context.log.info(f"Canceling Databricks run {databricks_run_id}.")
                cancel_and_wait(workspace, databricks_run_id, self.poll_s)
                raise
        # The session is closed: the reader has read the last messages the run wrote.
        yield from arrived(session)
        assert run is not None
        log_remote_output(context, workspace, run, handler)
        state = run.state
        ending = (
            f"{getattr(state.life_cycle_state, 'value', '?')}/"
            f"{getattr(state.result_state, 'value', '-')}: {state.state_message or ''}"
            if state is not None
            else "unknown state"
        )
        for key in keys:
            if key not in reported:
                yield ObjectReport(
                    key=key,
                    ok=False,
                    error=f"the Databricks run {run.run_id} ended ({ending.strip()}) "
                    "before reporting this object",
                    links=dict(links),
                )


@dataclasses.dataclass(frozen=True)
class Submission:
    """Everything `runs/submit` is given for one step."""

    token: str
    run_name: str
    timeout_s: int
    staging: str
    cluster: ClusterDefinition
    libraries: list[str]
    clusters_file: str

    def request(self, pipes_arguments: Mapping[str, str]) -> dict[str, Any]:
        """The keyword arguments of `jobs.submit`, given the Pipes bootstrap CLI arguments.

        The Pipes parameters go on the command line on every kind of compute
        (an existing cluster cannot take environment variables per run).
        """
        parameters = [pipes_entry.BUNDLE_ARG, f"{self.staging}/{BUNDLE_NAME}"]
        for name, value in pipes_arguments.items():
            parameters += [name, value]
        task: dict[str, Any] = {
            "task_key": TASK_KEY,
            "spark_python_task": {
                "python_file": f"{self.staging}/{ENTRY_NAME}",
                "parameters": parameters,
            },
        }
        environments = None
        if self.cluster.kind == "serverless":
            spec = dict(self.cluster.serverless)
            if not spec.get("environment_version") and not spec.get("client"):
                spec["environment_version"] = DEFAULT_ENVIRONMENT_VERSION
            spec["dependencies"] = [*spec.get("dependencies", []), *self.libraries]
            task["environment_key"] = ENVIRONMENT_KEY
            environments = [
                jobs.JobEnvironment.from_dict({"environment_key": ENVIRONMENT_KEY, "spec": spec})
            ]
        else:
            if self.cluster.kind == "existing":
                task["existing_cluster_id"] = self.cluster.existing_cluster_id
            else:
                task["new_cluster"] = api_new_cluster(self.cluster.new_cluster)
            task["libraries"] = [{"pypi": {"package": spec}} for spec in self.libraries]
        return {
            "run_name": self.run_name,
            "tasks": [jobs.SubmitTask.from_dict(task)],
            "environments": environments,
            "idempotency_token": self.token,
            "timeout_seconds": self.timeout_s,
        }

    def submit(self, workspace: WorkspaceClient, session: PipesSession) -> int:
        try:
            waiter = workspace.jobs.submit(**self.request(session.get_bootstrap_cli_arguments()))
        except DatabricksError as exc:
            if self.cluster.kind == "serverless" and exc.error_code == "FEATURE_DISABLED":
                raise DatabricksLaunchError(
                    f"clusters.{self.cluster.name}.serverless in {self.clusters_file} "
                    "(FANOUT_CLUSTERS_FILE): this workspace has no serverless compute for jobs "
                    f"({exc}); give the cluster an existing_cluster_id or a new_cluster"
                ) from exc
            raise
        return int(waiter.bind()["run_id"])


def workspace_client(throttle: ThrottlePolicy | None = None) -> WorkspaceClient:
    """A client from databricks-sdk's default sources (env vars or a config profile), whose
    every call rides out throttling and unavailability."""
    from databricks.sdk.core import Config

    config = Config()
    if not config.host:
        raise ClusterConfigError(
            "no Databricks workspace configured: set DATABRICKS_HOST and DATABRICKS_TOKEN, or "
            "DATABRICKS_CONFIG_PROFILE naming a ~/.databrickscfg profile"
        )
    return ride_out_throttling(WorkspaceClient(config=config), throttle)


def prepare_staging(api: files.FilesAPI, volume: str, staging: str) -> None:
    """Create the step's staging folder; a missing or read-only volume fails here, clearly."""
    setting = f"FANOUT_DATABRICKS_VOLUME={volume}"
    try:
        api.create_directory(staging)
    except NotFound as exc:
        raise DatabricksLaunchError(
            f"{setting}: no such Unity Catalog volume, or this identity cannot see it ({exc})"
        ) from exc
    except PermissionDenied as exc:
        raise DatabricksLaunchError(
            f"{setting}: the volume is not writable by this identity (needs READ VOLUME and "
            f"WRITE VOLUME) ({exc})"
        ) from exc
    except ResourceConflict as exc:
        raise DatabricksLaunchError(
            f"{setting}: not writable as a folder: a file is in the way of {staging} ({exc})"
        ) from exc
    except DatabricksError as exc:
        raise DatabricksLaunchError(
            f"{setting}: cannot create the staging folder {staging} ({exc})"
        ) from exc


def upload_code(api: files.FilesAPI, staging: str, configs_dir: str) -> None:
    """The code bundle (package + configs, zipped) and the entry script, to the staging folder."""
    with tempfile.TemporaryDirectory(prefix="fanout_bundle_") as folder:
        bundle = write_code_bundle(configs_dir, Path(folder) / "bundle")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(bundle).as_posix())
    buffer.seek(0)
    api.upload(f"{staging}/{BUNDLE_NAME}", buffer, overwrite=True)
    entry = Path(pipes_entry.__file__).read_bytes()
    api.upload(f"{staging}/{ENTRY_NAME}", io.BytesIO(entry), overwrite=True)


def remove_staging(
    api: files.FilesAPI, staging: str, run_folder: str, context: AssetExecutionContext
) -> None:
    try:
        delete_volume_directory_recursive(api, staging)
        if not list(api.list_directory_contents(run_folder)):
            api.delete_directory(run_folder)
    except NotFound:
        pass
    except Exception as exc:  # noqa: BLE001 - cleanup must not mask the step's outcome
        context.log.warning(f"could not remove the staging folder {staging}: {exc}")


def cancel_and_wait(workspace: WorkspaceClient, run_id: int, poll_s: float) -> None:
    """Cancel the run and wait until its task stopped (TERMINATING or later)."""
    workspace.jobs.cancel_run(run_id)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline:
        state = workspace.jobs.get_run(run_id).state
        if state is not None and (
            state.life_cycle_state in TERMINAL
            or state.life_cycle_state == jobs.RunLifeCycleState.TERMINATING
        ):
            return
        time.sleep(min(poll_s, 1.0))


# --------------------------------------------------------------------------- Pipes session


class VolumeMessageReader(PipesUnityCatalogVolumesMessageReader):
    """dagster-databricks' reader of the Pipes messages on the volume, with two changes
    so that no object report is lost when the Files API is throttled or slow:

    - each poll reads every message chunk already written, not just one. The
      stock reader reads one chunk per poll and, once the run has ended, reads
      for 10 s more: a backlog (the remote writes a chunk a second while it
      logs) or slow, throttled reads left the last reports unread, and their
      objects were reported failed although they had loaded;
    - only "no such chunk yet" (404) means no chunk. The stock reader took any
      error (an API call that ran out of retries too) for "not written yet".
    """

    def download_messages_chunk(self, index: int, params: PipesParams) -> str | None:
        try:
            response = self.files_client.download(f"{params['path']}/{index}.json")
        except NotFound:
            return None
        assert response.contents is not None, "a message chunk without contents"
        return response.contents.read().decode("utf-8")

    # The signature of PipesBlobStoreMessageReader's own override (an int cursor).
    def download_messages(  # type: ignore[override]
        self, cursor: int | None, params: PipesParams
    ) -> tuple[int, str] | None:
        chunks = []
        while (chunk := self.download_messages_chunk(self.counter, params)) is not None:
            chunks.append(chunk)
            self.counter += 1
        return (self.counter, "\n".join(chunks)) if chunks else None


class ForwardingMessageHandler(PipesMessageHandler):
    """Dagster's handler, keeping the tail of the remote stdout/stderr it forwards.

    The streams still go to this process's stdout/stderr as they arrive (the
    step's captured logs); their tails are copied into the event log at the
    end (serverless has no cluster logs to read them from).
    """

    def __init__(self, context: AssetExecutionContext, message_reader: PipesMessageReader) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PreviewWarning)  # expected_writer_count
            super().__init__(context, message_reader)
        self.tails: dict[str, collections.deque[str]] = {
            "stdout": collections.deque(),
            "stderr": collections.deque(),
        }
        self._sizes = {"stdout": 0, "stderr": 0}

    def handle_message(self, message: PipesMessage) -> None:
        # dagster-pipes closes its stdout/stderr capture after its `closed`
        # message, so their last chunk arrives after it: forward it quietly.
        if self.received_closed_message and message.get("method") == "log_external_stream":
            params = message.get("params") or {}
            self._handle_log_external_stream(params.get("stream", "stdout"), params.get("text", ""))
            return
        super().handle_message(message)

    def _handle_log_external_stream(
        self, stream: Literal["stdout", "stderr"], text: str, extras: PipesExtras | None = None
    ) -> None:
        super()._handle_log_external_stream(stream, text, extras)
        if stream in self.tails:
            tail = self.tails[stream]
            tail.append(text)
            self._sizes[stream] += len(text)
            while len(tail) > 1 and self._sizes[stream] - len(tail[0]) >= LOG_TAIL_CHARS:
                self._sizes[stream] -= len(tail.popleft())

    def tail(self, stream: str) -> str:
        return "".join(self.tails[stream])[-LOG_TAIL_CHARS:]


@contextmanager
def pipes_session(
    context: AssetExecutionContext,
    injector: PipesContextInjector,
    reader: PipesMessageReader,
    extras: PipesExtras,
) -> Iterator[tuple[PipesSession, ForwardingMessageHandler]]:
    """`open_pipes_session`, minus two things that do not fit a per-object asset: the
    typed-event-stream requirement (this asset yields a materialization per
    object, not one output) and the partition provenance lookups (the remote
    side gets its keys in the extras)."""
    data: PipesContextData = {
        "asset_keys": [key.to_escaped_user_string() for key in sorted(context.selected_asset_keys)],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": context.run.run_id,
        "job_name": context.job_name,
        "retry_number": context.retry_number,
        "extras": extras,
    }
    handler = ForwardingMessageHandler(context, reader)
    with (
        injector.inject_context(data) as injector_params,
        handler.handle_messages() as reader_params,
    ):
        yield (
            PipesSession(
                context_data=data,
                message_handler=handler,
                context_injector_params=injector_params,
                message_reader_params=reader_params,
                context=context,
            ),
            handler,
        )
    if not handler.received_opened_message:
        context.log.warning(
            "[pipes] the Databricks run never opened Dagster Pipes: its own error follows, "
            "if it has one"
        )


def log_remote_output(
    context: AssetExecutionContext,
    workspace: WorkspaceClient,
    run: jobs.Run,
    handler: ForwardingMessageHandler,
) -> None:
    """The remote stdout, stderr and error into the step's log."""
    output: jobs.RunOutput | None = None
    task_run_id = run.tasks[0].run_id if run.tasks else None
    if task_run_id is not None:
        try:
            output = workspace.jobs.get_run_output(task_run_id)
        except DatabricksError as exc:
            context.log.warning(f"could not read the output of Databricks run {run.run_id}: {exc}")
    stdout = handler.tail("stdout") or (output.logs if output and output.logs else "")
    stderr = handler.tail("stderr")
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        if text.strip():
            context.log.info(
                f"Databricks run {run.run_id} {name} (last {LOG_TAIL_CHARS // 1024} KB):\n"
                + text[-LOG_TAIL_CHARS:]
            )
    if output is not None and output.error:
        context.log.error(
            f"Databricks run {run.run_id} failed: {output.error}\n{output.error_trace or ''}"
        )
