"""struct zspage, the fullness lists, and the object encoding of the zsmalloc port (5.17).

This module owns:

* `Zspage`: the kernel's struct zspage (huge/fullness/class/isolated/magic bitfield, inuse,
  freeobj, first_page, the zspage rwlock) plus an intrusive doubly linked list node, so a
  zspage can sit on exactly one of its class's four fullness lists with O(1) insert/remove,
  like `struct list_head list`.  It also caches the chain of PFNs (`pages`); the
  authoritative chain is in the per-frame `index` array (page->index), and both are
  rewritten together by `create_page_chain`.
* `ListHead` and the list_add/list_del_init helpers used by insert_zspage/remove_zspage.
* The handle/obj encoding: ``obj = ((pfn << OBJ_INDEX_BITS) | obj_idx) << OBJ_TAG_BITS``
  (location_to_obj / obj_to_location), and the in-object words: a free slot's first word is
  ``next_idx << OBJ_TAG_BITS`` (end of list ``-1UL << OBJ_TAG_BITS``), an allocated
  non-huge object's first word is ``handle | OBJ_ALLOCATED_TAG``.
* `init_zspage`: the freelist layout of a fresh zspage, including the per-frame
  first_obj_offset (page->page_type) and the "phantom" tail object (docs/zsmalloc.md,
  "Zspages, page chains and the freelist" and edge case "The phantom freelist tail").

Everything that touches page contents works on the arena viewed as 64-bit words
(`words[byte_address >> 3]`): every header/link word is 8-byte aligned (ZS_ALIGN).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, cast

from .locks import RWLock
from .sizeclass import OBJ_TAG_BITS, ZS_EMPTY, ZSPAGE_MAGIC

U64_MASK: Final = (1 << 64) - 1
# -1UL << OBJ_TAG_BITS: the freelist end marker stored in the last free slot.
OBJ_END_MARKER: Final = (U64_MASK << OBJ_TAG_BITS) & U64_MASK
# struct zspage's freeobj is an unsigned int: reading the end marker truncates to this.
FREEOBJ_MASK: Final = 0xFFFFFFFF


class ListHead:
    """A `struct list_head`: the sentinel of one fullness list, and the links of a zspage.

    Links are typed ``ListHead``: a node is a sentinel or a `Zspage` (a subclass), and which
    one is the walker's knowledge (the kernel's container_of), checked by ``is not head``.
    Typed, compiled code follows and changes the links natively (docs/performance.md,
    "Compiled build")."""

    __slots__ = ("prev", "next")

    def __init__(self) -> None:
        self.prev: ListHead = self
        self.next: ListHead = self

    def empty(self) -> bool:
        return self.next is self

    def __iter__(self) -> Iterator[Zspage]:
        node = self.next
        while node is not self:
            nxt = node.next
            yield cast(Zspage, node)
            node = nxt


#: The links of a zspage on no list (see Zspage.__init__).
OFF_LIST: Final = ListHead()


class Zspage(ListHead):
    """struct zspage.  Fields mirror the kernel; `pages` caches the PFN chain."""

    __slots__ = (
        "huge",
        "fullness",
        "class_idx",
        "isolated",
        "magic",
        "inuse",
        "freeobj",
        "first_page",
        "pages",
        "lock",
    )

    huge: bool
    fullness: int
    class_idx: int
    isolated: int
    magic: int
    inuse: int
    freeobj: int
    first_page: int
    pages: list[int]

    def __init__(self, lock: RWLock) -> None:
        self.lock = lock  # the zspage rwlock (migrate_read/write_lock)
        self.zero()

    def zero(self) -> None:
        """Every field but the lock back to its first value: a new struct, or one the pool's
        zspage cache hands out again (cache_alloc_zspage, `allocator.zspage_ops.ZspageCache`)."""
        # cache_alloc_zspage uses kmem_cache_zalloc: every field starts at 0.  In particular
        # class and fullness stay 0 until zs_malloc calls set_zspage_mapping (docs/zsmalloc.md,
        # edge case "obj_malloc on a fresh zspage reads class 0").
        self.huge = False
        self.fullness = ZS_EMPTY
        self.class_idx = 0
        self.isolated = 0
        self.magic = ZSPAGE_MAGIC
        self.inuse = 0
        self.freeobj = 0
        self.first_page = -1
        self.pages = []
        # INIT_LIST_HEAD(&zspage->list): not on any list.  The shared OFF_LIST, not the
        # kernel's self-link: a self-cycle would leave every freed zspage (and its lock and
        # page list) to the cyclic garbage collector, which the daemon runs rarely
        # (zramfs.cli._tune_gc), so discarded data would keep the daemon's memory until the
        # next full collection.
        self.prev = OFF_LIST
        self.next = OFF_LIST

    def on_list(self) -> bool:
        return self.next is not OFF_LIST

    def __repr__(self) -> str:
        return (
            f"<Zspage class={self.class_idx} fg={self.fullness} inuse={self.inuse} "
            f"freeobj={self.freeobj} pages={self.pages} huge={self.huge} "
            f"isolated={self.isolated}>"
        )


def list_add(entry: Zspage, head: ListHead) -> None:
    """list_add(entry, head): insert `entry` right after `head` (a ListHead or a Zspage)."""
    nxt = head.next
    entry.prev = head
    entry.next = nxt
    nxt.prev = entry
    head.next = entry


def list_del_init(entry: Zspage) -> None:
    """list_del_init: unlink `entry`; like the kernel's, a no-op on an entry on no list."""
    prev = entry.prev
    if prev is OFF_LIST:
        return
    nxt = entry.next
    prev.next = nxt
    nxt.prev = prev
    entry.prev = entry.next = OFF_LIST


def location_to_obj(pfn: int, obj_idx: int, obj_index_bits: int) -> int:
    """location_to_obj: the obj that names object `obj_idx` of the zspage, in frame `pfn`."""
    obj = pfn << obj_index_bits
    obj |= obj_idx & ((1 << obj_index_bits) - 1)
    return obj << OBJ_TAG_BITS


def obj_to_location(obj: int, obj_index_bits: int) -> tuple[int, int]:
    """obj_to_location: (pfn, obj_idx) of an obj."""
    obj >>= OBJ_TAG_BITS
    return obj >> obj_index_bits, obj & ((1 << obj_index_bits) - 1)


def init_zspage(words, page_type, size: int, pages: list[int], page_shift: int) -> None:
    """init_zspage: link every object slot into the freelist 0 -> 1 -> 2 ... in address order.

    Mirrors the kernel loop exactly: for each subpage, record where the first object that
    starts in it lies, link every object that starts in the page to the next index, and let
    the last object that starts in the page link to the next index if there is a next page
    (that object may run into it) or carry the end marker otherwise.  One more "object" may
    start in the last page than fits: the phantom, which receives the end marker.  That
    happens whenever the zspage has tail waste (sizes and waste are multiples of 16, so the
    phantom's header word fits; docs/zsmalloc.md, edge case "The phantom freelist tail").
    """
    page_size = 1 << page_shift
    freeobj = 1
    off = 0
    wshift = page_shift - 3
    n = len(pages)
    for k, pfn in enumerate(pages):
        page_type[pfn] = off
        base = pfn << wshift
        link = off
        off += size
        while off < page_size:
            words[base + (link >> 3)] = freeobj << OBJ_TAG_BITS
            freeobj += 1
            link = off
            off += size
        if k + 1 < n:
            words[base + (link >> 3)] = freeobj << OBJ_TAG_BITS
            freeobj += 1
        else:
            words[base + (link >> 3)] = OBJ_END_MARKER
        off %= page_size
