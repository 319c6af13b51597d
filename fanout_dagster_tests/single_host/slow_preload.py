"""A forkserver preload that takes longer than a fork is expected to: imported by
the cold forkserver of a test, as the real preload (Dagster, pyspark, pandas)
takes ~3.5 s on a fresh machine with no bytecode caches. The delay is the fault
injected, on purpose longer than any slack a clock comparison would allow."""

import time

PRELOAD_DELAY_S = 4.0

time.sleep(PRELOAD_DELAY_S)
