"""Which build of a package runs: its mypyc-compiled modules or their pure-Python sources.

The install compiles the hot modules from the same ``.py`` files (setup.py, docs/performance.md
"Compiled build"); each compiled module is an extension module next to its source, which
Python's import system prefers.  A package's ``__init__`` (never compiled) calls ``select``
before it imports any submodule, and the pure sources are imported instead when

* ``ZRAMFS_PURE_PYTHON=1`` (any value but empty or ``0``) is in the environment, or
* a compiled module is stale: its source no longer hashes to what ``_compiled.json`` recorded
  at build time (an edited checkout of an editable install), or its extension is missing, or
* a package its compiled modules call natively (``calls_natively`` in the manifest: the
  allocator, for the device) runs its sources.
  So an edit is never shadowed by the build of the code before it.  ``why_pure`` says why;
  nothing is printed (every subprocess of a test would print it); ``scripts/test.sh`` and the
  in-process benchmarks print the build and that reason.

Either way the choice is made once per process for the whole package, never module by module:
compiled modules call each other natively and assume their neighbours are compiled too.

Nothing here is compiled, and nothing here imports the package it serves.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

PURE_ENV = "ZRAMFS_PURE_PYTHON"
MANIFEST = "_compiled.json"

COMPILED = "compiled"
PURE = "pure"

# package -> why select() chose the sources over a compiled build that is there
_why_pure: dict[str, str] = {}
# package -> the build select() chose for it in this process
_selected: dict[str, str] = {}


def pure_requested() -> bool:
    """``ZRAMFS_PURE_PYTHON`` is set to something other than empty or 0."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class PureSourceFinder:
    """A meta path finder, first on ``sys.meta_path``, that imports the submodules of one
    package from their ``.py`` files, skipping the extension modules beside them."""

    def __init__(self, package: str, path: Sequence[str]) -> None:
        self.prefix = package + "."
        self.path = list(path)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(self.prefix):
            return None
        name = fullname[len(self.prefix) :]
        if "." in name:  # no subpackages: nothing deeper to redirect
            return None
        for d in self.path:
            src = os.path.join(d, name + ".py")
            if os.path.isfile(src):
                return importlib.util.spec_from_file_location(fullname, src)
        return None  # not a source module (e.g. the mypyc shared library)


def _compiled_problem(pkg_dir: str, modules: dict[str, str]) -> str | None:
    """Why the compiled modules recorded in the manifest cannot be used, or None."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    stale, missing = [], []
    for mod, digest in sorted(modules.items()):
        src = os.path.join(pkg_dir, mod + ".py")
        try:
            with open(src, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    stale.append(mod + ".py")
        except OSError:
            continue  # no source (an install without .py files): nothing to shadow
        if not any(os.path.exists(os.path.join(pkg_dir, mod + s)) for s in suffixes):
            missing.append(mod)
    if stale:
        return f"{', '.join(stale)} changed since the build"
    if missing:
        return f"no extension module for {', '.join(missing)}"
    return None


def _dependency_problem(package: str, natively: list[str]) -> str | None:
    """Why ``package``'s compiled build cannot run beside the packages it calls natively
    (its manifest's ``calls_natively``: compiled with them in one mypyc run), or None.  Its
    compiled code reaches their compiled classes through their shared library's export
    table whatever build their modules were imported in, so it must run exactly when they
    do: never with their sources, which would make two ``Pool`` types in one process."""
    for dep in natively:
        importlib.import_module(dep)  # its __init__ chooses its build (select)
        if _selected.get(dep) != COMPILED:
            return f"{dep} runs its sources, and the compiled {package} calls it natively"
    return None


def select(package: str, path: Sequence[str]) -> str:
    """Choose the build of ``package`` (whose ``__path__`` is ``path``) for this process and
    return it: ``"compiled"`` or ``"pure"``.  Call it from the package's ``__init__`` before
    any submodule is imported."""
    mode = _select(package, path)
    _selected[package] = mode
    return mode


def _select(package: str, path: Sequence[str]) -> str:
    pkg_dir = path[0]
    try:
        with open(os.path.join(pkg_dir, MANIFEST)) as f:
            manifest = json.load(f)
        modules: dict[str, str] = manifest["modules"]
        natively: list[str] = list(manifest.get("calls_natively", ()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return PURE  # never compiled here: plain imports find the sources
    if not modules:
        return PURE
    if pure_requested():
        problem: str | None = f"{PURE_ENV} is set"
    else:
        problem = _compiled_problem(pkg_dir, modules)
        if problem is not None:
            problem += " (rebuild: pip install -e .)"
        else:
            problem = _dependency_problem(package, natively)
    if problem is not None:
        _why_pure[package] = problem
        sys.meta_path.insert(0, PureSourceFinder(package, path))
        return PURE
    return COMPILED


def selected(package: str) -> str | None:
    """The build ``select`` chose for ``package`` in this process (None before it ran)."""
    return _selected.get(package)


def why_pure(package: str) -> str | None:
    """Why ``package`` runs its sources although it was compiled (the variable, or which
    module is stale or missing), or None."""
    return _why_pure.get(package)


def loaded_mode(module: ModuleType) -> str:
    """How ``module`` was actually loaded: ``"compiled"`` for an extension module."""
    file = getattr(module, "__file__", None) or ""
    return COMPILED if file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else PURE
