"""Object configs: the fan-out list.

Each YAML file in the configs folder holds one object (a mapping), a list of
objects, or `{defaults: {...}, objects: [...]}` (docs/configs.md lists every
field). Every problem is reported with its file and field, in the form
`erp.yaml: [3].source.format: 'xml' is not one of csv, json, parquet`, so one
bad object never hides the valid objects of its own or other files.

- fields.py: allowed values and the check of each field;
- model.py: the pydantic models (object, source, target, file defaults), the
  content hashes the sensor compares, the JSON Schema for editors;
- loader.py: reading a configs folder (cached per file), defaults, duplicates;
- errors.py: where and what, in words a config's author understands.

Plain Python (pydantic and PyYAML): the sensor, the asset, the run coordinator,
the benchmark and the remote side of a Databricks run use it alike.
"""

from fanout_dagster.core.objects.errors import ConfigError
from fanout_dagster.core.objects.fields import (
    DEFAULT_CLUSTER,
    MAX_IDENT_LEN,
    ON_EMPTY_MODES,
    SCHEMA_EVOLUTION_MODES,
    SOURCE_FORMATS,
    TABLE_SOURCE_FORMAT,
    WRITE_MODES,
    SchemaEvolutionMode,
    source_path_problem,
)
from fanout_dagster.core.objects.loader import (
    ConfigsLoad,
    ObjectNotFound,
    ParseCacheStats,
    clear_parse_cache,
    load_objects,
    parse_cache_stats,
    parse_config_file,
)
from fanout_dagster.core.objects.model import (
    ObjectConfig,
    SourceSpec,
    TargetSpec,
    config_file_json_schema,
    partition_key,
)

__all__ = [
    "DEFAULT_CLUSTER",
    "MAX_IDENT_LEN",
    "ON_EMPTY_MODES",
    "SCHEMA_EVOLUTION_MODES",
    "SOURCE_FORMATS",
    "TABLE_SOURCE_FORMAT",
    "WRITE_MODES",
    "ConfigError",
    "ConfigsLoad",
    "ObjectConfig",
    "ObjectNotFound",
    "ParseCacheStats",
    "SchemaEvolutionMode",
    "SourceSpec",
    "TargetSpec",
    "clear_parse_cache",
    "config_file_json_schema",
    "load_objects",
    "parse_cache_stats",
    "parse_config_file",
    "partition_key",
    "source_path_problem",
]
