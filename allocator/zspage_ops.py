"""What zsmalloc does to one zspage: its object slots, its page chain, its birth and its death.

This module owns the zspage-level primitives of mm/zsmalloc.c (5.17) that the pool, compaction
(`allocator.compact`) and page migration (`allocator.migrate`) all build on, under the kernel's
names:

* object slots: ``obj_malloc`` (pop the freelist head, write the header) and ``obj_free``
  (push the slot back, LIFO);
* the page chain: ``create_page_chain``, ``replace_sub_page``, ``get_next_page``,
  ``reset_page``, ``set_zspage_movable``;
* the life cycle: ``alloc_zspage``; ``free_zspage`` (trylocks the pages, else defers),
  the pool's "zspage" cache the structs come from and go back to (``ZspageCache``),
  ``__free_zspage`` (here ``free_zspage_pages``), ``trylock_zspage``, ``lock_zspage`` and the
  body of the deferred free, ``async_free_zspage``;
* ``handle_to_zspage`` and ``resolve_and_pin``: handle -> obj -> zspage, the latter under
  read(migrate_lock), leaving the zspage read-locked (the first half of zs_map_object).

These are the readable reference implementations.  zs_malloc, zs_free, zs_map_object and the
pool's read/write paths run hand-inlined copies of ``obj_malloc``, ``obj_free`` and
``resolve_and_pin``; ``tests/test_pool_reference.py`` checks that the copies agree with them.

The functions take the pool as a `Pool` (``allocator.pool``), imported for type checking only,
as ``compact`` and ``migrate`` do: at run time this module imports nothing above it, and the
compiled build reads a native `Pool`'s fields and calls its methods directly, where a Protocol's
went through a generic attribute look-up each (a zspage's birth and death read a dozen; a
huge object's malloc + write + free, a zspage born and freed each time, 5.2 -> 4.9 µs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from . import locks as _locks
from .fullness import SizeClass, remove_zspage
from .mm_types import INDEX_NONE, PG_PRIVATE, OutOfMemory
from .sizeclass import OBJ_ALLOCATED, OBJ_ALLOCATED_TAG, OBJ_TAG_BITS, ZS_EMPTY
from .zspage import (
    FREEOBJ_MASK,
    Zspage,
    init_zspage,
    list_del_init,
    location_to_obj,
    obj_to_location,
)

if TYPE_CHECKING:
    from .memory import PhysicalMemory
    from .pool import Pool

__all__ = [
    "obj_malloc",
    "obj_free",
    "create_page_chain",
    "replace_sub_page",
    "get_next_page",
    "reset_page",
    "set_zspage_movable",
    "ZspageCache",
    "alloc_zspage",
    "trylock_zspage",
    "lock_zspage",
    "free_zspage_pages",
    "free_zspage",
    "async_free_zspage",
    "handle_to_zspage",
    "resolve_and_pin",
]

log = logging.getLogger("allocator.zsmalloc")


# ------------------------------------------------------------------------- object slots


def obj_malloc(pool: Pool, zspage: Zspage, handle: int) -> int:
    """obj_malloc: pop the freelist head, write handle|OBJ_ALLOCATED_TAG in its header (a huge
    zspage keeps it in page->index instead); returns the obj.  Caller holds class->lock."""
    # For a fresh zspage class_idx is still 0 here; the lookup gives class 0, which is
    # harmless because freeobj == 0 makes the offset 0 for any size.  Kept as in 5.17
    # (docs/zsmalloc.md, edge case "obj_malloc on a fresh zspage reads class 0").
    cls = pool.size_class[zspage.class_idx]
    mem = pool.memory
    words = mem.words
    obj = zspage.freeobj
    offset = obj * cls.size
    pfn = zspage.pages[offset >> pool.page_shift]
    wi = (pfn << (pool.page_shift - 3)) + ((offset & pool.page_mask) >> 3)
    zspage.freeobj = (words[wi] >> OBJ_TAG_BITS) & FREEOBJ_MASK  # get_freeobj of the link
    if not zspage.huge:
        words[wi] = handle | OBJ_ALLOCATED_TAG
    else:
        mem.index[zspage.first_page] = handle | OBJ_ALLOCATED_TAG
    zspage.inuse += 1
    return location_to_obj(pfn, obj, pool.obj_index_bits)


def obj_free(pool: Pool, class_size: int, obj: int) -> Zspage:
    """obj_free: push the slot on its zspage's freelist (LIFO); returns that zspage.  Caller
    holds class->lock."""
    pfn, idx = obj_to_location(obj, pool.obj_index_bits)
    mem = pool.memory
    zspage = mem.private[pfn]
    if not zspage.huge:
        # get_freeobj() is an unsigned int, so the shift truncates to 32 bits (matters
        # only for the end marker a FULL zspage's freeobj holds)
        offset = (class_size * idx) & pool.page_mask
        mem.words[(pfn << (pool.page_shift - 3)) + (offset >> 3)] = (
            zspage.freeobj << OBJ_TAG_BITS
        ) & FREEOBJ_MASK
    else:
        mem.index[pfn] = 0
    zspage.freeobj = idx
    zspage.inuse -= 1
    return zspage


# ------------------------------------------------------------------------- the page chain


def create_page_chain(
    mem: PhysicalMemory, cls: SizeClass, zspage: Zspage, pages: list[int]
) -> None:
    """create_page_chain: private = zspage on every subpage, PG_private on the first,
    page->index links the chain.  The kernel zeroes page->index (NULL) first; in this
    port "no next page" is INDEX_NONE (PFN 0 exists), while a huge page's index is the
    handle field, whose empty value is 0.  The zspage keeps `pages` itself (its callers
    build a fresh list)."""
    private = mem.private
    index = mem.index
    huge = cls.huge
    prev = -1
    for i, pfn in enumerate(pages):
        private[pfn] = zspage
        index[pfn] = 0 if huge else INDEX_NONE
        if i == 0:
            zspage.first_page = pfn
            mem.set_page_flag(pfn, PG_PRIVATE)
            if huge:
                zspage.huge = True
        else:
            if mem.flags[pfn] & PG_PRIVATE:
                mem.clear_page_flag(pfn, PG_PRIVATE)
            index[prev] = pfn
        prev = pfn
    zspage.pages = pages


def replace_sub_page(pool: Pool, cls: SizeClass, zspage: Zspage, new: int, old: int) -> None:
    """replace_sub_page: rebuild the chain with frame `new` in place of `old`, carrying
    first_obj_offset and, for a huge zspage, the handle in page->index; `new` becomes movable."""
    mem = pool.memory
    create_page_chain(mem, cls, zspage, [new if p == old else p for p in zspage.pages])
    mem.page_type[new] = mem.page_type[old]
    if zspage.huge:
        mem.index[new] = mem.index[old]
    mem.set_movable(new, pool)


def get_next_page(mem: PhysicalMemory, zspage: Zspage, pfn: int) -> int:
    """get_next_page: the next subpage, or -1 after the last (a huge page has none)."""
    if zspage.huge:
        return -1
    return mem.index[pfn]


def reset_page(mem: PhysicalMemory, pfn: int) -> None:
    """reset_page: the frame stops being a zsmalloc page (not movable, no private, no chain)."""
    mem.clear_movable(pfn)
    mem.clear_page_flag(pfn, PG_PRIVATE)
    mem.private[pfn] = None
    mem.index[pfn] = INDEX_NONE


def set_zspage_movable(pool: Pool, zspage: Zspage) -> None:
    """SetZsPageMovable: under class->lock, trylock each subpage and register it."""
    mem = pool.memory
    for pfn in zspage.pages:
        if not mem.trylock_page(pfn):
            log.warning("SetZsPageMovable: trylock_page(%d) failed", pfn)
            mem.set_movable(pfn, pool)
            continue
        mem.set_movable(pfn, pool)
        mem.unlock_page(pfn)


# ------------------------------------------------------------------------- life cycle

#: freed struct zspages a pool keeps for reuse (`ZspageCache`)
ZSPAGE_CACHE_MAX: Final = 256


class ZspageCache:
    """A pool's "zspage" kmem_cache (create_cache in zs_create_pool): where alloc_zspage
    gets its struct zspage (cache_alloc_zspage) and __free_zspage puts it back
    (cache_free_zspage).

    A freed `Zspage` keeps its object and its rwlock for a later alloc_zspage, which zeroes
    its fields again (kmem_cache_zalloc), up to ZSPAGE_CACHE_MAX of them, as a slab keeps
    freed objects for the next allocation.  Why: building and tearing down a `Zspage` with
    its `RWLock` was a tenth of storing an incompressible page, whose one-page zspage is
    born and freed on every overwrite (docs/performance.md, "The zspage life cycle").

    A struct goes back only while its lock is idle (not held, nobody queued).  The kernel's
    free path makes it so: __free_zspage runs with class->lock and every page lock held and
    no object left, so no mapper, migration or compaction can hold or wait for the zspage
    lock; one that is not idle is left to the garbage collector.  ``_free`` is shared by the
    classes without a lock: ``pop`` and ``append`` are single list operations, thread-safe
    under the GIL and in free-threaded CPython, as the handle cache's free cells are.
    """

    __slots__ = ("_free",)

    def __init__(self) -> None:
        self._free: list[Zspage] = []

    def __len__(self) -> int:
        return len(self._free)

    def alloc(self) -> Zspage:
        """cache_alloc_zspage: a zeroed struct zspage, reused when one is cached."""
        try:
            zspage = self._free.pop()
        except IndexError:
            return Zspage(_locks.RWLock(_locks.ZSPAGE_LOCK))
        zspage.zero()
        return zspage

    def free(self, zspage: Zspage) -> None:
        """cache_free_zspage: keep the struct for reuse if there is room and its lock is idle."""
        lock = zspage.lock
        if len(self._free) < ZSPAGE_CACHE_MAX and not lock.is_locked() and not lock.is_contended():
            self._free.append(zspage)

    def clear(self) -> None:
        """Drop every cached struct (zs_destroy_pool's kmem_cache_destroy)."""
        self._free.clear()


def alloc_zspage(pool: Pool, cls: SizeClass) -> Zspage:
    """alloc_zspage: a zeroed zspage, its frames, the chain and the freelist (no lock held;
    all frames are given back if one allocation fails)."""
    zspage = pool.zspage_cache.alloc()
    pages: list[int] = []
    mem = pool.memory
    try:
        for _ in range(cls.pages_per_zspage):
            # alloc_page + inc_zone_page_state(NR_ZSPAGES), in one critical section
            pages.append(mem.alloc_page(zspage=True))
    except OutOfMemory:
        for pfn in pages:
            mem.free_page(pfn, zspage=True)
        pool.zspage_cache.free(zspage)
        raise
    create_page_chain(mem, cls, zspage, pages)
    init_zspage(mem.words, mem.page_type, cls.size, pages, pool.page_shift)
    zspage.freeobj = 0
    pool.track_zspage(zspage)
    return zspage


def trylock_zspage(mem: PhysicalMemory, zspage: Zspage) -> bool:
    """trylock_zspage: every page lock of the chain, or none."""
    locked: list[int] = []
    pfn = zspage.first_page
    while pfn != -1:
        if not mem.trylock_page(pfn):
            for p in reversed(locked):
                mem.unlock_page(p)
            return False
        locked.append(pfn)
        pfn = get_next_page(mem, zspage, pfn)
    return True


def lock_zspage(mem: PhysicalMemory, zspage: Zspage) -> None:
    """lock_zspage with the 2022 race fix (Sultan Alsawaf, "Fix races between
    asynchronous zspage free and page migration"; docs/zsmalloc.md, "Async free made safe
    against migration" and edge case "Async free racing with migration").

    5.17 walked the chain with sleeping lock_page and no zspage lock, so a concurrent
    migration could swap a subpage under it.  The fixed version only *tries* each page
    lock under the zspage read lock (migration needs the write lock to change the
    chain); when a page is busy it drops the zspage lock, waits for that page to be
    unlocked, and retries from where it was."""
    lock = zspage.lock
    while True:
        lock.read_lock()
        pfn = zspage.first_page
        if mem.trylock_page(pfn):
            break
        lock.read_unlock()
        mem.wait_on_page_locked(pfn)
    curr = pfn
    while True:
        pfn = get_next_page(mem, zspage, curr)
        if pfn == -1:
            break
        if mem.trylock_page(pfn):
            curr = pfn
        else:
            lock.read_unlock()
            mem.wait_on_page_locked(pfn)
            lock.read_lock()
    lock.read_unlock()


def free_zspage_pages(pool: Pool, cls: SizeClass, zspage: Zspage) -> None:
    """__free_zspage: caller holds class->lock and every page lock of the zspage."""
    assert zspage.inuse == 0 and zspage.fullness == ZS_EMPTY, zspage
    mem = pool.memory
    pfn = zspage.first_page
    while pfn != -1:
        nxt = get_next_page(mem, zspage, pfn)  # taken before reset_page
        reset_page(mem, pfn)
        mem.unlock_page(pfn)
        mem.free_page(pfn, zspage=True)  # with dec_zone_page_state(NR_ZSPAGES)
        pfn = nxt
    zspage.magic = 0
    pool.untrack_zspage(zspage)
    cls.stats[OBJ_ALLOCATED] -= cls.objs_per_zspage
    pool.add_pages(-cls.pages_per_zspage)
    pool.zspage_cache.free(zspage)  # cache_free_zspage: the struct may be handed out again


def free_zspage(pool: Pool, cls: SizeClass, zspage: Zspage) -> None:
    """free_zspage: may not sleep (zs_free runs under class->lock), so it only trylocks the
    page locks; on failure the EMPTY zspage stays listed and the async worker frees it."""
    assert zspage.inuse == 0
    assert zspage.on_list()
    if not trylock_zspage(pool.memory, zspage):
        pool.kick_deferred_free()
        return
    remove_zspage(cls, zspage, ZS_EMPTY)
    free_zspage_pages(pool, cls, zspage)


def async_free_zspage(pool: Pool) -> None:
    """async_free_zspage (the body of pool->free_work): splice every class's EMPTY list,
    lock each zspage's pages (sleeping, no zsmalloc lock held), then free it under
    class->lock."""
    free_pages: list[Zspage] = []
    for cls in pool.classes:
        with cls.lock:
            head = cls.fullness_list[ZS_EMPTY]
            for zspage in list(head):
                # list_splice_init: the zspages leave the class list, but 5.17 does not
                # decrement stats[CLASS_EMPTY] for them (fixed in later kernels; docs/zsmalloc.md,
                # edge case "Deferred free when a page lock is busy").
                list_del_init(zspage)
                free_pages.append(zspage)
    mem = pool.memory
    for zspage in free_pages:
        lock_zspage(mem, zspage)
        cls = pool.size_class[zspage.class_idx]
        assert zspage.fullness == ZS_EMPTY
        with cls.lock:
            cls.deferred_freed += 1
            free_zspage_pages(pool, cls, zspage)


# ------------------------------------------------------------------------- handle -> zspage


def handle_to_zspage(pool: Pool, handle: int) -> tuple[int, Zspage]:
    """handle_to_obj (checked) -> obj_to_page -> get_zspage: (obj, zspage) of a live handle.
    The caller holds migrate_lock, or the zspage could move under the answer."""
    obj = pool.handles.checked_obj(handle)
    pfn, _ = obj_to_location(obj, pool.obj_index_bits)
    return obj, pool.memory.private[pfn]


def resolve_and_pin(pool: Pool, handle: int) -> tuple[int, Zspage]:
    """read(migrate_lock) -> handle_to_zspage -> read(zspage->lock) -> read_unlock(migrate_lock),
    as zs_map_object begins.  Returns (obj, zspage) with the zspage read-locked: migration
    cannot move its pages until the caller unlocks it."""
    ml = pool.migrate_lock
    ml.read_lock()
    try:
        obj, zspage = handle_to_zspage(pool, handle)
        zspage.lock.read_lock()
    finally:
        ml.read_unlock()
    return obj, zspage
