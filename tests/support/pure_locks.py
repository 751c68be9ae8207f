"""The interpreted ``allocator/locks.py``, whichever build the process runs.

In the compiled build (setup.py) ``allocator.locks`` is a mypyc extension: it has no Python
frames for a line tracer to stop at, its native classes cannot be monkeypatched, and it reads
``threading`` through a C-level reference that patching the module attribute does not reach.
The interleaving explorer (``support.schedule``) and the tests that park a thread at a line or
replace a lock method need the source itself, so they take ``PURE_LOCKS``: the same file run
by the interpreter, as a module of its own (``allocator._locks_interpreted``) next to the
compiled one.  Its classes are used only by those tests; the checker (``allocator.lockdep``)
and its lock classes are shared.  In the pure build ``PURE_LOCKS`` is ``allocator.locks``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

import allocator
from allocator import locks

__all__ = ["PURE_LOCKS", "locks_compiled"]


def locks_compiled() -> bool:
    """Whether this process runs the compiled ``allocator.locks``."""
    return not locks.__file__.endswith(".py")


def _load() -> ModuleType:
    if not locks_compiled():
        return locks
    name = "allocator._locks_interpreted"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(allocator.__file__), "locks.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as an import would
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:  # the same source: type-check its users against it
    from allocator import locks as PURE_LOCKS
else:
    PURE_LOCKS = _load()
