"""Single-host accelerators, optional: a run coordinator and a run launcher for a
deployment whose daemon, webserver and run workers share one host (`dagster dev`,
deploy/). The product's guarantees do not depend on them."""
