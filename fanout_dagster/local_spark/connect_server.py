"""The local Spark Connect server: the warm "all-purpose cluster" that local runs attach to.

A run that starts its own Spark spends seconds starting a JVM and warming it up
for a second of work. Databricks' all-purpose clusters and serverless compute
are warm, and increasingly speak Spark Connect only; so does this server. It is
started once (by `make dev`, or `python -m fanout_dagster.local_spark.connect_server`),
has Delta Lake and the local catalog configured exactly like the embedded
session (local_spark/catalog.py), and every run opens its own Connect session on it.

    python -m fanout_dagster.local_spark.connect_server            # foreground; Ctrl-C stops it
    python -m fanout_dagster.local_spark.connect_server -- CMD ...  # run CMD while the server is up
    python -m fanout_dagster.local_spark.connect_server --shell     # a PySpark shell on it

The server's Spark UI is on http://127.0.0.1:4040 (FANOUT_SPARK_UI_PORT), its log
in `.spark/connect-server.log`. Its scheduler is FAIR with a FAIR default pool, so
the jobs of concurrent runs share the cores instead of queueing behind each other.

It listens on loopback only, and yet any local user reaches loopback: whoever can
open a session can run a Python UDF as the server's user. So every client must
present the server's token (Spark Connect's pre-shared bearer token), and the
server's environment holds no credentials of the project. The token is
FANOUT_SPARK_CONNECT_TOKEN if set (a deployment's root-only file), else a new one
per start; it is handed to the command through the environment, and kept for the
same user's other clients in a file only that user can read (`token_file`). It
never appears on a command line (readable by all local users) or in a log.

Nothing of it outlives its wrapper: see dev_supervisor.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pyspark

from fanout_dagster.core.connect_sessions import quick_retries, session_url
from fanout_dagster.local_spark.catalog import spark_conf
from fanout_dagster.local_spark.dev_supervisor import (
    Stopped,
    StopSignals,
    run_beside,
    say,
    serve,
    stop_server,
)
from fanout_dagster.local_spark.die_with_parent import tied
from fanout_dagster.local_spark.retention import BOUNDED_RETENTION
from fanout_dagster.settings import PROJECT_ROOT, Settings, project_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
STATE_DIR = PROJECT_ROOT / ".spark"
# The clients' variable (settings.py), and the one Spark's server reads its token from.
TOKEN_VARIABLE = Settings.env_name("spark_connect_token")
SPARK_TOKEN_VARIABLE = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
# What may sit in an sc:// URL parameter (`;` and `=` separate them).
TOKEN_FORM = re.compile(r"^[A-Za-z0-9_.~-]{32,}$")
# Credentials of the project that the server must not hold: a session could read them.
CREDENTIALS = re.compile(r"^(DATABRICKS_|DAGSTER_PG_)|^(FANOUT_SPARK_CONNECT_TOKEN)$")

FAIR_SCHEDULER_XML = """<?xml version="1.0"?>
<!-- Jobs of concurrent runs share the cores (FAIR inside the default pool too). -->
<allocations>
  <pool name="default">
    <schedulingMode>FAIR</schedulingMode>
    <weight>1</weight>
    <minShare>0</minShare>
  </pool>
</allocations>
"""


class SparkServerError(RuntimeError):
    """The local Spark Connect server cannot be started or reached (one clear line)."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def checked_token(token: str) -> str:
    """The token, if it can be one (the message never shows it)."""
    if not TOKEN_FORM.match(token):
        raise SparkServerError(
            f"{TOKEN_VARIABLE} is not a usable token: it needs at least 32 characters of "
            "A-Z a-z 0-9 _ - . ~ (e.g. `openssl rand -hex 32`)"
        )
    return token


def token_file(port: int) -> Path:
    """Where the server on `port` keeps its token for clients of the same user."""
    return Path.home() / ".cache" / "fanout_dagster" / f"spark-connect-{port}.token"


def write_token_file(port: int, token: str) -> Path:
    path = token_file(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # (made before, by hand, with other rights)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    # Created readable by this user only, then moved in place whole.
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(token)
    staged.replace(path)
    return path


def remove_token_file(port: int, token: str) -> None:
    """Remove the token file, unless another server on the port has written its own."""
    path = token_file(port)
    with contextlib.suppress(OSError):
        if path.read_text() == token:
            path.unlink()


def client_token(port: int, settings: Settings | None = None) -> str | None:
    """The token a client presents to the server on `port`: FANOUT_SPARK_CONNECT_TOKEN,
    else the one the server keeps for this user, else None."""
    configured = (settings or Settings()).spark_connect_token
    if configured is not None:
        return checked_token(configured.get_secret_value())
    try:
        return checked_token(token_file(port).read_text().strip())
    except FileNotFoundError:
        return None


def connect_url(host: str, port: int, token: str | None) -> str:
    """The sc:// URL of a client: a secret when it holds the token, never to be
    printed (connect_sessions.session_url says how the token travels)."""
    return session_url(f"sc://{host}:{port}", None, token=token)


def authenticated_session(host: str, port: int, session_id: str | None = None) -> SparkSession:
    """A Connect session on the server at host:port, presenting the token a client of
    this user has (client_token); one clear line when the server refuses it.

    Without a token the server is asked anyway: a Spark Connect server of another
    host (FANOUT_SPARK_CONNECT_HOST) may take clients without one. `session_id`:
    that session (a run's, connect_sessions.run_session_id), else a new one.
    """
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException
    from pyspark.sql import SparkSession

    token = client_token(port)
    session = SparkSession.builder.remote(
        session_url(f"sc://{host}:{port}", session_id, token=token)
    ).create()
    # A server that is gone fails the run in seconds, saying why.
    session.client.set_retry_policies([quick_retries()])
    try:
        session.version  # noqa: B018 - the first call: does the server take this client?
    except SparkConnectGrpcException as exc:
        session.stop()
        if exc.getGrpcStatusCode() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        raise refused(f"sc://{host}:{port}", port, presented=token is not None) from None
    return session


def refused(address: str, port: int, *, presented: bool) -> SparkServerError:
    if not presented:
        return SparkServerError(
            f"no token for the local Spark Connect server at {address}: set "
            f"{TOKEN_VARIABLE} to its token, or run as the user who started it (the server "
            f"keeps it for that user in {token_file(port)})"
        )
    return SparkServerError(
        f"the local Spark Connect server at {address} refused this client's token "
        f"({TOKEN_VARIABLE}, or {token_file(port)}): it is another server's, or "
        "from an earlier start; use the token of the server running now"
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 15002
    ui_port: int = 4040
    master: str = "local[2]"
    warehouse: str = "warehouse"
    driver_memory: str = "2g"
    state_dir: Path = STATE_DIR
    token: str = field(default_factory=new_token, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerConfig:
        configured = settings.spark_connect_token
        return cls(
            port=settings.spark_connect_port,
            ui_port=settings.spark_ui_port,
            master=settings.spark_master,
            warehouse=project_path(settings.spark_warehouse),
            driver_memory=settings.spark_driver_memory,
            state_dir=Path(project_path(settings.spark_state_dir)),
            token=new_token()
            if configured is None
            else checked_token(configured.get_secret_value()),
        )

    @property
    def address(self) -> str:
        """Where the server listens, to show (no token)."""
        return f"sc://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """A client's URL, with the token: pass it to a client, never print it."""
        return connect_url(self.host, self.port, self.token)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "connect-server.log"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def server_command(config: ServerConfig) -> list[str]:
    spark_home = Path(pyspark.__file__).parent
    conf = {
        **spark_conf(config.warehouse),
        "spark.connect.grpc.binding.address": config.host,
        "spark.connect.grpc.binding.port": str(config.port),
        "spark.ui.enabled": "true",
        "spark.ui.port": str(config.ui_port),
        "spark.scheduler.allocation.file": str(config.state_dir / "fairscheduler.xml"),
        # Sessions of runs whose process died without releasing them.
        "spark.connect.session.manager.defaultSessionTimeout": "15min",
        "spark.log.level": "WARN",
        **BOUNDED_RETENTION,  # a server that runs for days stays bounded
    }
    if config.master.startswith("local"):
        # The driver's own RPC and block manager ports (loopback too) answer only
        # with a secret Spark makes for itself in local mode.
        conf["spark.authenticate"] = "true"
    packages = conf.pop("spark.jars.packages")
    command = [
        str(spark_home / "bin" / "spark-submit"),
        "--class",
        SERVER_CLASS,
        "--name",
        "fanout_dagster-spark-connect",
        "--master",
        config.master,
        "--driver-memory",
        config.driver_memory,
        # Delta's jars, resolved by Spark from Maven Central (cached in ~/.ivy2 afterwards).
        "--packages",
        packages,
    ]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, "spark-internal"]


def server_environment(config: ServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The JVM's environment: this one without the project's credentials, with its
    token where Spark reads it (a --conf would show on the command line)."""
    return {
        **{name: value for name, value in environ.items() if not CREDENTIALS.match(name)},
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": config.host,
        # Spark scratch space beside the log, not in /tmp.
        "SPARK_LOCAL_DIRS": str(config.state_dir / "local"),
        SPARK_TOKEN_VARIABLE: config.token,
    }


@contextlib.contextmanager
def running_server(
    config: ServerConfig, *, timeout: float = 180
) -> Iterator[subprocess.Popen[bytes]]:
    """Start the server, wait until it answers, yield its process, stop it on exit.

    The server dies with the thread that started it, even one killed outright:
    enter and leave this in a thread that lives as long as the server is needed.
    """
    if port_in_use(config.host, config.port):
        raise SparkServerError(
            f"port {config.port} on {config.host} is already taken: another Spark Connect server "
            "(or another program) is listening there. Stop it, or set FANOUT_SPARK_CONNECT_PORT."
        )
    if port_in_use(config.host, config.ui_port):
        raise SparkServerError(
            f"the Spark UI port {config.ui_port} is already taken: set FANOUT_SPARK_UI_PORT."
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "fairscheduler.xml").write_text(FAIR_SCHEDULER_XML)
    write_token_file(config.port, config.token)
    process = None
    try:
        with open(config.log_path, "ab") as log:
            process = subprocess.Popen(
                # SIGKILL if this process dies without stopping it: nothing to save.
                tied(server_command(config), signal.SIGKILL),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(config, os.environ),
                # Its own session: a Ctrl-C in the terminal reaches the runs first,
                # and the server is stopped after them, as a whole group.
                start_new_session=True,
            )
        wait_until_ready(config, process, timeout)
        register_warehouse_tables(config)
        yield process
    finally:
        if process is not None:
            stop(process)
        remove_token_file(config.port, config.token)


def wait_until_ready(
    config: ServerConfig, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SparkServerError(
                f"the Spark Connect server exited with code {process.returncode} while starting; "
                f"see {config.log_path}"
            )
        if port_in_use(config.host, config.port):
            return
        time.sleep(0.25)
    raise SparkServerError(
        f"the Spark Connect server did not answer on port {config.port} within {timeout:.0f} s; "
        f"see {config.log_path}"
    )


def register_warehouse_tables(config: ServerConfig) -> list[str]:
    """Make the warehouse's existing tables known to the server's catalog."""
    from pyspark.sql import SparkSession

    from fanout_dagster.local_spark.catalog import register_tables

    session = SparkSession.builder.remote(config.url).create()
    try:
        return register_tables(session)
    finally:
        session.stop()


def stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    stop_server(process, grace)


SHELL = """\
from fanout_dagster.local_spark.connect_server import SparkServerError, authenticated_session

try:
    spark = authenticated_session({host!r}, {port})
except SparkServerError as exc:
    raise SystemExit(f"error: {{exc}}") from None
print("spark: a session on the Spark Connect server at {address}, e.g.")
print('  spark.table("bronze.erp_customers").show()')
"""


def open_shell(config: ServerConfig) -> int:
    """An interactive Python with `spark`, a session on the running server: the
    product's own client, which finds the server's token as every run does."""
    if not port_in_use(config.host, config.port):
        raise SparkServerError(
            f"no Spark Connect server at {config.address}: start it with `make dev` or "
            "`make spark-server`"
        )
    code = SHELL.format(port=config.port, host=config.host, address=config.address)
    os.execv(sys.executable, [sys.executable, "-i", "-c", code])
    return 0  # not reached: exec replaced this process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout_dagster.local_spark.connect_server",
        description="Run the local Spark Connect server (Delta, the local catalog); with a "
        "command after --, run it while the server is up and stop both when it ends or on Ctrl-C.",
    )
    parser.add_argument("--shell", action="store_true", help="open a PySpark shell on the server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command else []
    try:
        config = ServerConfig.from_settings(Settings())
        if args.shell:
            return open_shell(config)
        return run(config, command)
    except SparkServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(config: ServerConfig, command: list[str]) -> int:
    """The server, and `command` beside it; stopped on SIGINT, SIGTERM, SIGHUP."""
    with StopSignals() as signals:
        say(f"Starting the Spark Connect server on {config.address} (log: {config.log_path}) ...")
        started = time.monotonic()
        try:
            with running_server(config) as server:
                signals.running()
                say(
                    f"Spark Connect server ready in {time.monotonic() - started:.1f} s: "
                    f"{config.address}; Spark UI http://{config.host}:{config.ui_port}"
                )
                if not command:
                    return serve(server, signals, config.log_path)
                # The command's clients get the token from the environment.
                env = {**os.environ, TOKEN_VARIABLE: config.token}
                return run_beside(command, server, signals, env, config.log_path)
        except Stopped as stopped:
            return 128 + stopped.signum


if __name__ == "__main__":
    sys.exit(main())
