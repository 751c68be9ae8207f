"""The per-CPU ``mapping_area`` of zs_map_object (``struct mapping_area``), per thread here.

Its own module, not compiled (setup.py): a class deriving from ``threading.local`` cannot be a
mypyc native class, and mypyc's non-native classes cannot derive from it either; the pool
reads its three attributes, which costs the same from compiled or interpreted code.
"""

from __future__ import annotations

import threading

__all__ = ["MapArea"]


class MapArea(threading.local):
    """The per-CPU `mapping_area`, per thread here: an in-use flag, an identity for the check
    that the mapping thread unmaps (docs/zsmalloc.md, edge case "One mapping per CPU"), and a
    PAGE_SIZE copy buffer that exists only once this thread has mapped an object spanning two
    frames.

    Why lazy: the zram data path (read_object/write_object) only tests `active`, and mapping
    an object inside one frame copies nothing; yet a thread-local's __init__ runs for every
    new Python thread state, and a FUSE callback may get a fresh one per request — a buffer
    built here was a 4 KiB bytearray per request."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.active = False
        # identifies this thread's area (the threading.local object itself is shared)
        self.owner = object()
        self.bufmv: memoryview | None = None

    def buffer(self) -> memoryview:
        """This thread's copy buffer, allocated on first use."""
        mv = self.bufmv
        if mv is None:
            mv = self.bufmv = memoryview(bytearray(self.page_size))
        return mv
