"""A size class at run time and its fullness lists (struct size_class of mm/zsmalloc.c, 5.17).

This module owns:

* `SizeClass`: the runtime half of struct size_class: class->lock, the four fullness lists,
  the stats array, and a few values derived once from the static `SizeClassSpec`.
* The list operations, one readable implementation each, under the kernel's names:
  ``insert_zspage``, ``remove_zspage``, ``fix_fullness_group``, ``putback_zspage`` and
  ``find_get_zspage``.  Every caller holds class->lock.

The fullness rule itself is `allocator.sizeclass.get_fullness_group` (with its threshold,
``almost_empty_limit``).  zs_malloc and zs_free in `allocator.pool` run hand-inlined copies of
``find_get_zspage`` and of ``fix_fullness_group``'s list moves; the functions here are the
reference, and ``tests/test_pool_reference.py`` checks that the copies agree with them.
"""

from __future__ import annotations

from typing import cast

from . import locks as _locks
from .sizeclass import (
    NR_ZS_FULLNESS,
    NR_ZS_STAT_TYPE,
    ZS_ALMOST_EMPTY,
    ZS_ALMOST_FULL,
    ZS_EMPTY,
    ZS_HANDLE_SIZE,
    almost_empty_limit,
    get_fullness_group,
)
from .zspage import ListHead, Zspage, list_add, list_del_init

__all__ = [
    "SizeClass",
    "insert_zspage",
    "remove_zspage",
    "fix_fullness_group",
    "putback_zspage",
    "find_get_zspage",
]


class SizeClass:
    """struct size_class: the runtime state of one canonical class."""

    __slots__ = (
        "lock",
        "fullness_list",
        "size",
        "objs_per_zspage",
        "pages_per_zspage",
        "index",
        "stats",
        "huge",
        "almost_empty_max",
        "deferred_freed",
        "usable",
    )

    def __init__(self, index: int, size: int, pages: int, objs: int) -> None:
        self.lock = _locks.Mutex(_locks.CLASS_LOCK)
        self.fullness_list = [ListHead() for _ in range(NR_ZS_FULLNESS)]
        self.size = size
        self.objs_per_zspage = objs
        self.pages_per_zspage = pages
        self.index = index
        self.stats = [0] * NR_ZS_STAT_TYPE
        self.huge = pages == 1 and objs == 1
        # the largest inuse that is still ALMOST_EMPTY, for the inlined fullness rule
        self.almost_empty_max = almost_empty_limit(objs)
        # zspages freed by the async worker: 5.17 never decrements CLASS_EMPTY for them
        # (docs/zsmalloc.md, edge case "Deferred free when a page lock is busy")
        self.deferred_freed = 0
        # bytes a mapping of an object of this class exposes
        self.usable = size if self.huge else size - ZS_HANDLE_SIZE

    def __repr__(self) -> str:
        return (
            f"<SizeClass {self.index} size={self.size} pages={self.pages_per_zspage} "
            f"objs={self.objs_per_zspage}>"
        )


def insert_zspage(cls: SizeClass, zspage: Zspage, fg: int) -> None:
    """insert_zspage: at the head of list `fg`, or second when the head has fewer objects in
    use (so the head stays the fullest, for find_get_zspage)."""
    cls.stats[fg] += 1
    head = cls.fullness_list[fg]
    first = head.next
    if first is not head and zspage.inuse < cast(Zspage, first).inuse:
        list_add(zspage, first)
    else:
        list_add(zspage, head)


def remove_zspage(cls: SizeClass, zspage: Zspage, fg: int) -> None:
    """remove_zspage: take the zspage off list `fg`."""
    assert cls.fullness_list[fg].next is not cls.fullness_list[fg], "remove from empty list"
    list_del_init(zspage)
    cls.stats[fg] -= 1


def fix_fullness_group(cls: SizeClass, zspage: Zspage) -> int:
    """fix_fullness_group: move the zspage to the list its inuse now calls for; returns it."""
    currfg = zspage.fullness
    newfg = get_fullness_group(zspage.inuse, cls.objs_per_zspage)
    if newfg != currfg:
        remove_zspage(cls, zspage, currfg)
        insert_zspage(cls, zspage, newfg)
        zspage.fullness = newfg  # set_zspage_mapping
    return newfg


def putback_zspage(cls: SizeClass, zspage: Zspage) -> int:
    """putback_zspage: list a zspage that is on no list (new, or isolated by compaction) by
    its fullness, and record class and group in it (set_zspage_mapping)."""
    fg = get_fullness_group(zspage.inuse, cls.objs_per_zspage)
    insert_zspage(cls, zspage, fg)
    zspage.class_idx = cls.index
    zspage.fullness = fg
    return fg


def find_get_zspage(cls: SizeClass) -> Zspage | None:
    """find_get_zspage: the head of ALMOST_FULL, else of ALMOST_EMPTY, else of EMPTY (never
    FULL); the zspage stays listed."""
    lists = cls.fullness_list
    for fg in (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY, ZS_EMPTY):
        head = lists[fg]
        first = head.next
        if first is not head:
            return cast(Zspage, first)  # a node that is not the head is a zspage
    return None
