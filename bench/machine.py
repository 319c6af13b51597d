"""What the figures were measured on: the machine, the versions, the commit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    def run(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
            return (out.stdout + out.stderr).strip()
        except Exception:
            return ""

    from importlib.metadata import version

    import dagster
    import pyspark

    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    java = run(["java", "-version"]).splitlines()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "java": java[0].split('"')[1] if java and '"' in java[0] else (java[0] if java else ""),
        "jcmd": bool(shutil.which("jcmd")),
        "dagster": dagster.__version__,
        "pyspark": pyspark.__version__,
        "delta_spark": version("delta-spark"),
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
