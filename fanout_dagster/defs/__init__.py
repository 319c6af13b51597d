"""This repository's defs folder (fanout_dagster/definitions.py loads it): bronze/defs.yaml."""
