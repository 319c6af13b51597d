"""Dagster resources: Spark sessions, bronze tables, object configs, object loaders."""
