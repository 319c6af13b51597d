"""The Dagster-free core: what an object is (its config), how it loads (read,
audit columns, schema policy, one Delta transaction) and how a pack of objects
loads on one SparkSession. Imports pydantic, pyyaml and pyspark, never Dagster,
so it runs unchanged on a Databricks cluster or serverless compute."""
