"""A real PostgreSQL for the tests that run against both Dagster storages.

`FANOUT_TEST_POSTGRES_URL` (postgresql://user:password@host:port/db, a user
allowed to create databases) names a server that is already running.
Otherwise the tests start a throwaway cluster of Debian's PostgreSQL server
(/usr/lib/postgresql/<version>/bin, installed with apt-get when missing and
this runs as root) in a temporary folder, on a free loopback port with a
random password, and stop it at the end of the session. Each test gets a
database of its own: a copy of one that Dagster created its tables in once per
session (copying a database takes 0.2 s; creating Dagster's tables, 1.5 s).

Without PostgreSQL the postgres variants skip, except in CI (`CI=true` or
`FANOUT_REQUIRE_POSTGRES=1`, which .ci/run sets), where they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import psycopg2
import pytest
from dagster import instance_for_test

from fanout_dagster_tests.helpers import free_port

URL_VARIABLE = "FANOUT_TEST_POSTGRES_URL"
REQUIRE_VARIABLE = "FANOUT_REQUIRE_POSTGRES"
DEBIAN_SERVERS = Path("/usr/lib/postgresql")
STORAGES = ["sqlite", "postgres"]


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    admin_db: str = "postgres"
    # New databases are copies of this one (None: empty databases).
    template: str | None = None

    def connect(self, db_name: str | None = None):
        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.username,
            password=self.password,
            dbname=db_name or self.admin_db,
            connect_timeout=10,
        )
        connection.autocommit = True
        return connection

    @contextmanager
    def database(self) -> Iterator[PostgresDatabase]:
        """A new database (a copy of the template), dropped afterwards (with whatever
        still uses it)."""
        name = "fanout_test_" + uuid.uuid4().hex[:12]
        template = f' TEMPLATE "{self.template}"' if self.template else ""
        admin = self.connect()
        try:
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"{template}')
            yield PostgresDatabase(self, name)
        finally:
            with suppress(psycopg2.Error), admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()

    @contextmanager
    def with_dagster_template(self) -> Iterator[PostgresServer]:
        """This server, its new databases copies of one holding Dagster's (empty) tables."""
        with self.database() as template:
            # Dagster creates its tables in a new database when an instance opens it.
            with instance_for_test(overrides=storage_overrides(template.storage_config())):
                pass
            yield replace(self, template=template.name)


@dataclass(frozen=True)
class PostgresDatabase:
    server: PostgresServer
    name: str

    def storage_config(self) -> dict:
        """The `storage:` section of a dagster.yaml that keeps everything in this database."""
        return {
            "postgres": {
                "postgres_db": {
                    "hostname": self.server.host,
                    "port": self.server.port,
                    "username": self.server.username,
                    "password": self.server.password,
                    "db_name": self.name,
                    # The driver dagster-postgres installs (SQLAlchemy 2.1 would pick psycopg 3).
                    "scheme": "postgresql+psycopg2",
                }
            }
        }

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its storage from."""
        return {
            "DAGSTER_PG_HOST": self.server.host,
            "DAGSTER_PG_PORT": str(self.server.port),
            "DAGSTER_PG_USER": self.server.username,
            "DAGSTER_PG_PASSWORD": self.server.password,
            "DAGSTER_PG_DB": self.name,
        }


def storage_overrides(dagster_storage: dict | None) -> dict:
    """Instance config overrides for a `dagster_storage` fixture value (None: SQLite)."""
    return {"storage": dagster_storage} if dagster_storage else {}


def postgres_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(REQUIRE_VARIABLE) == "1"


def unavailable(reason: str) -> None:
    """Skip the postgres variants, or fail them where PostgreSQL is required (CI)."""
    if postgres_required():
        pytest.fail(
            f"{reason} (CI / {REQUIRE_VARIABLE}=1: the PostgreSQL tests may not be skipped)"
        )
    pytest.skip(reason)


@contextmanager
def postgres_for_tests() -> Iterator[PostgresServer]:
    """The tests' PostgreSQL server: the one named by the URL, or a throwaway cluster."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        parsed = urlparse(url)
        server = PostgresServer(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            username=unquote(parsed.username or "postgres"),
            password=unquote(parsed.password or ""),
            admin_db=parsed.path.lstrip("/") or "postgres",
        )
        try:
            server.connect().close()
        except psycopg2.Error as exc:
            pytest.fail(f"{URL_VARIABLE} is set, but its server does not answer: {exc}")
        yield server
        return
    bin_dir = debian_server_bin() or install_debian_server()
    if bin_dir is None:
        unavailable(
            "PostgreSQL not installed: apt-get install postgresql (or set "
            f"{URL_VARIABLE}) to run the tests against PostgreSQL storage"
        )
    assert bin_dir is not None
    with throwaway_cluster(bin_dir) as server:
        yield server


def debian_server_bin() -> Path | None:
    """The newest of Debian's PostgreSQL server versions installed, if any."""
    found = [p.parent for p in DEBIAN_SERVERS.glob("*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def install_debian_server() -> Path | None:
    """apt-get install postgresql, as root only (CI installs it beforehand, see .ci/run)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "postgresql"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            unavailable(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return debian_server_bin()


@contextmanager
def throwaway_cluster(bin_dir: Path) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temporary folder; stopped and removed afterwards.

    As root, the server runs as the `postgres` user (PostgreSQL refuses root).
    The server leads its own session (pg_ctl does that), so killing a test's
    process group does not take it down.
    """
    root = Path(tempfile.mkdtemp(prefix="fanout-test-postgres-"))
    data, log = root / "data", root / "server.log"
    password = secrets.token_hex(16)
    (root / "pwfile").write_text(password + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                f"\n{server_log}"
            )

    port = free_port()
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=200 "
        # A throwaway cluster: durability buys nothing here.
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        run(
            str(bin_dir / "initdb"),
            "-D", str(data),
            "-U", "postgres",
            f"--pwfile={root / 'pwfile'}",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            yield PostgresServer("127.0.0.1", port, "postgres", password)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
