"""What either launch mode hands Databricks with each run, besides its compute:

- the code bundle: the package and the configs folder, nothing else (zipping
  the repo root would ship the virtualenv), built per run and removed after it;
- an idempotency token per run, step and attempt, so a retried submit can
  never start the same objects twice (the stock launcher sends none);
- a run name carrying the Dagster run id and its objects;
- environment variables for the remote side, never a credential: the token
  stays in this process (databricks-sdk's usual sources: DATABRICKS_HOST /
  DATABRICKS_TOKEN, or a ~/.databrickscfg profile).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fanout_dagster.databricks.clusters import ClusterConfigError
from fanout_dagster.orchestration.tags import OBJECTS_TAG
from fanout_dagster.settings import PROJECT_ROOT, Settings

# Settings the remote side of the step launcher needs to rebuild the same
# definitions. Not configs_dir: the remote side reads the bundle's configs.
PASSED_THROUGH_SETTINGS = (
    "data_root",
    "bronze_schema",
    "objects_per_run",
    "threads_per_run",
)
# Where the bundle puts the configs, relative to its root (the remote PROJECT_ROOT).
BUNDLED_CONFIGS = "configs"
RUN_NAME_LIMIT = 200


def idempotency_token(run_id: str, step_key: str, attempt: int) -> str:
    # Databricks accepts at most 64 characters.
    return hashlib.sha256(f"{run_id}:{step_key}:{attempt}".encode()).hexdigest()[:48]


def databricks_run_name(
    run_id: str, keys: Sequence[str], cluster: str, limit: int = RUN_NAME_LIMIT
) -> str:
    """`fanout_dagster bronze <dagster run id> [cluster]: key, key, ... +N more`.

    The full Dagster run id, so a Databricks user finds the run in Dagster (and
    the Databricks run is found by searching its runs for the id); as many
    object keys as fit.
    """
    head = f"fanout_dagster bronze {run_id} [{cluster}]: "
    shown: list[str] = []
    for i, key in enumerate(keys):
        rest = len(keys) - i - 1
        more = f" +{rest} more" if rest else ""
        candidate = ", ".join([*shown, key])
        if len(head) + len(candidate) + len(more) > limit:
            return head + ", ".join(shown) + f" +{len(keys) - len(shown)} more"
        shown.append(key)
    return head + ", ".join(shown)


def run_keys(run_tags: Mapping[str, str], fallback: Sequence[str] = ()) -> list[str]:
    tagged = run_tags.get(OBJECTS_TAG)
    return tagged.split(",") if tagged else list(fallback)


def write_code_bundle(configs_dir: str, dest: Path) -> Path:
    """Into `dest`: only what the remote side needs, the package and the configs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "fanout_dagster", dest / "fanout_dagster", ignore=ignore)
    shutil.copytree(configs_dir, dest / BUNDLED_CONFIGS, ignore=ignore)
    return dest


def code_bundle(configs_dir: str) -> str:
    """A new temporary folder holding the code bundle; the caller removes it."""
    return str(write_code_bundle(configs_dir, Path(tempfile.mkdtemp(prefix="fanout_bundle_"))))


def databricks_auth() -> tuple[str, str | None]:
    """Host and token from databricks-sdk's default sources (env vars or a config profile)."""
    from databricks.sdk.core import Config

    # Config() reads DATABRICKS_HOST / DATABRICKS_TOKEN / DATABRICKS_CONFIG_PROFILE itself.
    config = Config()
    if not config.host:
        raise ClusterConfigError(
            "no Databricks workspace configured: set DATABRICKS_HOST and DATABRICKS_TOKEN, or "
            "DATABRICKS_CONFIG_PROFILE naming a ~/.databrickscfg profile"
        )
    return config.host, config.token


def remote_env(settings: Settings) -> dict[str, str]:
    """What the step launcher's remote side is told: the target, and the settings it needs.

    The configs are the uploaded bundle's: a configs folder named on the
    launching machine (FANOUT_CONFIGS_DIR) does not exist on the cluster.
    """
    env = {
        Settings.env_name("remote_step"): "1",
        Settings.env_name("target"): "databricks",
        Settings.env_name("configs_dir"): BUNDLED_CONFIGS,
    }
    for name in PASSED_THROUGH_SETTINGS:
        env[Settings.env_name(name)] = str(getattr(settings, name))
    return env
