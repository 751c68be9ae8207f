"""One Python thread state per libfuse worker thread, kept for the thread's lifetime.

Why: libfuse runs the callbacks on its own pthreads, which Python has never seen.  ctypes wraps
every call of a callback in ``PyGILState_Ensure()``/``PyGILState_Release()``; on a foreign
thread the first creates a fresh ``PyThreadState`` and the second destroys it again when the
callback returns.  So every FUSE request starts on a brand-new thread state, and every
``threading.local`` it touches is rebuilt per request: the zstd contexts and the lz4 output
buffer in `zramfs.codecs`, the allocator's map area in `allocator.pool`.  Measured on the
project VM (docs/performance.md, "In process: per-page and per-call costs"): an empty ctypes
callback from a C pthread costs ~8.5 µs with a fresh thread state and ~0.17 µs with a kept one.

How: on the first request a worker serves, call ``PyGILState_Ensure()`` once more and never
release it.  The thread state's gilstate counter then never drops to 0, so ctypes' Release only
decrements it, and the next callback on that thread finds and reuses the same state.  Whether a
thread is pinned is a `threading.local` marker, i.e. an attribute of the thread state itself —
not a set of thread idents: libfuse retires idle workers and starts new ones, a new pthread can
reuse a dead one's ident, and an ident-keyed check would then skip pinning it.

Cost: one ``PyThreadState`` (and what its thread-locals hold) per libfuse worker, never freed;
a worker that libfuse retires leaves its state behind until the interpreter finalises.  That is
why nothing large should live only in a thread-local (zstd contexts come from a shared pool).

Use: `pinning_fuse` returns a subclass of the binding's ``FUSE`` class whose per-callback
wrapper (``_wrapper``: mfusepy and fusepy both route every operation through it) pins first.
Only FUSE callbacks are affected; direct calls of the operations (tests) never pin.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import threading
from typing import Any, TypeVar

__all__ = ["pin_thread_state", "pinning_fuse"]

_tls = threading.local()
# PyDLL: the call keeps the GIL, which PyGILState_Ensure requires when the thread already
# holds it (it then only increments the counter of the current thread state).
_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.argtypes = []
_ensure.restype = ctypes.c_int  # PyGILState_STATE, an enum; never passed to Release


def pin_thread_state() -> None:
    """Keep the calling thread's Python thread state alive after the current callback.

    Call it at the start of a callback that ctypes runs on a foreign (non-Python) thread.
    Idempotent and cheap after the first call on a thread (one thread-local lookup).  On a
    thread Python created itself it only bumps a counter nobody else reads: harmless.
    """
    if not getattr(_tls, "pinned", False):
        # A fresh thread state has no marker: this is the first request on this thread state.
        _ensure()  # deliberately never released (see the module docstring)
        _tls.pinned = True


_T = TypeVar("_T", bound=type)


@functools.cache
def pinning_fuse(fuse_cls: _T) -> _T:
    """A subclass of a fusepy-API ``FUSE`` class that pins the thread state on every callback.

    Both mfusepy (an instance method) and fusepy 3.0.1 (a staticmethod) register each libfuse
    callback as ``prototype(partial(self._wrapper, method))``, so overriding ``_wrapper`` hooks
    every operation in one place.  A binding without ``_wrapper`` is refused loudly rather than
    left silently unpinned.
    """
    raw = inspect.getattr_static(fuse_cls, "_wrapper", None)
    parent = getattr(fuse_cls, "_wrapper", None)  # the plain function in both shapes
    if raw is None or not callable(parent):
        raise TypeError(f"{fuse_cls!r} has no _wrapper to hook the thread-state pinning into")
    # Bound once here rather than through super() per call, and the marker test inlined: this
    # runs on every FUSE request (~0.15 µs added per call instead of ~0.3 µs).  libfuse's
    # callbacks reach _wrapper through ctypes with positional arguments only.
    if isinstance(raw, staticmethod):  # fusepy 3.0.1

        def _wrapper(self: Any, func: Any, *args: Any) -> Any:
            try:
                _tls.pinned
            except AttributeError:
                pin_thread_state()
            return parent(func, *args)
    else:  # mfusepy

        def _wrapper(self: Any, func: Any, *args: Any) -> Any:
            try:
                _tls.pinned
            except AttributeError:
                pin_thread_state()
            return parent(self, func, *args)

    name = f"Pinning{fuse_cls.__name__}"
    return type(
        name, (fuse_cls,), {"_wrapper": _wrapper, "__module__": __name__, "__qualname__": name}
    )  # type: ignore[return-value]
