"""The Dagster Component (`fanout_dagster.BronzeFanout`) and what it builds: its
YAML attributes resolve to settings, and the settings to the bronze asset, its
sensor and the resources of the chosen target (local Spark or Databricks)."""
