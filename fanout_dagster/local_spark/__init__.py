"""Local Spark: the warm Spark Connect server `make dev` starts (the local
stand-in for an all-purpose cluster) and the local catalog of bronze tables."""
