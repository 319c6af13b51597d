# Every target bootstraps what it needs: a fresh machine with Python 3.11 and
# Java 17 needs nothing else.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# Re-install when the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

HOST ?= 127.0.0.1
PORT ?= 3000
PYTEST_ARGS ?=
# The suite runs in this many parallel pytest workers (pytest-xdist), each with
# its own Spark Connect server, PostgreSQL cluster and temporary folder; the
# tests mostly wait on JVMs and Dagster daemons, so more workers than cores
# pay. TEST_WORKERS=0 runs the tests in one process. Longest tests are handed
# out first (fanout_dagster_tests/parallel.py); `xdist_group` marks keep
# tests together on one worker.
TEST_WORKERS ?= 4
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
OBJECTS ?=
MODES ?=
EMULATOR_ARGS ?=

.PHONY: dev spark-server spark-shell test test-fast test-slow lint format emulator bench check-java install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The wheel holds only the product (fanout_dagster). The emulator, the
# benchmark and the tests sit beside it: a .pth file puts the repository on
# the venv's path, so they import from anywhere (subprocesses included).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "fanout_dagster_dev.pth").write_text("$(CURDIR)\n")'
	@# The Databricks emulator's Spark plugins (Unity Catalog names, disabled DBFS): compiled
	@# with javac against pyspark's jars into an ignored build folder (rebuilt when stale).
	@if command -v javac >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/javac" ]; then $(PY) -m databricks_emulator.unity_catalog; else echo "warning: no javac (Java 17 JDK): the Databricks emulator builds its Spark plugins on first use"; fi
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ] || { echo "error: Java not found - local Spark needs a Java 17 runtime on PATH (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }

# The local Spark Connect server (the warm "all-purpose cluster" runs attach to)
# and dagster dev beside it; Ctrl-C stops both, and nothing of either outlives the
# wrapper (docs/local-spark.md). The server takes only clients with the token it
# makes at each start; dagster dev gets it in its environment. dagster dev reads
# ./dagster.yaml (run queue limits) and keeps its state in a temporary
# .tmp_dagster_home_* here.
dev: $(STAMP) check-java
	$(PY) -m fanout_dagster.local_spark.connect_server -- $(VENV)/bin/dagster dev -h $(HOST) -p $(PORT)

# The Spark Connect server alone (for `dagster dev` started by hand, or a shell).
spark-server: $(STAMP) check-java
	$(PY) -m fanout_dagster.local_spark.connect_server

# A PySpark shell on the running server, with its token: spark.table("bronze.erp_customers").
spark-shell: $(STAMP)
	$(PY) -m fanout_dagster.local_spark.connect_server --shell

test: $(STAMP) check-java
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP) check-java
	$(PY) -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) check-java
	$(PY) -m pytest $(PARALLEL) -m slow $(PYTEST_ARGS)

# ruff (lint rules + the formatter's check), mypy, and the package's architecture
# (import-linter: which room may import which), configured in pyproject.toml;
# then the code location loads through its component (`dg check defs`) and shows
# its asset, sensor and resources (`dg list defs`). dg runs in this venv, without
# its hourly PyPI version check.
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) DAGSTER_DG_UPDATE_CHECK_ENABLED=0 $(VENV)/bin/dg
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(DG) check defs
	$(DG) list defs

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# A local Databricks workspace emulator on 127.0.0.1 (prints host and token);
# e.g. EMULATOR_ARGS="--no-dbfs-root --volume main.ops.fanout" (docs/databricks.md).
emulator: $(STAMP) check-java
	$(PY) -m databricks_emulator $(EMULATOR_ARGS)

bench: $(STAMP) check-java
	$(PY) -m bench $(if $(OBJECTS),--objects $(OBJECTS)) $(if $(MODES),--modes $(MODES))

clean:
	rm -rf .tmp_dagster_home_* warehouse spark-warehouse metastore_db .emulator .spark
