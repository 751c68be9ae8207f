"""Statistics and debug walks of the zsmalloc port.

This module owns everything that only *reads* a pool to show or check it:

* ``classes_table``: the debugfs `classes` file (zs_stats_size_show; docs/zsmalloc.md,
  "Statistics and the debugfs classes file") byte for byte;
* the debug walks of one zspage or object: ``obj_location``, ``read_word``,
  ``zspage_objects``, ``freelist``, ``dump_zspage``;
* ``check_invariants``: the consistency walk over a quiescent pool used by the tests (list
  membership, accounting, tag bits: the edge cases of docs/zsmalloc.md named below).

Also ``PoolStats``, struct zs_pool_stats (pages_compacted), which the pool updates and
the device reads for mm_stat.

`Pool` keeps thin methods for the ones its users call (``classes_table``, ``obj_location``,
``check_invariants``); the others are called as functions of this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .compact import zs_can_compact
from .handles import HANDLE_SHIFT
from .sizeclass import (
    CLASS_ALMOST_EMPTY,
    CLASS_ALMOST_FULL,
    NR_ZS_FULLNESS,
    OBJ_ALLOCATED,
    OBJ_ALLOCATED_TAG,
    OBJ_TAG_BITS,
    OBJ_USED,
    ZS_EMPTY,
    ZSPAGE_MAGIC,
    get_fullness_group,
)
from .zspage import OBJ_END_MARKER, Zspage, location_to_obj, obj_to_location
from .zspage_ops import handle_to_zspage

if TYPE_CHECKING:
    from .locks import PlainLock
    from .pool import Pool


class PoolStats:
    """struct zs_pool_stats."""

    __slots__ = ("pages_compacted", "_lock")

    def __init__(self, lock: PlainLock) -> None:
        self.pages_compacted = 0
        self._lock = lock  # the pool's pages_allocated leaf lock

    def add_pages_compacted(self, n: int) -> None:
        """atomic_long_add(n, &pool->stats.pages_compacted)."""
        with self._lock:
            self.pages_compacted += n


#: zs_stats_size_show()'s columns, in order (the debugfs "classes" table)
CLASS_COLUMNS: Final = (
    "class",
    "size",
    "almost_full",
    "almost_empty",
    "obj_allocated",
    "obj_used",
    "pages_used",
    "pages_per_zspage",
    "freeable",
)
_HEADER = " %5s %5s %11s %12s %13s %10s %10s %16s %8s\n" % CLASS_COLUMNS


def classes_table(pool: Pool) -> str:
    """zs_stats_size_show: one row per canonical class, a blank line, the totals."""
    out = [_HEADER]
    tot_af = tot_ae = tot_objs = tot_used = tot_pages = tot_freeable = 0
    for cls in pool.classes:
        with cls.lock:
            almost_full = cls.stats[CLASS_ALMOST_FULL]
            almost_empty = cls.stats[CLASS_ALMOST_EMPTY]
            obj_allocated = cls.stats[OBJ_ALLOCATED]
            obj_used = cls.stats[OBJ_USED]
            freeable = zs_can_compact(cls)
        objs_per_zspage = cls.objs_per_zspage
        pages_used = obj_allocated // objs_per_zspage * cls.pages_per_zspage
        out.append(
            " %5u %5u %11u %12u %13u %10u %10u %16d %8u\n"
            % (
                cls.index,
                cls.size,
                almost_full,
                almost_empty,
                obj_allocated,
                obj_used,
                pages_used,
                cls.pages_per_zspage,
                freeable,
            )
        )
        tot_af += almost_full
        tot_ae += almost_empty
        tot_objs += obj_allocated
        tot_used += obj_used
        tot_pages += pages_used
        tot_freeable += freeable
    out.append("\n")
    out.append(
        " %5s %5s %11u %12u %13u %10u %10u %16s %8u\n"
        % ("Total", "", tot_af, tot_ae, tot_objs, tot_used, tot_pages, "", tot_freeable)
    )
    return "".join(out)


# ------------------------------------------------------------------------- debug walks


def obj_location(pool: Pool, handle: int) -> tuple[int, int, int]:
    """(pfn, obj_idx, offset in that frame) of a live handle's object."""
    obj, zspage = handle_to_zspage(pool, handle)
    pfn, idx = obj_to_location(obj, pool.obj_index_bits)
    return pfn, idx, (pool.size_class[zspage.class_idx].size * idx) & pool.page_mask


def read_word(pool: Pool, pfn: int, offset: int) -> int:
    """The 64-bit word at byte `offset` (8-byte aligned) of frame `pfn`."""
    return pool.memory.words[(pfn << (pool.page_shift - 3)) + (offset >> 3)]


def zspage_objects(pool: Pool, zspage: Zspage) -> list[tuple[int, int, int, int]]:
    """Every object start (phantom included) as (obj_idx, pfn, offset, first word or
    huge page->index)."""
    cls = pool.size_class[zspage.class_idx]
    mem = pool.memory
    out = []
    idx = 0
    for pfn in zspage.pages:
        off = mem.page_type[pfn]
        while off < pool.page_size:
            word = mem.index[pfn] if zspage.huge else read_word(pool, pfn, off)
            out.append((idx, pfn, off, word))
            idx += 1
            off += cls.size
    return out


def freelist(pool: Pool, zspage: Zspage) -> list[int]:
    """The free object indices, following the links from freeobj.

    The list is walked for exactly objs_per_zspage - inuse entries: its tail is not
    always the end marker, because a slot freed while the zspage was FULL links to the
    truncated marker (freeobj is an unsigned int: 0xFFFFFFFF << 1 -> 0xFFFFFFFE)."""
    cls = pool.size_class[zspage.class_idx]
    if zspage.huge:
        return [0] if zspage.inuse == 0 else []
    out: list[int] = []
    idx = zspage.freeobj
    for _ in range(cls.objs_per_zspage - zspage.inuse):
        if idx >= cls.objs_per_zspage:
            raise AssertionError(f"freelist reaches index {idx} in {zspage} after {out}")
        out.append(idx)
        offset = idx * cls.size
        word = read_word(pool, zspage.pages[offset >> pool.page_shift], offset & pool.page_mask)
        if word & OBJ_ALLOCATED_TAG:
            raise AssertionError(f"freelist reaches allocated object {idx} in {zspage}")
        idx = word >> OBJ_TAG_BITS
    return out


def dump_zspage(pool: Pool, zspage: Zspage) -> str:
    """A zspage and each of its object slots (handle, freelist link or end), for a human."""
    lines = [repr(zspage)]
    for idx, pfn, off, word in zspage_objects(pool, zspage):
        state = (
            f"handle {word & ~OBJ_ALLOCATED_TAG:#x}"
            if word & OBJ_ALLOCATED_TAG
            else ("end" if word == OBJ_END_MARKER else f"next {word >> OBJ_TAG_BITS}")
        )
        lines.append(f"  obj {idx:4d} pfn {pfn} off {off:5d}: {state}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- invariants


def check_invariants(pool: Pool) -> None:
    """Walk every class, list and live zspage of a quiescent pool and check:

    * list membership ("List order and where zs_malloc looks"): each listed zspage is on the
      list its `fullness` names and that equals get_fullness_group(inuse); insert order is not
      checked (it is history-dependent);
    * accounting ("Accounting invariants"): stats[CLASS_*] == list lengths (+ zspages the
      async worker freed, whose CLASS_EMPTY count 5.17 leaks), OBJ_ALLOCATED == live zspages
      * N, OBJ_USED == Σ inuse, Σ pages == pages_allocated, inuse == allocated headers,
      freelist length;
    * tag bits ("Tag bits in handles, headers and free slots"): every allocated header is
      handle|1 and that handle's cell points back to the object; every live handle cell
      decodes to such an object.

    The quoted names are edge cases in docs/zsmalloc.md.
    """
    zspages = pool.zspages()
    live_by_class: dict[int, list] = {}
    for z in zspages:
        assert z.magic == ZSPAGE_MAGIC, f"bad magic {z!r}"
        live_by_class.setdefault(z.class_idx, []).append(z)
    total_pages = 0
    seen_handles: set[int] = set()
    cells = pool.handles.cells
    private = pool.memory.private
    index = pool.memory.index
    for cls in pool.classes:
        listed = []
        for fg in range(NR_ZS_FULLNESS):
            n = 0
            for z in cls.fullness_list[fg]:
                assert z.fullness == fg, f"class {cls.index}: {z!r} on list {fg}"
                assert z.class_idx == cls.index, f"class {cls.index}: foreign zspage {z!r}"
                assert get_fullness_group(z.inuse, cls.objs_per_zspage) == fg, (
                    f"class {cls.index}: {z!r} on the wrong list {fg}"
                )
                listed.append(z)
                n += 1
            expect = n + (cls.deferred_freed if fg == ZS_EMPTY else 0)
            assert cls.stats[fg] == expect, (
                f"class {cls.index}: stats[{fg}]={cls.stats[fg]} but {n} listed "
                f"(+{cls.deferred_freed} deferred)"
            )
        live = live_by_class.get(cls.index, [])
        assert {id(z) for z in listed} <= {id(z) for z in live}, "listed zspage not live"
        assert len(listed) == len(live), (
            f"class {cls.index}: {len(live)} live zspages but {len(listed)} listed "
            "(pool not quiescent?)"
        )
        assert cls.stats[OBJ_ALLOCATED] == len(live) * cls.objs_per_zspage, (
            f"class {cls.index}: OBJ_ALLOCATED {cls.stats[OBJ_ALLOCATED]} != "
            f"{len(live)} zspages * {cls.objs_per_zspage}"
        )
        used = 0
        for z in live:
            assert len(z.pages) == cls.pages_per_zspage, z
            assert z.first_page == z.pages[0], z
            assert z.isolated == 0, f"{z!r} still isolated"
            total_pages += len(z.pages)
            # chain in page->index and page->private
            for k, pfn in enumerate(z.pages):
                assert private[pfn] is z, f"pfn {pfn}: private is not {z!r}"
                if not z.huge:
                    nxt = index[pfn]
                    want = z.pages[k + 1] if k + 1 < len(z.pages) else -1
                    assert nxt == want, f"pfn {pfn}: index {nxt} != next page {want}"
            allocated = 0
            for idx, pfn, _off, word in zspage_objects(pool, z):
                if idx >= cls.objs_per_zspage:  # the phantom is never allocated
                    assert not word & OBJ_ALLOCATED_TAG, f"phantom allocated in {z!r}"
                    continue
                if word & OBJ_ALLOCATED_TAG:
                    allocated += 1
                    handle = word & ~OBJ_ALLOCATED_TAG
                    assert handle not in seen_handles, f"handle {handle:#x} twice"
                    seen_handles.add(handle)
                    obj = cells[handle >> HANDLE_SHIFT]
                    want = location_to_obj(pfn, idx, pool.obj_index_bits)
                    assert obj == want, (
                        f"handle {handle:#x}: cell {obj:#x} != object at pfn {pfn} idx {idx}"
                    )
            assert allocated == z.inuse, f"{z!r}: {allocated} allocated headers"
            if z.inuse < cls.objs_per_zspage and not z.huge:
                fl = freelist(pool, z)
                assert len(set(fl)) == len(fl), f"{z!r}: freelist repeats: {fl}"
            used += z.inuse
        assert cls.stats[OBJ_USED] == used, (
            f"class {cls.index}: OBJ_USED {cls.stats[OBJ_USED]} != Σ inuse {used}"
        )
    assert total_pages == pool.pages_allocated, (
        f"Σ pages {total_pages} != pages_allocated {pool.pages_allocated}"
    )
    live_cells = sum(1 for i in range(1, len(cells)) if cells[i] >= 0)
    assert live_cells == len(seen_handles), (
        f"{live_cells} live handle cells but {len(seen_handles)} allocated headers"
    )
    assert OBJ_END_MARKER & 1 == 0
