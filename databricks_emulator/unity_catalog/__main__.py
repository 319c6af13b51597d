"""``python -m databricks_emulator.unity_catalog``: build the Spark plugin jar (make install)."""

from . import plugin_jar

print(plugin_jar())
