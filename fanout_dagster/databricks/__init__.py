"""The Databricks launch modes: the dagster-databricks step launcher and Dagster
Pipes, and the entry script that runs on the Databricks compute."""
