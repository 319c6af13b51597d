"""Developer tools that are not part of the pipeline itself (local emulators, helpers)."""
