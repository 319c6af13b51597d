"""`python -m fanout_dagster.core.objects --json-schema`: the JSON Schema of a
config file (configs/object-config.schema.json)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fanout_dagster.core.objects.model import config_file_json_schema


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout_dagster.core.objects", description="Object config tools."
    )
    parser.add_argument(
        "--json-schema",
        action="store_true",
        help="print the JSON Schema of a config file (configs/object-config.schema.json)",
    )
    args = parser.parse_args(argv)
    if not args.json_schema:
        parser.print_help()
        return 2
    sys.stdout.write(json.dumps(config_file_json_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
