"""The Python interpreter of an emulated cluster (task side; standard library only).

A cluster has the libraries of its runtime and what the run installed -- not the developer's
working tree. The server's virtualenv, though, makes the working tree importable twice over:
a ``.pth`` file that puts the repository on ``sys.path`` and the product's editable install.
So tasks (and the Spark Python workers they start) run as::

    <task-env>/bin/python [-m module | -c code | script] args...

a small shell wrapper that starts the same interpreter with ``-s -S -P`` (no user site, no
``site`` processing, no script directory/cwd on ``sys.path``) and calls :func:`main`, which builds
``sys.path`` the way a cluster's interpreter has it:

* the folder holding this package (``<task-env>/lib``, a symlink to ``databricks_emulator``
  only, so the emulator's bootstrap imports and nothing else of the repository does);
* ``PYTHONPATH`` (the task's own entries: uploaded wheels, Spark's py4j/pyspark for workers),
  minus the hidden paths;
* the task's site folder (``$DATABRICKS_EMULATOR_SITE``: its runtime's and its run's
  libraries only, see :mod:`.task_libraries`) -- or, without one (a process the emulator did not
  give one), the interpreter's site-packages; either with their ``.pth`` files, except editable
  installs (``__editable__*``: those are working trees) and lines naming a hidden path.

The hidden paths are ``$DATABRICKS_EMULATOR_HIDDEN_PATHS`` (the repository root).
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import site
import sys

HIDDEN_PATHS_ENV = "DATABRICKS_EMULATOR_HIDDEN_PATHS"
SITE_ENV = "DATABRICKS_EMULATOR_SITE"
# Interpreter flags Spark or users may pass that take no argument (ignored here: they are
# either implied by the wrapper or harmless to drop).
_FLAGS = {"-u", "-B", "-E", "-s", "-S", "-P", "-I", "-q", "-O", "-OO", "-b", "-d", "-v"}


def _hidden() -> set[str]:
    value = os.environ.get(HIDDEN_PATHS_ENV, "")
    return {os.path.realpath(p) for p in value.split(os.pathsep) if p}


def _is_hidden(path: str, hidden: set[str]) -> bool:
    return os.path.realpath(path) in hidden


def _add_site_dir(sitedir: str, hidden: set[str]) -> None:
    if not os.path.isdir(sitedir) or sitedir in sys.path:
        return
    sys.path.append(sitedir)
    for name in sorted(os.listdir(sitedir)):
        if not name.endswith(".pth") or name.startswith("__editable__") or name.startswith("."):
            continue
        try:
            with open(os.path.join(sitedir, name), encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(("import ", "import\t")):
                try:
                    exec(line)  # noqa: S102 - what site.py does with .pth import lines
                except Exception as exc:  # noqa: BLE001
                    print(f"Error processing {name}: {exc!r}", file=sys.stderr)
                continue
            path = os.path.join(sitedir, line)
            if os.path.exists(path) and not _is_hidden(path, hidden) and path not in sys.path:
                sys.path.append(path)


def setup_sys_path() -> None:
    hidden = _hidden()
    lib = sys.path[0] if sys.path else ""
    stdlib = [p for p in sys.path[1:] if not _is_hidden(p, hidden)]
    python_path = [
        p
        for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if p and not _is_hidden(p, hidden)
    ]
    sys.path[:] = [lib, *python_path, *[p for p in stdlib if p not in python_path]]
    # Without `site`, a virtualenv's prefix is not set up (site.venv does it, but also adds the
    # site-packages with every .pth): set the prefix only.
    exe_dir = os.path.dirname(sys.executable)
    venv = os.path.dirname(exe_dir)
    if any(os.path.isfile(os.path.join(d, "pyvenv.cfg")) for d in (exe_dir, venv)):
        sys.prefix = sys.exec_prefix = venv
    task_site = os.environ.get(SITE_ENV)
    for sitedir in [task_site] if task_site else site.getsitepackages([sys.prefix]):
        _add_site_dir(sitedir, hidden)


def main() -> None:
    # The wrapper runs us with -c: sys.argv is ["-c", *the arguments the caller gave python].
    args = sys.argv[1:]
    setup_sys_path()
    while args and args[0] in _FLAGS:
        args = args[1:]
    if not args:
        raise SystemExit("The emulated cluster's python needs a script, -m module or -c code.")
    if args[0] == "-m" and len(args) > 1:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c" and len(args) > 1:
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    else:
        sys.argv = list(args)
        sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
        runpy.run_path(args[0], run_name="__main__")


WRAPPER = """#!/bin/sh
# The emulated cluster's python (see databricks_emulator/task_python.py).
exec {python} -s -S -P -c 'import sys; sys.path.insert(0, {lib}); from databricks_emulator.task_python import main; main()' "$@"
"""


def write_wrapper(task_env: str, package_dir: str, python: str) -> str:
    """Create ``<task_env>/bin/python`` and ``<task_env>/lib/databricks_emulator``; returns the
    wrapper's path."""
    lib = os.path.join(task_env, "lib")
    bin_dir = os.path.join(task_env, "bin")
    os.makedirs(lib, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    link = os.path.join(lib, "databricks_emulator")
    if os.path.islink(link) and os.readlink(link) != package_dir:
        os.unlink(link)
    if not os.path.lexists(link):
        os.symlink(package_dir, link)
    wrapper = os.path.join(bin_dir, "python")
    if "'" in lib:
        raise ValueError(f"The emulator's folder must not contain a quote: {lib}")
    text = WRAPPER.format(python=shlex.quote(python), lib=json.dumps(lib))
    if not os.path.exists(wrapper) or open(wrapper, encoding="utf-8").read() != text:  # noqa: SIM115
        temp = wrapper + ".tmp"
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(temp, 0o755)
        os.replace(temp, wrapper)
    return wrapper
