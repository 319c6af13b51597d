"""The production example under deploy/: its dagster.yaml opens a real instance on
PostgreSQL from the environment and keeps the repo's run queue; the services
keep secrets out of the repository and the webserver behind the proxy; the
Spark Connect server gets no credentials and a token of its own."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresRunStorage

from fanout_dagster.single_host.run_coordinator import ClusterTaggingRunCoordinator
from fanout_dagster.single_host.run_launcher import WarmRunLauncher
from fanout_dagster_tests.helpers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_FILE = "/etc/fanout-dagster/env"
SPARK_ENV_FILE = "/etc/fanout-dagster/spark.env"
PG_VARIABLES = {f"DAGSTER_PG_{name}" for name in ("HOST", "PORT", "USER", "PASSWORD", "DB")}


def unit_settings(path: Path) -> dict[str, list[str]]:
    """A systemd unit's `Key=value` lines (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start(name: str) -> list[str]:
    [command] = unit_settings(DEPLOY / "systemd" / f"fanout-dagster-{name}.service")["ExecStart"]
    return command.split()


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_production_instance_opens_on_postgres_from_the_environment(
    postgres_server, monkeypatch, tmp_path
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    with postgres_server.database() as database:
        env = database.env()
        assert set(env) == PG_VARIABLES
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # Dagster's own validation of the file (every section and field).
        config, instance_class = dagster_instance_config(str(home))
        assert instance_class is None and "postgres" in config["storage"]
        with DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.run_coordinator, ClusterTaggingRunCoordinator)
            assert isinstance(instance.run_launcher, WarmRunLauncher)
            assert instance.run_monitoring_enabled and instance.run_retries_enabled
            instance.add_dynamic_partitions("objects", ["erp-orders"])
        # What was written is in the database the environment named.
        connection = postgres_server.connect(database.name)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT partition FROM dynamic_partitions")
                assert cursor.fetchall() == [("erp-orders",)]
        finally:
            connection.close()


def test_the_production_instance_keeps_the_repos_run_queue_and_monitoring():
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    development = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert production.pop("storage")["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }
    assert production == development


def test_the_stock_instance_uses_no_class_of_the_project_and_keeps_the_limits(
    postgres_server, monkeypatch, tmp_path
):
    """deploy/dagster.stock.yaml: what Kubernetes, ECS and Dagster+ allow (Dagster's own
    run queue and launcher); its limits, monitoring and retries stay the repo's."""
    stock_text = (DEPLOY / "dagster.stock.yaml").read_text()
    assert "fanout_dagster." not in "\n".join(
        line for line in stock_text.splitlines() if not line.lstrip().startswith("#")
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.stock.yaml", home / "dagster.yaml")
    with postgres_server.database() as database:
        for name, value in database.env().items():
            monkeypatch.setenv(name, value)
        with DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_coordinator) is QueuedRunCoordinator
            assert type(instance.run_launcher) is DefaultRunLauncher
            assert instance.run_monitoring_enabled and instance.run_retries_enabled
            assert instance.event_log_storage.supports_global_concurrency_limits
            queue = instance.get_concurrency_config().run_queue_config
            assert queue is not None
            stock_limits = (queue.max_concurrent_runs, queue.tag_concurrency_limits)

    stock = yaml.safe_load(stock_text)
    development = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    accelerated = development["run_coordinator"]["config"]
    assert stock_limits == (
        accelerated["max_concurrent_runs"],
        accelerated["tag_concurrency_limits"],
    )
    assert (
        stock["run_coordinator"]["config"]["dequeue_interval_seconds"]
        == (accelerated["dequeue_interval_seconds"])
    )
    for section in ("run_monitoring", "run_retries", "telemetry"):
        assert stock[section] == development[section], section


def example_variables(name: str) -> dict[str, str]:
    """The variables an example env file sets or shows (commented out)."""
    return dict(
        line.lstrip("#").split("=", 1)
        for line in (DEPLOY / name).read_text().splitlines()
        if re.match(r"^#?[A-Z_]+=", line)
    )


def test_services_read_secrets_from_outside_the_repository():
    assert {path.stem for path in UNITS} == {
        "fanout-dagster-webserver",
        "fanout-dagster-daemon",
        "fanout-dagster-code-server",
        "fanout-dagster-spark",
    }
    environment_files = {
        "fanout-dagster-webserver": [ENV_FILE],
        # Their runs open sessions on the Spark Connect server: its port and token.
        "fanout-dagster-daemon": [ENV_FILE, f"-{SPARK_ENV_FILE}"],
        "fanout-dagster-code-server": [ENV_FILE, f"-{SPARK_ENV_FILE}"],
        "fanout-dagster-spark": [SPARK_ENV_FILE],
    }
    for path in UNITS:
        settings = unit_settings(path)
        assert settings["EnvironmentFile"] == environment_files[path.stem], path.name
        # No inline environment: whatever a service needs comes from the env files.
        assert "Environment" not in settings, path.name
        assert settings["User"] == ["fanout"], path.name
    # The repository's files hold placeholders only.
    for name, real_file in (("env.example", ENV_FILE), ("spark.env.example", SPARK_ENV_FILE)):
        example = (DEPLOY / name).read_text()
        assert "install -o root -g root -m 0600" in example and real_file in example, name
    variables = example_variables("env.example")
    assert set(variables) >= PG_VARIABLES
    for name in ("DAGSTER_PG_PASSWORD", "DATABRICKS_TOKEN"):
        assert variables[name] == "change-me", name
    # A value, not a placeholder or a command that makes one ($(openssl rand ...)).
    secret = re.compile(
        r"(PASSWORD|TOKEN|SECRET)\w*\s*[=:]\s*(?!change-me|\{env: |\$\()\S", re.IGNORECASE
    )
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "env.example":
            assert not secret.search(path.read_text()), path


def test_the_spark_server_gets_no_credentials_and_takes_only_clients_with_its_token():
    """A session on the Spark Connect server runs Python as its user and sees its
    environment: the server's unit reads spark.env alone (no PostgreSQL password, no
    Databricks token), and spark.env brings the token its clients must present."""
    [spark_env] = unit_settings(DEPLOY / "systemd" / "fanout-dagster-spark.service")[
        "EnvironmentFile"
    ]
    assert spark_env == SPARK_ENV_FILE  # not ENV_FILE, the secrets file
    variables = example_variables("spark.env.example")
    assert variables, "spark.env.example sets nothing"
    assert all(name.startswith("FANOUT_SPARK_") for name in variables), variables
    assert not any(name in variables for name in (*PG_VARIABLES, "DATABRICKS_TOKEN"))
    # Its token: made once, with the file readable by root only (the setup steps).
    instructions = (DEPLOY / "spark.env.example").read_text() + (DEPLOY / "README.md").read_text()
    assert 'echo "FANOUT_SPARK_CONNECT_TOKEN=$(openssl rand -hex 32)" >>' in instructions
    assert f"-m 0600 deploy/spark.env.example {SPARK_ENV_FILE}" in instructions
    # The Dagster services keep the settings they share with the server in one place.
    assert not any(name.startswith("FANOUT_SPARK_") for name in example_variables("env.example"))


def test_the_webserver_listens_on_loopback_behind_an_authenticating_proxy():
    webserver, code_server = exec_start("webserver"), exec_start("code-server")
    assert option(webserver, "-h") == "127.0.0.1"
    assert option(code_server, "-h") == "127.0.0.1"
    assert not any("0.0.0.0" in path.read_text() for path in UNITS)
    # Both Dagster services load the code from the code server.
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    [server] = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert (server["host"], str(server["port"])) == ("127.0.0.1", option(code_server, "-p"))
    for name in ("webserver", "daemon"):
        assert option(exec_start(name), "-w") == "/opt/fanout_dagster/deploy/workspace.yaml"
    assert exec_start("spark")[-2:] == ["-m", "fanout_dagster.local_spark.connect_server"]

    site = (DEPLOY / "nginx" / "fanout-dagster.conf").read_text()
    assert re.search(r"^\s*auth_basic\s+\"", site, re.MULTILINE)
    [users] = re.findall(r"auth_basic_user_file\s+(\S+);", site)
    assert users.startswith("/etc/"), users  # outside the repository
    [upstream] = re.findall(r"proxy_pass\s+(\S+);", site)
    assert upstream == f"http://127.0.0.1:{option(webserver, '-p')}"
    assert "proxy_set_header Upgrade $http_upgrade;" in site
    assert "listen 443 ssl;" in site  # basic auth only over TLS
