"""Handles of the zsmalloc port: the handle cache and the cells that map a handle to its obj.

This module owns what a handle is and the one readable check of a handle:

* A handle is ``cell_index << HANDLE_SHIFT``, like the address of an 8-byte cell of the
  kernel's "zs_handle" kmem_cache: never 0, and bit 0 clear, so ``handle | OBJ_ALLOCATED_TAG``
  can be stored in an object's header.  Its cell holds the encoded obj (record_obj /
  handle_to_obj); ``FREE_CELL`` (-1) marks a free cell, because obj 0 is a real location
  (PFN 0, object 0).
* `HandleCache`: cache_alloc_handle / cache_free_handle over a free-cell stack, and
  ``checked_obj``, the reference handle check (0, misaligned, never allocated, freed).  The
  pool's hot paths (zs_malloc, zs_free, read_object, write_object) inline their own copies
  of the pop and of the check; ``tests/test_pool_reference.py`` checks that they agree.

The cache takes no lock on its hot path (the handle-cache entry of "Shortcuts that rely on the
GIL" in `allocator/locks.py`): ``free_cells`` is popped and appended as single list operations
and ``cells`` is indexed by every thread while ``grow`` extends it in place under its leaf lock.
"""

from __future__ import annotations

from array import array
from typing import Final

from . import locks as _locks

__all__ = ["HANDLE_SHIFT", "FREE_CELL", "HANDLE_LOW_BITS", "InvalidHandle", "HandleCache"]

HANDLE_SHIFT: Final = 3  # handle = cell index * ZS_HANDLE_SIZE
HANDLE_LOW_BITS: Final = (1 << HANDLE_SHIFT) - 1
FREE_CELL: Final = -1


class InvalidHandle(ValueError):
    """A handle that is not live in this pool (0, misaligned, never allocated or freed)."""


class HandleCache:
    """The pool's handle cells: ``cells[handle >> HANDLE_SHIFT]`` is the obj of a live handle.

    Cell 0 is never handed out (handle 0 means "no object").  Both containers are only ever
    grown in place, so a reference to them stays valid for the cache's lifetime (the pool keeps
    such references for its hot paths)."""

    __slots__ = ("cells", "free_cells", "_grow_lock")

    def __init__(self, initial: int = 1024) -> None:
        self.cells = array("q", [FREE_CELL]) * initial
        # popped from the end: the lowest cell index comes out first
        self.free_cells: list[int] = list(range(initial - 1, 0, -1))
        self._grow_lock = _locks.hot_path_lock(_locks.HANDLE_CACHE_LOCK)

    def alloc(self) -> int:
        """cache_alloc_handle: a free handle (its cell still holds FREE_CELL)."""
        try:
            idx = self.free_cells.pop()
        except IndexError:
            idx = self.grow()
        return idx << HANDLE_SHIFT

    def grow(self) -> int:
        """Double the cells (the kmem_cache growing a slab) and return a free cell index."""
        with self._grow_lock:
            try:
                return self.free_cells.pop()
            except IndexError:
                pass
            cells = self.cells
            old = len(cells)
            # Growing reallocates the array; that is safe because nobody holds a buffer
            # export of it and item access is atomic under the GIL.
            cells.extend(array("q", [FREE_CELL]) * old)
            self.free_cells.extend(range(2 * old - 1, old, -1))
            return old

    def free(self, handle: int) -> None:
        """cache_free_handle."""
        idx = handle >> HANDLE_SHIFT
        self.cells[idx] = FREE_CELL
        self.free_cells.append(idx)

    def checked_obj(self, handle: int) -> int:
        """handle_to_obj of a handle that must be live; InvalidHandle otherwise (the kernel
        would read a wild pointer)."""
        if handle <= 0 or handle & HANDLE_LOW_BITS:
            raise InvalidHandle(f"invalid handle {handle!r}")
        try:
            obj = self.cells[handle >> HANDLE_SHIFT]
        except IndexError:
            raise InvalidHandle(f"invalid handle {handle:#x}") from None
        if obj < 0:
            raise InvalidHandle(f"handle {handle:#x} is not allocated")
        return obj
