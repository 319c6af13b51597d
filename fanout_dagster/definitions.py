"""This repository's code location (workspace.yaml, `dagster dev`, `dg`): the
`defs/` folder, where `defs/bronze/defs.yaml` configures the BronzeFanout
component (component/bronze_fanout.py).

On a Databricks cluster, the step launcher's remote side imports this module
from the code bundle (the package and the configs, no pyproject.toml, so no
defs folder to discover) and rebuilds the same definitions from the settings
the launching side passed in its environment (databricks/submission.py).
"""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions, definitions, load_from_defs_folder

# Kept importable from here for scripts and tests that build definitions from settings.
from fanout_dagster.component.build import build_definitions, local_resources
from fanout_dagster.settings import Settings, on_remote_step

__all__ = ["build_definitions", "defs", "local_resources"]


@definitions
def defs() -> Definitions:
    if on_remote_step():
        return build_definitions(Settings())
    return load_from_defs_folder(path_within_project=Path(__file__).parent)
