"""What zramfs needs of the Python running it, checked before a device is built.

The GIL: zramfs is correct only while the GIL makes certain operations indivisible.  Several
hot paths take no lock because of it: the allocator's per-frame metadata arrays and the pool's
handle table are grown in place while other threads index them, the handle cache is popped and
appended without a lock, and statistics are read without the locks that guard them (the
whole list, "Shortcuts that rely on the GIL", is at the top of allocator/locks.py; the RWLock
reader fast path there has a slow path of its own for such builds).  A free-threaded build
(3.13t and later) running without the GIL would race there and corrupt data silently, so a
device is refused rather than run there.

A free-threaded build turns the GIL back on, for good, when it imports an extension module
that does not declare itself safe without it (lz4, zstandard, numpy may be such modules), so
the state is read after importing the extension modules the device stack loads: what
counts is whether the GIL is off while devices serve I/O.  ``PYTHON_GIL=1`` (or ``-X gil=1``)
runs a free-threaded build with the GIL on.
"""

from __future__ import annotations

import sys


class UnsupportedRuntime(RuntimeError):
    """This Python cannot run zramfs devices safely (the message says why)."""


def gil_disabled() -> bool:
    """True when this interpreter runs without the GIL right now.  ``sys._is_gil_enabled``
    exists from 3.13 on; before it, and on default builds, the GIL is always on."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


def unsupported_runtime() -> str | None:
    """Why zramfs must not run devices in this process (one line), or None when it can."""
    # The extension modules of the device stack first: importing one may re-enable the GIL.
    import allocator  # noqa: F401
    import zramfs.codecs  # noqa: F401

    if gil_disabled():
        return (
            "this Python runs without the GIL (free-threaded build, sys._is_gil_enabled() "
            "is False); zramfs relies on the GIL (arrays grown in place while other threads "
            "read them, lock-free handle cache; see allocator/locks.py): use a default "
            "build, or run with PYTHON_GIL=1"
        )
    return None


def require_gil() -> None:
    """Raise `UnsupportedRuntime` when `unsupported_runtime` finds a reason: the check for
    code that builds devices in process (a `Registry`)."""
    problem = unsupported_runtime()
    if problem is not None:
        raise UnsupportedRuntime(problem)
