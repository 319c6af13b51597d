"""Code that runs on Databricks, outside Dagster (the Pipes launch mode)."""
