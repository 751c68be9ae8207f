"""The interpreted ``allocator/locks.py`` and ``allocator/rwlock.py``, whichever build runs.

In the compiled build (setup.py) ``allocator.locks`` and ``allocator.rwlock`` are mypyc
extensions: they have no Python frames for a line tracer to stop at, their native classes
cannot be monkeypatched, and they read ``threading`` through a C-level reference that patching
the module attribute does not reach.  The interleaving explorer (``support.schedule``) and the
tests that park a thread at a line or replace a lock method need the sources themselves, so
they take ``PURE_LOCKS``: ``locks.py`` run by the interpreter, as a module of its own
(``allocator._locks_interpreted``) next to the compiled one, whose ``RWLock`` is the class of
``rwlock.py`` run the same way (``PURE_RWLOCK``, ``allocator._rwlock_interpreted``).  Their
classes are used only by those tests; the checker (``allocator.lockdep``), its lock classes and
the lockdep switch (``allocator.lockdep_switch``) are shared.  In the pure build ``PURE_LOCKS``
is ``allocator.locks`` and ``PURE_RWLOCK`` is ``allocator.rwlock``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

import allocator
from allocator import locks, rwlock

__all__ = ["PURE_LOCKS", "PURE_RWLOCK", "locks_compiled"]


def locks_compiled() -> bool:
    """Whether this process runs the compiled ``allocator.locks``."""
    return not locks.__file__.endswith(".py")


def _interpreted(name: str, source: str) -> ModuleType:
    """``allocator/<source>`` run by the interpreter as module ``name`` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(allocator.__file__), source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as an import would
    spec.loader.exec_module(module)
    return module


def _load() -> tuple[ModuleType, ModuleType]:
    if not locks_compiled():
        return locks, rwlock
    pure_rwlock = _interpreted("allocator._rwlock_interpreted", "rwlock.py")
    pure_locks = _interpreted("allocator._locks_interpreted", "locks.py")
    # its `from .rwlock import RWLock` found the compiled class: the interpreted one instead
    setattr(pure_locks, "RWLock", pure_rwlock.RWLock)  # noqa: B010 - ModuleType declares no such field
    return pure_locks, pure_rwlock


if TYPE_CHECKING:  # the same sources: type-check their users against them
    from allocator import locks as PURE_LOCKS
    from allocator import rwlock as PURE_RWLOCK
else:
    PURE_LOCKS, PURE_RWLOCK = _load()
