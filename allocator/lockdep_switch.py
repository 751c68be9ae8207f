"""The lockdep switch: whether the lock checker runs, read on every acquire and release.

Its own module so that the lock primitives (``allocator.locks``, ``allocator.rwlock``) and the
interpreted copies the interleaving explorer runs (tests/support/pure_locks.py) all read one
switch; ``allocator.locks.set_lockdep`` turns it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOCKDEP", "LockdepSwitch"]


class LockdepSwitch:
    """Whether lockdep is on: an attribute of a ``Final`` object, which compiled code reads
    directly (a module global is a dictionary look-up)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


LOCKDEP: Final = LockdepSwitch()
