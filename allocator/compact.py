"""Compaction of the zsmalloc port: __zs_compact / zs_compact / zs_can_compact and the shrinker
count (Linux 5.17 after "replace per zpage lock with pool->migrate_lock"; docs/zsmalloc.md,
"Compaction and the shrinker").

Per class, objects move from source zspages (ALMOST_EMPTY first, then ALMOST_FULL) into
destination zspages (ALMOST_FULL first, then ALMOST_EMPTY) until the source is drained (it is
then freed, possibly deferred) or the destination is full (the next destination is taken).
The whole class pass runs under write(migrate_lock) -> class.lock, dropping both between
source zspages (the kernel's cond_resched point), and stops early when another thread is
queued on migrate_lock after a destination fills up (rwlock_is_contended).

This module owns that algorithm and the "how much could it free" counts (zs_can_compact,
zs_shrinker_count).  The list and slot operations it uses are the readable ones of
`allocator.fullness` and `allocator.zspage_ops`; it imports the pool only for type checking.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from .fullness import SizeClass, putback_zspage, remove_zspage
from .handles import HANDLE_SHIFT
from .sizeclass import (
    OBJ_ALLOCATED,
    OBJ_ALLOCATED_TAG,
    OBJ_USED,
    ZS_ALMOST_EMPTY,
    ZS_ALMOST_FULL,
    ZS_EMPTY,
)
from .zspage import Zspage, obj_to_location
from .zspage_ops import free_zspage, get_next_page, obj_free, obj_malloc

if TYPE_CHECKING:
    from .pool import Pool


def zs_can_compact(cls: SizeClass) -> int:
    """Pages a perfect compaction of this class would free (read without a lock)."""
    a = cls.stats[OBJ_ALLOCATED]
    u = cls.stats[OBJ_USED]
    if a <= u:
        return 0
    return ((a - u) // cls.objs_per_zspage) * cls.pages_per_zspage


def zs_shrinker_count(pool: Pool) -> int:
    """zs_shrinker_count: Σ zs_can_compact over the canonical classes, lock-free."""
    return sum(zs_can_compact(cls) for cls in pool.classes)


def isolate_zspage(cls: SizeClass, source: bool) -> Zspage | None:
    """isolate_zspage: take the first zspage of the first non-empty list in source or
    destination order off its list (remove_zspage), or None.  EMPTY and FULL zspages are
    never chosen."""
    order = (ZS_ALMOST_EMPTY, ZS_ALMOST_FULL) if source else (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY)
    for fg in order:
        head = cls.fullness_list[fg]
        node = head.next
        if node is not head:
            zspage = cast(Zspage, node)  # a node that is not the head is a zspage
            remove_zspage(cls, zspage, fg)
            return zspage
    return None


class CompactControl:
    """struct zs_compact_control: where the scan of the source stopped."""

    __slots__ = ("s_page", "d_page", "obj_idx")

    def __init__(self) -> None:
        self.s_page = -1
        self.d_page = -1
        self.obj_idx = 0


def _find_alloced_obj(
    pool: Pool, cls: SizeClass, zspage: Zspage, pfn: int, obj_idx: int
) -> tuple[int, int]:
    """find_alloced_obj: scan the objects that *start* in frame `pfn`, from the per-page
    index `obj_idx` (counted from first_obj_offset; docs/zsmalloc.md, edge case "Two object
    indices"), for an allocated one.
    Returns (handle or 0, index where the scan stopped)."""
    ps = pool.page_size
    size = cls.size
    mem = pool.memory
    offset = mem.page_type[pfn] + size * obj_idx
    words = mem.words
    wbase = pfn << (pool.page_shift - 3)
    huge = zspage.huge
    while offset < ps:
        word = mem.index[pfn] if huge else words[wbase + (offset >> 3)]
        if word & OBJ_ALLOCATED_TAG:
            return word & ~OBJ_ALLOCATED_TAG, obj_idx
        offset += size
        obj_idx += 1
    return 0, obj_idx


def _object_copy(pool: Pool, size: int, dst_obj: int, src_obj: int) -> None:
    """zs_object_copy: copy class->size bytes (header included) across page breaks."""
    data = _read_raw(pool, size, src_obj)
    _write_raw(pool, size, dst_obj, data)


def _locate(pool: Pool, size: int, obj: int) -> tuple[int, int]:
    """(pfn, byte offset in that frame) of the object `obj` names."""
    pfn, idx = obj_to_location(obj, pool.obj_index_bits)
    return pfn, (size * idx) & pool.page_mask


def _read_raw(pool: Pool, size: int, obj: int) -> bytes:
    pfn, off = _locate(pool, size, obj)
    ps = pool.page_size
    base = pfn << pool.page_shift
    mem = pool.memory
    arena = mem.arena
    if off + size <= ps:
        return arena[base + off : base + off + size].tobytes()
    nb = mem.index[pfn] << pool.page_shift
    return arena[base + off : base + ps].tobytes() + arena[nb : nb + size - (ps - off)].tobytes()


def _write_raw(pool: Pool, size: int, obj: int, data: bytes) -> None:
    pfn, off = _locate(pool, size, obj)
    ps = pool.page_size
    base = pfn << pool.page_shift
    mem = pool.memory
    arena = mem.arena
    if off + size <= ps:
        arena[base + off : base + off + size] = data
        return
    s0 = ps - off
    nb = mem.index[pfn] << pool.page_shift
    arena[base + off : base + ps] = data[:s0]
    arena[nb : nb + size - s0] = data[s0:]


def migrate_zspage(
    pool: Pool, cls: SizeClass, src: Zspage, dst: Zspage, cc: CompactControl
) -> bool:
    """migrate_zspage: move objects from cc.s_page onwards into dst.

    Returns True when the source is exhausted (ret 0), False when dst filled up (-ENOMEM).
    The header of each copied object is handle|1 already, so obj_malloc rewriting it with
    the same value is what the kernel does too."""
    s_page = cc.s_page
    obj_idx = cc.obj_idx
    size = cls.size
    cells = pool.handles.cells
    mem = pool.memory
    drained = True
    while True:
        handle, obj_idx = _find_alloced_obj(pool, cls, src, s_page, obj_idx)
        if not handle:
            s_page = get_next_page(mem, src, s_page)
            if s_page == -1:
                break
            obj_idx = 0
            continue
        if dst.inuse == cls.objs_per_zspage:  # zspage_full(class, dst)
            drained = False
            break
        used_obj = cells[handle >> HANDLE_SHIFT]
        free_obj = obj_malloc(pool, dst, handle)
        _object_copy(pool, size, free_obj, used_obj)
        obj_idx += 1
        cells[handle >> HANDLE_SHIFT] = free_obj  # record_obj
        obj_free(pool, size, used_obj)
    cc.s_page = s_page
    cc.obj_idx = obj_idx
    return drained


def zs_compact_class(pool: Pool, cls: SizeClass) -> int:
    """__zs_compact: pages freed in this class (a deferred free counts too: docs/zsmalloc.md,
    edge case "pages_compacted counts deferred frees")."""
    pages_freed = 0
    dst = None
    src = None
    ml = pool.migrate_lock
    lock = cls.lock
    cc = CompactControl()
    ml.write_lock()
    lock.acquire()
    try:
        while True:
            src = isolate_zspage(cls, True)
            if src is None:
                break
            src.lock.write_lock()  # migrate_write_lock(src)
            if not zs_can_compact(cls):
                break  # src stays isolated; put back below
            cc.obj_idx = 0
            cc.s_page = src.first_page
            while True:
                dst = isolate_zspage(cls, False)
                if dst is None:
                    break
                dst.lock.write_lock_nested()  # migrate_write_lock_nested(dst)
                cc.d_page = dst.first_page
                if migrate_zspage(pool, cls, src, dst, cc):
                    break  # src drained; keep dst
                putback_zspage(cls, dst)  # dst full
                dst.lock.write_unlock()
                dst = None
                if ml.is_contended():
                    break
            if dst is None:
                break  # no destination or contention
            putback_zspage(cls, dst)
            dst.lock.write_unlock()
            dst = None
            if putback_zspage(cls, src) == ZS_EMPTY:
                src.lock.write_unlock()
                free_zspage(pool, cls, src)  # may be deferred
                pages_freed += cls.pages_per_zspage
            else:
                src.lock.write_unlock()
            src = None
            lock.release()
            ml.write_unlock()
            time.sleep(0)  # cond_resched()
            ml.write_lock()
            lock.acquire()
        if src is not None:
            putback_zspage(cls, src)
            src.lock.write_unlock()
            src = None
    finally:
        lock.release()
        ml.write_unlock()
    return pages_freed


def zs_compact(pool: Pool) -> int:
    """zs_compact: every canonical class, largest first; adds to stats.pages_compacted."""
    pages_freed = 0
    for cls in reversed(pool.classes):
        pages_freed += zs_compact_class(pool, cls)
    pool.stats.add_pages_compacted(pages_freed)
    return pages_freed
