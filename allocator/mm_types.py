"""The struct page vocabulary shared by the simulated memory and its users (include/linux/mm_types.h).

This module owns the names that both `allocator.memory` (the frames) and the modules above it
(`allocator.page_migration`, zsmalloc) use to talk about a page frame, so that none of them has
to import another sideways:

* the ``PG_*`` flag bits of ``PhysicalMemory.flags`` (an ``IntFlag`` for display, plain ints for
  hot paths) and ``INDEX_NONE``, the value of page->index for "no next page";
* ``MovableOps``, the callbacks of a movable page's owner (the kernel's
  ``movable_operations``: isolate_page / migrate_page / putback_page);
* ``OutOfMemory``, what the page allocator raises when every frame is in use.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "PG",
    "PG_PRIVATE",
    "PG_MOVABLE",
    "PG_ISOLATED",
    "INDEX_NONE",
    "MovableOps",
    "OutOfMemory",
]


class OutOfMemory(MemoryError):
    """No free page frame (the arena's max_pages are all in use)."""


class PG(IntFlag):
    """Bits of ``PhysicalMemory.flags`` (the struct page flags zsmalloc uses)."""

    PRIVATE = 0x01  # PG_private: first page of a zspage
    MOVABLE = 0x02  # __SetPageMovable: registered with movable ops (set_movable)
    ISOLATED = 0x04  # PG_isolated: taken off by a migrator (between isolate and migrate/putback)


# Plain ints for hot paths (IntFlag arithmetic is slow).
PG_PRIVATE: Final = 0x01
PG_MOVABLE: Final = 0x02
PG_ISOLATED: Final = 0x04
# page->index of a frame that links to no next page (PFN 0 exists, so not 0).
INDEX_NONE: Final = -1


@runtime_checkable
class MovableOps(Protocol):
    """The movable page callbacks (kernel: address_space_operations of zsmalloc's inode)."""

    def isolate_page(self, pfn: int) -> bool: ...

    def migrate_page(self, old_pfn: int, new_pfn: int) -> bool: ...

    def putback_page(self, pfn: int) -> None: ...
