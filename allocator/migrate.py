"""Page migration callbacks of the zsmalloc port: zs_page_isolate / zs_page_migrate /
zs_page_putback (Linux 5.17 after "replace per zpage lock with pool->migrate_lock").

The Pool registers itself with PhysicalMemory.set_movable for every frame it owns, so it is
the MovableOps the memory layer calls (Pool.isolate_page/migrate_page/putback_page delegate
here).  The memory layer holds the old frame's page lock (and the new one's) around these
calls, exactly as the kernel's migration core does.

Locking of zs_page_migrate (docs/zsmalloc.md, "Page migration callbacks" and "Locking in 5.17"):
    write(pool.migrate_lock) -> class.lock -> write(zspage.lock)
released as migrate_lock, class.lock, (isolated--), zspage.lock.
Migration never fails in 5.17 (MIGRATE_SYNC_NO_COPY is the only -EINVAL, and the memory
layer never asks for it).

This module owns those three callbacks; the chain rebuild they end with is
`allocator.zspage_ops.replace_sub_page`.  It imports the pool only for type checking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .fullness import SizeClass
from .handles import HANDLE_SHIFT
from .sizeclass import ISOLATED_BITS, OBJ_ALLOCATED_TAG, OBJ_TAG_BITS, ZSPAGE_MAGIC
from .zspage import Zspage, location_to_obj
from .zspage_ops import replace_sub_page, reset_page

if TYPE_CHECKING:
    from .pool import Pool

_ISOLATED_MAX = (1 << ISOLATED_BITS) - 1  # 5.17: 3 bits, enough for 4-page zspages
_ISOLATED_MAX_LONG_CHAIN = (1 << 5) - 1  # kernels with a configurable chain use 5 bits


def _get_zspage(pool: Pool, pfn: int) -> Zspage:
    """get_zspage of a frame that must belong to the pool."""
    zspage = pool.memory.private[pfn]
    if zspage is None or zspage.magic != ZSPAGE_MAGIC:
        raise AssertionError(f"pfn {pfn}: not a zsmalloc page ({zspage!r})")
    return zspage


def zs_page_isolate(pool: Pool, pfn: int) -> bool:
    """zs_page_isolate: always succeeds; counts the isolation under the zspage write lock.

    It checks neither inuse nor list membership, so pages of an EMPTY zspage waiting for the
    deferred free can be isolated too (the race of docs/zsmalloc.md, edge case "Async free
    racing with migration")."""
    zspage = _get_zspage(pool, pfn)
    lock = zspage.lock
    lock.write_lock()
    try:
        # isolated is a 3-bit field in struct zspage (5 bits once chains grew past 4 pages)
        limit = _ISOLATED_MAX if pool.table.chain_size <= 4 else _ISOLATED_MAX_LONG_CHAIN
        assert zspage.isolated < limit, "zspage->isolated overflow"
        zspage.isolated += 1
    finally:
        lock.write_unlock()
    return True


def _dec_zspage_isolation(zspage: Zspage) -> None:
    assert zspage.isolated > 0, "dec_zspage_isolation with isolated == 0"
    zspage.isolated -= 1


def zs_page_putback(pool: Pool, pfn: int) -> None:
    """zs_page_putback: undo the isolation count; no list moves, no deferred free."""
    zspage = _get_zspage(pool, pfn)
    lock = zspage.lock
    lock.write_lock()
    try:
        _dec_zspage_isolation(zspage)
    finally:
        lock.write_unlock()


def zs_page_migrate(pool: Pool, old: int, new: int) -> bool:
    """zs_page_migrate: move frame `old` of a zspage to frame `new`.

    Copies the whole frame (links, headers and phantom included), rewrites the handle cell of
    every allocated object that *starts* in the frame (an object that starts in the previous
    subpage keeps its obj, which names that page), rebuilds the chain with the new frame
    (first_page changes when subpage 0 moved), carries first_obj_offset and, for a huge
    zspage, the handle kept in page->index.  Handle values never change.

    Whatever raises after ``migrate_lock`` is taken, every lock taken is released: a
    write-held migrate_lock would stop every map and free of the pool.  The isolation count
    is dropped only by a migration that completed; after a failure the memory layer puts the
    page back (zs_page_putback drops it then)."""
    mem = pool.memory
    ml = pool.migrate_lock
    ml.write_lock()
    class_lock = zspage_lock = None
    moved = False
    try:
        zspage = _get_zspage(pool, old)
        cls = pool.size_class[zspage.class_idx]
        class_lock = cls.lock
        class_lock.acquire()
        zspage_lock = zspage.lock
        zspage_lock.write_lock()
        _move_page(pool, cls, zspage, old, new)
        moved = True
    finally:
        # The kernel's release order: migrate_lock first (every reader of the pool waits on
        # it), then class->lock, then the isolation count, then the zspage lock.
        ml.write_unlock()
        if class_lock is not None:
            class_lock.release()
        if moved:
            _dec_zspage_isolation(zspage)
        if zspage_lock is not None:
            zspage_lock.write_unlock()
    # After every lock is dropped: reset_page(page) on the old frame; the memory layer frees
    # it (the kernel's put_page).  NR_ZSPAGES does not change (one zone here).
    reset_page(mem, old)
    return True


def _move_page(pool: Pool, cls: SizeClass, zspage: Zspage, old: int, new: int) -> None:
    """The body of zs_page_migrate, under all three locks: copy the frame, re-point the
    handles of the objects that start in it, relink the chain (replace_sub_page)."""
    ps = pool.page_size
    shift = pool.page_shift
    mem = pool.memory
    arena = mem.arena
    ob = old << shift
    nb = new << shift
    arena[nb : nb + ps] = arena[ob : ob + ps]

    size = cls.size
    cells = pool.handles.cells
    words = mem.words
    oib = pool.obj_index_bits
    mask = pool.obj_index_mask
    wbase = old << (shift - 3)
    addr = mem.page_type[old]  # first_obj_offset
    while addr < ps:
        # obj_allocated(): the huge handle lives in page->index, others in the header
        if zspage.huge:
            assert old == zspage.first_page
            word = mem.index[old]
        else:
            word = words[wbase + (addr >> 3)]
        if word & OBJ_ALLOCATED_TAG:
            hidx = (word & ~OBJ_ALLOCATED_TAG) >> HANDLE_SHIFT
            obj_idx = (cells[hidx] >> OBJ_TAG_BITS) & mask
            cells[hidx] = location_to_obj(new, obj_idx, oib)  # record_obj
        addr += size

    replace_sub_page(pool, cls, zspage, new, old)
