"""One test (or more) per zsmalloc 5.17 edge case of docs/zsmalloc.md ("Edge cases").

Each test's docstring names the edge-case subsection it pins down.  Internal state is read
through the small accessor layer in `alloc_invariants` (handle cell, obj decoding, zspage of a
handle, the class structs) and checked against independent oracles (the 5.17 class table
written out, the 3N/4 rule, first_obj_offset arithmetic), and by reading the simulated frames
directly.

Where the port differs from the kernel by contract (docs/zsmalloc.md, "Where the port departs
from 5.17"), the test checks the port's form: zs_malloc(0) returning 0 becomes ValueError
(docs/INTERFACES.md); the port implements the fixed lock_zspage ("Async free made safe against
migration"), so the async-free race is tested to be *harmless*; per-CPU map areas are
per-thread.  No edge case is skipped: the stop on contention ("When compaction of a class
stops") and most of "Compaction waits for mapped objects" are arranged deterministically in
test_compaction_contention.py, with a short test of a mapped source here.
"""

# Threads run `lambda: (f(), g())`: two calls in one target; the tuple of Nones is unused.
# mypy: disable-error-code="func-returns-value"
from __future__ import annotations

import threading
import time

import pytest

from allocator import MapMode, Pool
from allocator.locks import LockOrderViolation, set_lockdep
from allocator.memory import PhysicalMemory
from support import alloc_invariants as ai
from support.alloc_invariants import (
    HANDLE_SIZE,
    PAGE_SIZE,
    REF_BY_INDEX,
    REF_BY_SIZE,
    REF_HUGE_CLASS_SIZE,
    ZS_ALMOST_EMPTY,
    ZS_ALMOST_FULL,
    ZS_EMPTY,
    ZS_FULL,
    check_classes_table,
    check_pool_invariants,
    ref_class_for_alloc,
    ref_first_obj_offsets,
    ref_fullness,
)

END_MARKER = ((1 << 64) - 1) << 1 & ((1 << 64) - 1)

# `pool` (lockdep on) and `mem` are tests/conftest.py's.


def fill(n: int, seed: int = 0) -> bytes:
    return bytes(((seed * 97 + i * 13) & 0xFF) | 0x80 for i in range(n))


def row(pool: Pool, size: int) -> ai.ClassRow:
    """The debugfs row of the canonical class that has object size `size`."""
    t = check_classes_table(pool)
    return t.rows[REF_BY_SIZE[size].index]


# ---------------------------------------------------------------------------------------------
# Sizing and classes


def test_malloc_size_limits_and_free_of_zero(pool: Pool) -> None:
    """zs_malloc(0) and PAGE_SIZE + 1 are refused, PAGE_SIZE goes to the huge class, zs_free(0)
    does nothing (docs/zsmalloc.md, edge case "Size limits of zs_malloc and zs_free(0)")."""
    with pytest.raises(ValueError):
        pool.malloc(0)
    with pytest.raises(ValueError):
        pool.malloc(PAGE_SIZE + 1)
    assert pool.total_pages == 0, "a rejected malloc must not allocate a zspage"
    h = pool.malloc(PAGE_SIZE)  # 4096 + 8 is clamped to the last slot: the huge class
    assert h != 0
    assert row(pool, 4096).obj_used == 1
    assert pool.total_pages == 1
    pool.free(0)  # zs_free(0) is a no-op
    assert row(pool, 4096).obj_used == 1
    pool.free(h)
    assert pool.total_pages == 0
    check_pool_invariants(pool, {})


def test_double_free_and_bad_handles_are_refused(pool: Pool) -> None:
    """A double free, a misaligned handle and a freed handle are refused, the pool intact
    (docs/zsmalloc.md, edge case "Size limits of zs_malloc and zs_free(0)"; the port
    raises)."""
    h = pool.malloc(100)
    keep = pool.malloc(100)
    pool.free(h)
    with pytest.raises(ValueError):
        pool.free(h)  # double free
    with pytest.raises(ValueError):
        pool.free(keep + 1)  # misaligned: bit 0 is the tag, never part of a handle
    with pytest.raises(ValueError):
        pool.read_object(h, 10)  # freed handle
    check_pool_invariants(pool, {keep: 100})


@pytest.mark.parametrize(
    "size,cls",
    [
        (1, 32),
        (24, 32),
        (25, 48),
        (40, 48),
        (41, 64),
        (648, 672),
        (649, 672),
        (664, 672),
        (665, 704),
        (3256, 3264),
        (3257, 4096),
        (4096, 4096),
    ],
)
def test_class_lookup_adds_the_handle_size(pool: Pool, size: int, cls: int) -> None:
    """Boundary sizes land in the class chosen for size + 8, alias slots in the class above
    (docs/zsmalloc.md, edge case "Class lookup adds the handle size")."""
    assert ref_class_for_alloc(size).size == cls  # the oracle agrees with the documented sizes
    h = pool.malloc(size)
    assert row(pool, cls).obj_used == 1
    assert check_classes_table(pool).total[3] == 1
    z = ai.zspage_of(pool, h)
    assert ai.class_of(pool, z).size == cls
    pool.free(h)


def test_every_size_lands_in_the_oracle_class(pool: Pool) -> None:
    """Every size from 1 to 4096 lands where the written-out 5.17 table says (docs/zsmalloc.md,
    edge case "Class lookup adds the handle size")."""
    live = {}
    for size in range(1, PAGE_SIZE + 1, 3):
        live[pool.malloc(size)] = size
    check_pool_invariants(pool, live)  # obj_used per class == count of sizes mapping to it
    for h, size in live.items():
        assert ai.class_of(pool, ai.zspage_of(pool, h)).size == ref_class_for_alloc(size).size
    for h in live:
        pool.free(h)


def test_huge_class_size_is_3257_with_chain_4(pool: Pool) -> None:
    """zs_huge_class_size() is 3257 for 4 KiB pages and chain 4 (docs/zsmalloc.md, edge case
    "Class lookup adds the handle size")."""
    assert pool.huge_class_size == REF_HUGE_CLASS_SIZE == 3257


def test_sixty_nine_classes_and_one_huge_class_size_for_all_pools(mem: PhysicalMemory) -> None:
    """69 canonical classes that match the oracle row for row, aliases resolved upward, and one
    huge_class_size shared by two pools (docs/zsmalloc.md, edge case "Sixty-nine classes and
    one global huge_class_size")."""
    p1 = Pool("a", memory=mem)
    p2 = Pool("b", memory=mem)
    t = check_classes_table(p1)
    assert len(t.rows) == 69
    for idx in t.rows:
        ref = REF_BY_INDEX[idx]
        c = ai.class_by_index(p1, idx)
        assert (c.size, c.pages_per_zspage, c.objs_per_zspage) == (ref.size, ref.pages, ref.objs)
    # Alias slots resolve to the next canonical class above them.
    assert ai.class_by_slot(p1, 39) is ai.class_by_index(p1, 40)
    assert ai.class_by_slot(p1, 203) is ai.class_by_index(p1, 254)
    assert p1.huge_class_size == p2.huge_class_size == 3257


@pytest.mark.parametrize(
    "size,objs", [(3256, 5), (1016, 4), (1352, 3), (2040, 2), (4096, 1), (100, 73)]
)
def test_fullness_follows_the_three_quarters_rule(pool: Pool, size: int, objs: int) -> None:
    """Fullness and the debugfs columns at every inuse for N = 1, 2, 3, 4, 5, 73: ALMOST_EMPTY
    up to 3N/4, never ALMOST_FULL with N <= 4 (docs/zsmalloc.md, edge case "The three-quarters
    fullness rule")."""
    cls = ref_class_for_alloc(size)
    assert cls.objs == objs
    hs = []
    for inuse in range(1, objs + 1):
        hs.append(pool.malloc(size))
        z = ai.zspage_of(pool, hs[0])
        assert z.inuse == inuse
        want = ref_fullness(inuse, objs)
        assert z.fullness == want, f"N={objs} inuse={inuse}: fullness {z.fullness} != {want}"
        r = row(pool, cls.size)
        assert (r.almost_empty, r.almost_full) == (
            int(want == ZS_ALMOST_EMPTY),
            int(want == ZS_ALMOST_FULL),
        )
        if objs <= 4:
            assert want != ZS_ALMOST_FULL
    for h in reversed(hs[1:]):
        pool.free(h)
        z = ai.zspage_of(pool, hs[0])
        assert z.fullness == ref_fullness(z.inuse, objs)
    check_pool_invariants(pool, {hs[0]: size})


# ---------------------------------------------------------------------------------------------
# Layout and encoding


def _fresh_class48(pool: Pool, n: int) -> list[int]:
    """n objects of size 40 (class 48, 3 pages, 256 objects) in a fresh pool: indices 0..n-1."""
    return [pool.malloc(40) for _ in range(n)]


def test_class48_objects_85_and_170_span_two_pages(pool: Pool, mem: PhysicalMemory) -> None:
    """Class 48 (3 pages): first_obj_offset [0, 32, 16], objects 85 and 170 span a page
    boundary and round-trip through map/unmap (docs/zsmalloc.md, edge case "Objects that span
    two pages")."""
    hs = _fresh_class48(pool, 256)
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    assert len(pages) == 3
    assert [mem.page_type[p] for p in pages] == ref_first_obj_offsets(48, 3) == [0, 32, 16]
    spanning = []
    for i, h in enumerate(hs):
        pfn, idx = ai.location(pool, h)
        assert idx == i, "a fresh zspage hands out indices in address order"
        start = i * 48
        assert pfn == pages[start // PAGE_SIZE], "obj encodes the subpage the object starts in"
        if start % PAGE_SIZE + 48 > PAGE_SIZE:
            spanning.append(i)
    assert spanning == [85, 170]
    # Map/unmap of both spanning objects and their neighbours round-trips.
    for i in (84, 85, 86, 169, 170, 171):
        data = fill(40, i)
        with pool.map_object(hs[i], MapMode.WO) as buf:
            buf[:40] = data
    for i in (84, 85, 86, 169, 170, 171):
        with pool.map_object(hs[i], MapMode.RO) as buf:
            assert bytes(buf[:40]) == fill(40, i)
        # The bytes really are in the frames, split across the page boundary for 85 and 170.
        assert ai.read_object_bytes(pool, hs[i], 48)[HANDLE_SIZE:] == fill(40, i)
    check_pool_invariants(pool, {h: 40 for h in hs})


def test_migrating_a_subpage_rewrites_only_objects_starting_in_it(
    pool: Pool, mem: PhysicalMemory
) -> None:
    """Migrating the middle page of a class-48 zspage rewrites the handles of the objects that
    start in it and no others (docs/zsmalloc.md, edge case "Objects that span two pages")."""
    filler = [mem.alloc_page() for _ in range(8)]  # keep low PFNs busy, then free them
    hs = _fresh_class48(pool, 256)
    for i, h in enumerate(hs):
        pool.write_object(h, fill(40, i))
    for p in filler:
        mem.free_page(p)
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    before = {h: ai.obj_of(pool, h) for h in hs}
    old = pages[1]
    assert mem.migrate_pfn(old) is True
    new_pages = ai.zspage_pfns(pool, z)
    assert new_pages[0] == pages[0] and new_pages[2] == pages[2] and new_pages[1] != old
    assert new_pages[1] < old
    assert mem.page_type[new_pages[1]] == 32, "first_obj_offset preserved by migration"
    for i, h in enumerate(hs):
        starts_in = (i * 48) // PAGE_SIZE
        if starts_in == 1:
            assert ai.location(pool, h) == (new_pages[1], i)
        else:
            assert ai.obj_of(pool, h) == before[h], (
                f"object {i} starts in page {starts_in}: untouched"
            )
        assert pool.read_object(h, 40) == fill(40, i)
    check_pool_invariants(pool, {h: 40 for h in hs})


def _spanning_pair(pool: Pool) -> tuple[list[int], int, int]:
    hs = _fresh_class48(pool, 171)
    return hs, hs[85], hs[170]


def test_map_modes_of_a_spanning_object(pool: Pool, mem: PhysicalMemory) -> None:
    """RW copies in and back, RO discards writes, WO does not copy in but copies back; the
    header is never written back (docs/zsmalloc.md, edge case "Map modes for spanning
    objects")."""
    hs, a, b = _spanning_pair(pool)
    pool.write_object(a, fill(40, 1))
    pool.write_object(b, fill(40, 2))
    hdr_a = ai.header_word(pool, a)
    # RW copies in and writes back.
    with pool.map_object(a, MapMode.RW) as buf:
        assert bytes(buf[:40]) == fill(40, 1)
        buf[:40] = fill(40, 3)
    assert pool.read_object(a, 40) == fill(40, 3)
    assert ai.header_word(pool, a) == hdr_a == a | 1, "the header is never changed by an unmap"
    # RO discards writes to the copy.
    with pool.map_object(a, MapMode.RO) as buf:
        assert bytes(buf[:40]) == fill(40, 3)
        try:
            buf[:40] = fill(40, 4)
        except TypeError:
            pass  # a read-only view is an acceptable way to discard the write
    assert pool.read_object(a, 40) == fill(40, 3)
    # WO does not copy in: the per-thread buffer still holds the last spanning object mapped
    # (object a, content 3) when b is mapped; and WO does copy back.
    with pool.map_object(a, MapMode.RO) as buf:
        pass
    with pool.map_object(b, MapMode.WO) as buf:
        assert bytes(buf[:40]) == fill(40, 3), "WO must not copy the object in (stale buffer)"
        buf[:40] = fill(40, 5)
    assert pool.read_object(b, 40) == fill(40, 5)
    assert ai.header_word(pool, b) == b | 1
    check_pool_invariants(pool, {h: 40 for h in hs})


def test_in_page_mapping_is_direct_whatever_the_mode(pool: Pool) -> None:
    """An object inside one page is mapped directly: writes are visible at once, whatever the
    mode (docs/zsmalloc.md, edge case "Map modes for spanning objects")."""
    h = pool.malloc(100)
    pool.write_object(h, fill(100, 1))
    with pool.map_object(h, MapMode.RO) as buf:
        assert len(buf) >= 100
        # Direct mapping: the mode is ignored, a write through an RO mapping lands at once.
        buf[:4] = b"WXYZ"
        assert ai.read_object_bytes(pool, h, 112)[HANDLE_SIZE : HANDLE_SIZE + 4] == b"WXYZ"
    assert pool.read_object(h, 4) == b"WXYZ"
    # The returned view starts right after the 8-byte header.
    assert ai.header_word(pool, h) == h | 1
    with pool.map_object(h, MapMode.WO) as buf:
        assert bytes(buf[:4]) == b"WXYZ", "in-page WO is a direct mapping: current bytes visible"


def test_huge_object_keeps_its_handle_in_page_index(pool: Pool, mem: PhysicalMemory) -> None:
    """A huge object: one page, no header, handle|1 in page->index, obj_idx 0; migration
    carries the handle over (docs/zsmalloc.md, edge case "The huge class")."""
    filler = [mem.alloc_page() for _ in range(4)]
    h = pool.malloc(3257)
    z = ai.zspage_of(pool, h)
    assert z.huge
    pfn, idx = ai.location(pool, h)
    assert idx == 0
    assert ai.zspage_pfns(pool, z) == [pfn]
    assert mem.index[pfn] == h | 1, "huge handle|1 lives in page->index"
    data = fill(3257, 9)
    with pool.map_object(h, MapMode.WO) as buf:
        assert len(buf) >= 3257
        buf[:3257] = data
    # No header: user data starts at the page start.
    assert bytes(mem.view(pfn)[:3257]) == data
    r = row(pool, 4096)
    assert (r.almost_empty, r.almost_full, r.obj_allocated, r.obj_used) == (0, 0, 1, 1)
    for p in filler:
        mem.free_page(p)
    assert mem.migrate_pfn(pfn) is True
    new, idx2 = ai.location(pool, h)
    assert new != pfn and new < pfn and idx2 == 0
    assert mem.index[new] == h | 1, "migration copies page->index (the huge handle)"
    assert pool.read_object(h, 3257) == data
    check_pool_invariants(pool, {h: 3257})
    pool.free(h)
    assert pool.total_pages == 0
    assert mem.private[new] is None


def test_phantom_tail_of_class80_carries_the_end_marker(pool: Pool, mem: PhysicalMemory) -> None:
    """Class 80: the phantom object at offset 4080 carries the end marker, the freelist ends on
    it, it is never handed out (docs/zsmalloc.md, edge case "The phantom freelist tail")."""
    # class 80: 1 page, 51 objects, waste 16: a phantom object 51 at offset 4080.
    hs = [pool.malloc(72) for _ in range(51)]
    z = ai.zspage_of(pool, hs[0])
    (pfn,) = ai.zspage_pfns(pool, z)
    assert z.fullness == ZS_FULL
    assert ai.word(mem, pfn, 4080) == END_MARKER, "the phantom carries the end marker"
    assert all(ai.zspage_of(pool, h) is z for h in hs)
    h52 = pool.malloc(72)
    assert ai.zspage_of(pool, h52) is not z, "a FULL zspage is never allocated from"
    # Free everything but one, check the freelist walk ends at the phantom index 51.
    for h in hs[1:]:
        pool.free(h)
    chain = ai.freelist(pool, z)
    assert chain[-1] == 51, f"the freelist must end on the phantom: {chain[-5:]}"
    assert len(chain) == 51 - z.inuse + 1
    check_pool_invariants(pool, {hs[0]: 72, h52: 72})


def test_fresh_freelists_of_1360_and_3264_end_on_the_phantom(pool: Pool) -> None:
    """The fresh freelists of classes 1360 and 3264 end on the phantom index objs_per_zspage
    (docs/zsmalloc.md, edge case "The phantom freelist tail")."""
    for size, objs in ((1352, 3), (3256, 5)):
        h = pool.malloc(size)
        z = ai.zspage_of(pool, h)
        chain = ai.freelist(pool, z)
        assert chain == list(range(1, objs + 1)), f"class {size + 8}: {chain}"
        pool.free(h)


def test_obj_index_is_zspage_wide(pool: Pool) -> None:
    """Objects in later subpages carry the zspage-wide index (docs/zsmalloc.md, edge case "Two
    object indices")."""
    hs = _fresh_class48(pool, 200)
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    for i in (0, 84, 85, 86, 170, 171, 199):
        pfn, idx = ai.location(pool, hs[i])
        assert idx == i
        assert pfn == pages[i * 48 // PAGE_SIZE]
        assert (48 * idx) % PAGE_SIZE == (i * 48) - PAGE_SIZE * (i * 48 // PAGE_SIZE)


def test_freelist_is_lifo_and_fresh_zspages_go_in_address_order(pool: Pool) -> None:
    """A fresh zspage hands out 0, 1, 2 ...; after freeing A then B the next allocations get
    B's slot, then A's (docs/zsmalloc.md, edge case "The freelist is LIFO")."""
    hs = [pool.malloc(100) for _ in range(6)]
    locs = [ai.location(pool, h) for h in hs]
    assert [i for _, i in locs] == list(range(6)), "fresh zspage: indices 0,1,2,... in order"
    pool.free(hs[1])  # A
    pool.free(hs[4])  # B
    x = pool.malloc(100)
    y = pool.malloc(100)
    assert ai.location(pool, x) == locs[4], "LIFO: B's slot first"
    assert ai.location(pool, y) == locs[1], "then A's"


# ---------------------------------------------------------------------------------------------
# Lists, stats and accounting


def test_equal_inuse_goes_to_head_and_find_get_zspage_takes_head(pool: Pool) -> None:
    """A zspage whose inuse is not lower than the head's goes to the head, and zs_malloc takes
    the head (docs/zsmalloc.md, edge case "List order and where zs_malloc looks")."""
    # class 2048 (N=2): three zspages, then one object freed in each.
    size = 2040
    hs = [pool.malloc(size) for _ in range(6)]
    zs = [ai.zspage_of(pool, hs[i]) for i in (0, 2, 4)]
    assert len({id(z) for z in zs}) == 3
    cls = ai.class_of(pool, zs[0])
    assert ai.fullness_list(cls, ZS_FULL) == [zs[2], zs[1], zs[0]]
    pool.free(hs[1])
    pool.free(hs[3])
    pool.free(hs[5])  # all ALMOST_EMPTY (N=2: 1 <= 3*2//4 = 1); no ALMOST_FULL possible
    assert ai.fullness_list(cls, ZS_ALMOST_EMPTY) == [zs[2], zs[1], zs[0]], (
        "inuse not lower than the head's: each zspage goes to the head"
    )
    h = pool.malloc(size)
    assert ai.zspage_of(pool, h) is zs[2], "find_get_zspage takes the list head"
    check_pool_invariants(pool, {x: size for x in (hs[0], hs[2], hs[4], h)})


def test_lower_inuse_goes_second(pool: Pool) -> None:
    """White-box: insert_zspage puts a zspage with lower inuse than the head second
    (docs/zsmalloc.md, edge case "List order and where zs_malloc looks").

    Through the public API a zspage only enters a list with an inuse the head cannot beat
    (single-threaded), so the rule is exercised on the pool's insert/remove helpers."""
    groups = [[pool.malloc(100) for _ in range(73)] for _ in range(3)]
    zs = [ai.zspage_of(pool, g[0]) for g in groups]
    for g, keep in zip(groups, (10, 5, 20)):
        for h in g[keep:]:
            pool.free(h)
    cls = ai.class_of(pool, zs[0])
    assert ai.fullness_list(cls, ZS_ALMOST_EMPTY) == [zs[2], zs[1], zs[0]]
    with ai.class_lock(cls):
        for z in zs:
            ai.remove_zspage(pool, cls, z, ZS_ALMOST_EMPTY)
        assert ai.class_stats(cls)[ZS_ALMOST_EMPTY] == 0
        ai.insert_zspage(pool, cls, zs[0], ZS_ALMOST_EMPTY)  # [z0(10)]
        ai.insert_zspage(pool, cls, zs[1], ZS_ALMOST_EMPTY)  # 5 < 10: second
        ai.insert_zspage(pool, cls, zs[2], ZS_ALMOST_EMPTY)  # 20 >= 10: head
    assert ai.fullness_list(cls, ZS_ALMOST_EMPTY) == [zs[2], zs[0], zs[1]]
    assert ai.class_stats(cls)[ZS_ALMOST_EMPTY] == 3
    h = pool.malloc(100)
    assert ai.zspage_of(pool, h) is zs[2]
    live = {x: 100 for g, k in zip(groups, (10, 5, 20)) for x in g[:k]}
    check_pool_invariants(pool, {**live, h: 100})


def test_malloc_prefers_almost_full_then_falls_back_to_empty(
    pool: Pool, mem: PhysicalMemory
) -> None:
    """zs_malloc takes ALMOST_FULL before ALMOST_EMPTY, and an EMPTY zspage still listed
    (deferred free) after both (docs/zsmalloc.md, edge case "List order and where zs_malloc
    looks")."""
    a = [pool.malloc(100) for _ in range(73)]
    b = [pool.malloc(100) for _ in range(73)]
    za, zb = ai.zspage_of(pool, a[0]), ai.zspage_of(pool, b[0])
    for h in a[60:]:
        pool.free(h)  # za: 60 > 54 -> ALMOST_FULL
    for h in b[5:]:
        pool.free(h)  # zb: 5 -> ALMOST_EMPTY, and it is the head of its list
    assert za.fullness == ZS_ALMOST_FULL and zb.fullness == ZS_ALMOST_EMPTY
    assert ai.zspage_of(pool, pool.malloc(100)) is za
    # An EMPTY zspage left on the list (deferred free) is used after the ALMOST_* ones.
    c = [pool.malloc(2040) for _ in range(2)]
    zc = ai.zspage_of(pool, c[0])
    (p0,) = ai.zspage_pfns(pool, zc)
    mem.lock_page(p0)
    try:
        pool.free(c[0])
        pool.free(c[1])
        assert zc.fullness == ZS_EMPTY and zc in ai.fullness_list(ai.class_of(pool, zc), ZS_EMPTY)
        d = pool.malloc(2040)
        assert ai.zspage_of(pool, d) is zc, "find_get_zspage falls back to the EMPTY list"
    finally:
        mem.unlock_page(p0)
    pool.free(d)
    ai.flush_deferred(pool)


def test_accounting_invariants_hold_after_a_mixed_workload(pool: Pool) -> None:
    """A random workload and a compaction leave every counter, list and header consistent
    (docs/zsmalloc.md, edge case "Accounting invariants")."""
    import random

    rnd = random.Random(12)
    live: dict[int, int] = {}
    for _ in range(3000):
        if live and rnd.random() < 0.45:
            h = rnd.choice(list(live))
            del live[h]
            pool.free(h)
        else:
            s = rnd.choice([rnd.randint(1, 4096), 40, 100, 1000, 3000])
            live[pool.malloc(s)] = s
    check_pool_invariants(pool, live)
    pool.compact()
    check_pool_invariants(pool, live)


def test_invariant_checker_detects_corruption(pool: Pool, mem: PhysicalMemory) -> None:
    """The invariant checker must be able to fail: a lost header, then a live handle that does
    not exist (docs/zsmalloc.md, edge case "Accounting invariants")."""
    hs = [pool.malloc(100) for _ in range(3)]
    live = {h: 100 for h in hs}
    check_pool_invariants(pool, live)
    pfn, idx = ai.location(pool, hs[1])
    off = idx * 112 % PAGE_SIZE
    saved = ai.word(mem, pfn, off)
    ai.set_word(mem, pfn, off, 0)  # header lost: the object looks free
    with pytest.raises(AssertionError):
        check_pool_invariants(pool, live)
    ai.set_word(mem, pfn, off, saved)
    check_pool_invariants(pool, live)
    with pytest.raises(AssertionError):
        check_pool_invariants(pool, {**live, hs[0] + 8 * 1000: 100})


def test_deferred_free_keeps_the_zspage_listed_and_leaks_class_empty(
    pool: Pool, mem: PhysicalMemory
) -> None:
    """With a page locked, the emptied zspage stays on the EMPTY list until the worker frees
    it; the worker drops OBJ_ALLOCATED and the pages but not CLASS_EMPTY (docs/zsmalloc.md,
    edge case "Deferred free when a page lock is busy")."""
    hs = [pool.malloc(2040) for _ in range(2)]
    z = ai.zspage_of(pool, hs[0])
    cls = ai.class_of(pool, z)
    (pfn,) = ai.zspage_pfns(pool, z)
    stats0 = list(ai.class_stats(cls))
    mem.lock_page(pfn)
    try:
        pool.free(hs[0])
        pool.free(hs[1])  # trylock_zspage fails: stays on the EMPTY list, work scheduled
        assert z.fullness == ZS_EMPTY
        assert ai.fullness_list(cls, ZS_EMPTY) == [z]
        assert pool.total_pages == 1, "deferred: pages_allocated unchanged"
        st = ai.class_stats(cls)
        assert st[ZS_EMPTY] == 1 and st[4] == 2 and st[5] == 0
    finally:
        mem.unlock_page(pfn)
    ai.flush_deferred(pool)
    st = ai.class_stats(cls)
    assert pool.total_pages == 0
    assert st[4] == stats0[4] - 2, "OBJ_ALLOCATED drops when the worker frees it"
    assert st[ZS_EMPTY] == 1, "5.17 leaks the CLASS_EMPTY count on the async path"
    assert ai.fullness_list(cls, ZS_EMPTY) == []
    assert mem.private[pfn] is None


def test_pages_compacted_counts_a_deferred_free(pool: Pool, mem: PhysicalMemory) -> None:
    """A drained source whose free is deferred still counts in zs_compact's result and in
    pages_compacted (docs/zsmalloc.md, edge case "pages_compacted counts deferred frees")."""
    # class 112 (N=73): two ALMOST_EMPTY zspages; compaction drains the head source into the
    # other one. Lock every page of both so whichever is drained is freed deferred.
    a = [pool.malloc(100) for _ in range(73)]
    b = [pool.malloc(100) for _ in range(73)]
    for h in a[5:]:
        pool.free(h)
    for h in b[6:]:
        pool.free(h)
    keep = a[:5] + b[:6]
    for i, h in enumerate(keep):
        pool.write_object(h, fill(100, i))
    za, zb = ai.zspage_of(pool, a[0]), ai.zspage_of(pool, b[0])
    pfns = ai.zspage_pfns(pool, za) + ai.zspage_pfns(pool, zb)
    assert pool.freeable_pages() == 2  # one zspage of 2 pages (class 112: 2 pages, 73 objs)
    total = pool.total_pages
    pc = pool.stats.pages_compacted
    for p in pfns:
        mem.lock_page(p)
    try:
        freed = pool.compact()
    finally:
        for p in pfns:
            mem.unlock_page(p)
    assert freed == 2, "a deferred free of the drained source still counts"
    assert pool.stats.pages_compacted == pc + 2
    assert pool.total_pages == total, "the free was deferred"
    ai.flush_deferred(pool)
    assert pool.total_pages == total - 2
    for i, h in enumerate(keep):
        assert pool.read_object(h, 100) == fill(100, i)
    assert pool.freeable_pages() == 0
    check_pool_invariants(pool, {h: 100 for h in keep})


def test_shrinker_count_equals_the_freeable_total(pool: Pool) -> None:
    """The shrinker count equals the debugfs freeable total and what compaction frees
    (docs/zsmalloc.md, edge case "pages_compacted counts deferred frees")."""
    hs = [pool.malloc(100) for _ in range(73 * 4)]
    for i, h in enumerate(hs):
        if i % 73 >= 3:
            pool.free(h)
    # 4 zspages of 2 pages, 12 used of 292: (292 - 12) // 73 * 2 = 6 pages
    assert pool.freeable_pages() == 6
    assert check_classes_table(pool).total[5] == 6
    assert pool.compact() == 6


# ---------------------------------------------------------------------------------------------
# Compaction


@pytest.mark.pure_python
def test_compaction_source_and_destination_order(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sources ALMOST_EMPTY head first, destination the ALMOST_FULL zspage; handles keep their
    bytes (docs/zsmalloc.md, edge case "Compaction source and destination order")."""
    # class 112, N=73, almost-empty limit 54. zs1: 60 (ALMOST_FULL), zs2: 3, zs3: 2.
    groups = [[pool.malloc(100) for _ in range(73)] for _ in range(3)]
    zs = [ai.zspage_of(pool, g[0]) for g in groups]
    keep_n = (60, 3, 2)
    keep: list[int] = []
    for g, n in zip(groups, keep_n):
        for h in g[n:]:
            pool.free(h)
        keep += g[:n]
    for i, h in enumerate(keep):
        pool.write_object(h, fill(100, i))
    handles_before = {h: ai.zspage_of(pool, h) for h in keep}
    assert [z.fullness for z in zs] == [ZS_ALMOST_FULL, ZS_ALMOST_EMPTY, ZS_ALMOST_EMPTY]
    assert ai.fullness_list(ai.class_of(pool, zs[0]), ZS_ALMOST_EMPTY) == [zs[2], zs[1]]
    moved: list[tuple[int, int]] = []
    ai.trace_object_moves(pool, monkeypatch, moved)
    freed = pool.compact()
    # Source order: ALMOST_EMPTY head (zs3) then zs2; destination: ALMOST_FULL zs1 for both.
    # Then zs1 itself is isolated as a source but zs_can_compact is 0: nothing else moves.
    assert freed == 2 * 2
    src_order = [z for z, _ in moved]
    assert src_order == [id(zs[2])] * 2 + [id(zs[1])] * 3, "sources: AE head first, then next"
    assert {d for _, d in moved} == {id(zs[0])}, "destination: the ALMOST_FULL zspage"
    for h in keep:
        assert ai.zspage_of(pool, h) is zs[0]
    assert zs[0].inuse == 65
    for i, h in enumerate(keep):
        assert pool.read_object(h, 100) == fill(100, i), "handles stay valid, bytes unchanged"
    assert set(handles_before) == set(keep)
    check_pool_invariants(pool, {h: 100 for h in keep})


def test_compaction_never_uses_a_full_zspage(pool: Pool) -> None:
    """A FULL zspage is neither source nor destination: one ALMOST_EMPTY zspage beside it gives
    compaction nothing to do (docs/zsmalloc.md, edge case "Compaction source and destination
    order")."""
    full = [pool.malloc(100) for _ in range(73)]
    part = [pool.malloc(100) for _ in range(73)]
    for h in part[2:]:
        pool.free(h)
    assert pool.compact() == 0, "one ALMOST_EMPTY zspage and one FULL: nothing to do"
    assert ai.zspage_of(pool, full[0]).inuse == 73
    assert ai.zspage_of(pool, part[0]).inuse == 2


def test_compaction_stops_when_nothing_is_compactable(pool: Pool) -> None:
    """With zs_can_compact() 0 no object moves (docs/zsmalloc.md, edge case "When compaction of
    a class stops")."""
    # Two zspages with 40 + 40 = 80 > 73 used: (146 - 80) // 73 == 0 -> nothing moves.
    a = [pool.malloc(100) for _ in range(73)]
    b = [pool.malloc(100) for _ in range(73)]
    for h in a[40:] + b[40:]:
        pool.free(h)
    locs = {h: ai.obj_of(pool, h) for h in a[:40] + b[:40]}
    assert pool.freeable_pages() == 0
    assert pool.compact() == 0
    assert {h: ai.obj_of(pool, h) for h in locs} == locs, "no object may move"


@pytest.mark.pure_python
def test_compaction_runs_the_largest_class_first(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classes are compacted from the largest to the smallest (docs/zsmalloc.md, edge case
    "When compaction of a class stops")."""
    for size in (100, 1000, 3000):
        hs = [pool.malloc(size) for _ in range(ref_class_for_alloc(size).objs * 2)]
        for i, h in enumerate(hs):
            if i % 3:
                pool.free(h)
    order: list[int] = []
    ai.trace_class_compaction(pool, monkeypatch, order)
    pool.compact()
    sizes = [s for s in order]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) >= 3, sizes


# Contention (docs/zsmalloc.md, edge case "When compaction of a class stops"): a queued
# migrate_lock waiter ends compaction of the class after the current destination fills up;
# see test_compaction_contention.py
# (test_compaction_gives_way_to_a_queued_reader), which arranges it deterministically.


def test_compactor_waits_for_a_mapped_source(pool: Pool) -> None:
    """With an object of the source mapped, compaction blocks holding migrate_lock; zs_free on
    another class blocks, zs_malloc on another class proceeds; all finish after the unmap
    (docs/zsmalloc.md, edge case "Compaction waits for mapped objects"; more in
    test_compaction_contention.py)."""
    a = [pool.malloc(100) for _ in range(73)]
    s = [pool.malloc(100) for _ in range(73)]
    for h in a[60:] + s[5:]:
        pool.free(h)
    other = pool.malloc(3000)
    zs = ai.zspage_of(pool, s[0])
    mapped, release = threading.Event(), threading.Event()

    def holder() -> None:
        with pool.map_object(s[0], MapMode.RO):
            mapped.set()
            release.wait(20)

    def bg(fn) -> tuple[threading.Thread, list]:
        out: list = []
        t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
        t.start()
        return t, out

    th = threading.Thread(target=holder, daemon=True)
    th.start()
    assert mapped.wait(10)
    tc, freed = bg(pool.compact)
    deadline = time.monotonic() + 10
    while not zs.lock.is_contended():
        assert time.monotonic() < deadline, "compaction never blocked on the mapped source"
        time.sleep(0.001)
    assert ai.migrate_lock(pool).is_write_locked()
    tf, _ = bg(lambda: pool.free(other))
    tm, got = bg(lambda: pool.malloc(1000))
    tm.join(5)
    assert not tm.is_alive() and got and got[0], "zs_malloc of another class must proceed"
    time.sleep(0.05)
    assert tf.is_alive(), "zs_free must wait for migrate_lock"
    release.set()
    for t in (th, tc, tf):
        t.join(10)
        assert not t.is_alive()
    assert freed == [2], "after the unmap the source is drained and freed"
    check_pool_invariants(pool, {**{h: 100 for h in a[:60] + s[:5]}, got[0]: 1000})


# ---------------------------------------------------------------------------------------------
# Migration


def test_isolate_putback_and_migrate_page_zero(pool: Pool, mem: PhysicalMemory) -> None:
    """Isolation counts and putback uncounts; migrating page 0 copies it verbatim, changes
    first_page and keeps pages_allocated (docs/zsmalloc.md, edge case "Isolation, migration and
    putback")."""
    filler = [mem.alloc_page() for _ in range(6)]
    hs = _fresh_class48(pool, 256)
    for i, h in enumerate(hs):
        pool.write_object(h, fill(40, i))
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    contents = [bytes(mem.view(p)) for p in pages]
    total = pool.total_pages
    # isolate always succeeds and bumps isolated; putback drops it.
    assert pool.isolate_page(pages[0]) is True
    assert z.isolated == 1
    pool.putback_page(pages[0])
    assert z.isolated == 0
    for p in filler:
        mem.free_page(p)
    # Moving page 0 changes first_page; contents are copied verbatim.
    assert mem.migrate_pfn(pages[0]) is True
    new = ai.zspage_pfns(pool, z)
    assert new[0] != pages[0] and new[1:] == pages[1:]
    assert ai.first_page(z) == new[0]
    assert bytes(mem.view(new[0])) == contents[0], "migration copies the page verbatim"
    assert z.isolated == 0
    assert pool.total_pages == total
    assert mem.private[pages[0]] is None
    for i, h in enumerate(hs):
        assert pool.read_object(h, 40) == fill(40, i)
    check_pool_invariants(pool, {h: 40 for h in hs})


def test_migrated_page_of_a_deferred_empty_zspage_is_freed(pool: Pool, mem: PhysicalMemory) -> None:
    """An EMPTY zspage waiting for the async free can have a page migrated; the async free
    must then free the *new* page (the fixed lock_zspage, or an equivalent; docs/zsmalloc.md,
    edge case "Async free racing with migration")."""
    filler = [mem.alloc_page() for _ in range(4)]
    hs = _fresh_class48(pool, 3)
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    mem.lock_page(pages[2])
    for h in hs:
        pool.free(h)
    assert pool.total_pages == 3
    mem.unlock_page(pages[2])
    for p in filler:
        mem.free_page(p)
    used_before = mem.nr_used
    assert mem.migrate_pfn(pages[1]) is True
    assert mem.nr_used == used_before
    ai.flush_deferred(pool)
    assert pool.total_pages == 0
    assert mem.nr_used == 0, "every frame of the deferred zspage, old or migrated, is freed"


def test_async_free_racing_with_migration_frees_every_frame_once(
    pool: Pool, mem: PhysicalMemory, caplog: pytest.LogCaptureFixture
) -> None:
    """Threaded: the async worker locks the pages of a deferred EMPTY zspage while a migrator
    moves those very pages. With the fixed lock_zspage every frame is freed once
    (docs/zsmalloc.md, edge case "Async free racing with migration")."""
    base = mem.nr_used
    stop = threading.Event()
    errors: list[BaseException] = []
    targets: list[int] = []

    def migrator() -> None:
        try:
            while not stop.is_set():
                for p in list(targets):
                    mem.migrate_pfn(p)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=migrator, daemon=True)
    t.start()
    try:
        for _ in range(150):
            hs = _fresh_class48(pool, 4)
            pages = ai.zspage_pfns(pool, ai.zspage_of(pool, hs[0]))
            targets[:] = pages
            mem.lock_page(pages[2])
            for h in hs:
                pool.free(h)
            mem.unlock_page(pages[2])  # the worker and the migrator now race
            ai.flush_deferred(pool)
            assert pool.total_pages == 0
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors
    assert "async_free_zspage failed" not in caplog.text
    assert mem.nr_used == base, "a frame leaked or was freed twice"


# ---------------------------------------------------------------------------------------------
# A fresh zspage


def test_first_object_of_a_fresh_zspage_is_at_offset_zero(pool: Pool) -> None:
    """The first object of a fresh zspage is at offset 0 with the right header and class
    (docs/zsmalloc.md, edge case "obj_malloc on a fresh zspage reads class 0")."""
    for size in (100, 1000, 3000, 40):
        h = pool.malloc(size)
        z = ai.zspage_of(pool, h)
        pfn, idx = ai.location(pool, h)
        assert (pfn, idx) == (ai.first_page(z), 0)
        assert ai.header_word(pool, h) == h | 1
        assert ai.class_of(pool, z).size == ref_class_for_alloc(size).size
        assert z.class_idx == ref_class_for_alloc(size).index, "set_zspage_mapping after obj_malloc"


# ---------------------------------------------------------------------------------------------
# Locking and concurrency


def test_lockdep_refuses_class_lock_then_migrate_lock(pool: Pool) -> None:
    """migrate_lock -> class lock is allowed, the inversion is refused without leaving a lock
    held (docs/zsmalloc.md, edge case "Lock order and trylocks under class->lock")."""
    h = pool.malloc(100)
    cls = ai.class_of(pool, ai.zspage_of(pool, h))
    mlock = ai.migrate_lock(pool)
    # Legal order: migrate_lock -> class.lock.
    mlock.read_lock()
    ai.class_lock(cls).acquire()
    ai.class_lock(cls).release()
    mlock.read_unlock()
    # Inversion: class.lock -> migrate_lock must be refused by lockdep.
    ai.class_lock(cls).acquire()
    try:
        with pytest.raises(LockOrderViolation):
            mlock.read_lock()
    finally:
        ai.class_lock(cls).release()
    # And the pool still works (no lock left held by the refused acquisition).
    pool.free(h)
    check_pool_invariants(pool, {})


def test_free_zspage_only_trylocks_page_locks(pool: Pool, mem: PhysicalMemory) -> None:
    """Holding a page lock in another thread must not block zs_free (it defers instead;
    docs/zsmalloc.md, edge case "Lock order and trylocks under class->lock")."""
    h = pool.malloc(2040)
    (pfn,) = ai.zspage_pfns(pool, ai.zspage_of(pool, h))
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        mem.lock_page(pfn)
        held.set()
        release.wait(10)
        mem.unlock_page(pfn)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (pool.free(h), done.set()), daemon=True).start()
    try:
        assert done.wait(5), "zs_free blocked on a page lock (must trylock and defer)"
    finally:
        release.set()
        t.join(5)
    ai.flush_deferred(pool)
    assert pool.total_pages == 0


def test_each_thread_maps_spanning_objects_into_its_own_buffer(pool: Pool) -> None:
    """Two threads' spanning mappings use separate buffers (docs/zsmalloc.md, edge case "One
    mapping per CPU"; per thread in the port)."""
    hs, a, b = _spanning_pair(pool)
    pool.write_object(a, fill(40, 1))
    pool.write_object(b, fill(40, 2))
    mapped = threading.Event()
    go = threading.Event()
    seen: list[bytes] = []

    def other() -> None:
        with pool.map_object(a, MapMode.RO) as buf:
            mapped.set()
            go.wait(5)
            seen.append(bytes(buf[:40]))

    t = threading.Thread(target=other, daemon=True)
    t.start()
    assert mapped.wait(5)
    with pool.map_object(b, MapMode.RW) as buf:  # a second mapping on another "CPU"
        assert bytes(buf[:40]) == fill(40, 2)
        buf[:40] = fill(40, 3)
    go.set()
    t.join(5)
    assert seen == [fill(40, 1)], "another thread's spanning map must not clobber this buffer"
    assert pool.read_object(b, 40) == fill(40, 3)


def test_destroy_with_live_objects_logs_each_list_and_leaks(
    mem: PhysicalMemory, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """zs_destroy_pool logs one line per non-empty (class, fullness) list and leaks the pages
    (docs/zsmalloc.md, edge case "Destroying a pool with live objects")."""
    pool = Pool("leaky", memory=mem)
    a = [pool.malloc(100) for _ in range(73)]  # class 112: one FULL zspage
    b = [pool.malloc(100) for _ in range(2)]  # ... and one ALMOST_EMPTY
    c = pool.malloc(3000)  # class 3072: ALMOST_EMPTY
    total = pool.total_pages
    caplog.set_level("DEBUG")
    pool.destroy()
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    lines = sorted(
        line[line.index("Freeing") :] for line in text.splitlines() if "Freeing non-empty" in line
    )
    assert lines == sorted(
        [
            "Freeing non-empty class with size 112b, fullness group 1",
            "Freeing non-empty class with size 112b, fullness group 3",
            "Freeing non-empty class with size 3072b, fullness group 1",
        ]
    ), text
    assert pool.total_pages == total, "pages_allocated is not reset (the pages leak)"
    del a, b, c


def test_tag_bits_of_handle_cells_headers_and_free_slots(pool: Pool, mem: PhysicalMemory) -> None:
    """Handle cells have bit 0 clear, headers hold handle|1, free slots' first word has bit 0
    clear (docs/zsmalloc.md, edge case "Tag bits in handles, headers and free slots")."""
    hs = [pool.malloc(100) for _ in range(10)] + [pool.malloc(40) for _ in range(100)]
    for h in hs[::2]:
        pool.free(h)
    live = hs[1::2]
    for h in live:
        obj = ai.obj_of(pool, h)
        assert obj & 1 == 0, "*handle always has the tag bit clear"
        assert ai.header_word(pool, h) == h | 1
        assert h & 1 == 0, "handles are aligned: bit 0 is free for the tag"
    for z in {id(ai.zspage_of(pool, h)): ai.zspage_of(pool, h) for h in live}.values():
        assert ai.free_slots(pool, z), "the scenario leaves free slots in every zspage"
        for idx in ai.free_slots(pool, z):
            w = ai.slot_word(pool, z, idx)
            assert w & 1 == 0, f"free slot {idx}: first word {w:#x} must have bit 0 clear"
    check_pool_invariants(pool, {h: (100 if i < 5 else 40) for i, h in enumerate(live)})


# ---------------------------------------------------------------------------------------------
# Beyond the kernel's edge cases: contracts of the port around them (failure paths, shared memory,
# the other class-table configurations).


def test_out_of_memory_leaves_the_pool_consistent() -> None:
    """Running out of frames mid-zspage gives the pages back and leaves the pool usable
    (docs/zsmalloc.md, edge case "Size limits of zs_malloc and zs_free(0)")."""
    mem = PhysicalMemory(max_pages=5)
    pool = Pool("small", memory=mem)
    a = pool.malloc(3000)  # class 3072: 3 pages
    with pytest.raises(MemoryError):
        pool.malloc(3256)  # class 3264 needs 4 pages; only 2 are left
    assert mem.nr_used == 3, "pages of the half-built zspage must be given back"
    assert pool.total_pages == 3
    b = pool.malloc(3000)  # the existing zspage still has room
    assert ai.zspage_of(pool, a) is ai.zspage_of(pool, b)
    check_pool_invariants(pool, {a: 3000, b: 3000})
    pool.free(a)
    pool.free(b)
    c = pool.malloc(3256)  # memory came back: now it fits
    check_pool_invariants(pool, {c: 3256})


def test_shrinker_scan_returns_shrink_stop_when_nothing_freed(pool: Pool) -> None:
    """zs_shrinker_scan returns SHRINK_STOP when compaction frees nothing (docs/zsmalloc.md,
    edge case "pages_compacted counts deferred frees")."""
    from allocator import SHRINK_STOP

    hs = [pool.malloc(100) for _ in range(73 * 2)]
    assert pool.shrink() == SHRINK_STOP
    for h in hs[3:73] + hs[73 + 3 :]:
        pool.free(h)
    assert pool.shrink() == 2
    assert pool.shrink() == SHRINK_STOP


def test_nested_mapping_is_refused_without_leaking_locks(pool: Pool, mem: PhysicalMemory) -> None:
    """A second mapping in the same thread is refused and leaves no zspage lock behind
    (docs/zsmalloc.md, edge case "One mapping per CPU")."""
    hs, a, b = _spanning_pair(pool)
    pool.write_object(a, fill(40, 1))
    with pool.map_object(a, MapMode.RW) as buf:
        with pytest.raises(RuntimeError):
            with pool.map_object(b, MapMode.RO):
                pass
        with pytest.raises(RuntimeError):
            pool.read_object(b, 40)
        buf[:4] = b"abcd"
    assert pool.read_object(a, 4) == b"abcd"
    # No zspage read lock may be left behind: migration needs the write lock.
    (pfn, _) = ai.location(pool, b)
    done = threading.Event()
    threading.Thread(target=lambda: (mem.migrate_pfn(pfn), done.set()), daemon=True).start()
    assert done.wait(5), "migration blocked: a zspage lock leaked from the refused mapping"


def test_exception_in_mapping_body_unmaps(pool: Pool, mem: PhysicalMemory) -> None:
    hs, a, _ = _spanning_pair(pool)
    with pytest.raises(KeyError):
        with pool.map_object(a, MapMode.RW) as buf:
            buf[:3] = b"xyz"
            raise KeyError("boom")
    assert pool.read_object(a, 3) == b"xyz", "RW unmap still copies back on an exception"
    with pool.map_object(a, MapMode.RO):
        pass  # a second mapping in this thread works: the first was unmapped
    assert pool.compact() >= 0
    with pytest.raises(ValueError):
        pool.map_object(0, MapMode.RO).__enter__()
    with pool.map_object(a, MapMode.RO):
        pass


def test_two_pools_share_memory_and_migrate(mem: PhysicalMemory) -> None:
    set_lockdep(True)
    try:
        p1, p2 = Pool("zram0", memory=mem), Pool("zram1", memory=mem)
        live: list[dict[int, bytes]] = [{}, {}]
        for i in range(600):
            p = (p1, p2)[i % 2]
            size = (40, 1000, 3000, 4096)[i % 4]
            h = p.malloc(size)
            p.write_object(h, fill(size, i))
            live[i % 2][h] = fill(size, i)
        for k, p in enumerate((p1, p2)):
            for j, h in enumerate(list(live[k])):
                if j % 3:
                    p.free(h)
                    del live[k][h]
        hw = mem.high_water
        res = mem.compact()
        assert res.migrated > 0 and mem.high_water < hw
        for k, p in enumerate((p1, p2)):
            for h, want in live[k].items():
                assert p.read_object(h, len(want)) == want
            check_pool_invariants(p, {h: len(v) for h, v in live[k].items()})
        assert p1.total_pages + p2.total_pages == mem.nr_used
    finally:
        set_lockdep(False)


@pytest.mark.parametrize(
    "chain,rule,classes,huge",
    [(8, "max-used", 123, 3625), (8, "min-waste", 119, 3625), (4, "min-waste", 69, 3257)],
)
def test_class_tables_of_other_chain_sizes_and_rules(
    mem: PhysicalMemory, chain: int, rule: str, classes: int, huge: int
) -> None:
    """123 classes for chain 8 with the 5.17 rule (the count the kernel's
    Documentation/mm/zsmalloc.rst gives), 119 with the min-waste rule of current kernels;
    huge_class_size 3625 for chain 8 (docs/zsmalloc.md, "Size classes, merging and the huge
    class", and edge case "Sixty-nine classes and one global huge_class_size")."""
    pool = Pool("c8", memory=mem, chain_size=chain, chain_rule=rule)
    t = ai.parse_classes_table(pool.classes_table())
    assert len(t.rows) == classes
    assert pool.huge_class_size == huge
    assert t.rows[225].size == 3632 if chain == 8 else t.rows[202].size == 3264
    if chain == 8:
        assert (t.rows[225].pages_per_zspage, t.rows[222].pages_per_zspage) == (8, 7)
        h = pool.malloc(3624)
        assert ai.class_of(pool, ai.zspage_of(pool, h)).size == 3632
        h2 = pool.malloc(3625)
        assert ai.zspage_of(pool, h2).huge
        if rule == "min-waste":
            assert (t.rows[7].size, t.rows[7].pages_per_zspage) == (144, 7)  # 3/85 -> 7/199
        else:
            assert (t.rows[7].size, t.rows[7].pages_per_zspage) == (144, 3)
        pool.free(h)
        pool.free(h2)
    # a mixed workload keeps the table self-consistent on the wider chains too
    live = {}
    for i in range(400):
        s = (40, 100, 1000, 2000, 3000, 3600)[i % 6]
        live[pool.malloc(s)] = s
    for j, h in enumerate(list(live)):
        if j % 2:
            pool.free(h)
            del live[h]
    pool.compact()
    t = ai.parse_classes_table(pool.classes_table())
    assert t.total[3] == len(live)
    assert t.total[4] == pool.total_pages
    pool.check_invariants()


def test_migration_without_a_free_frame_puts_the_page_back() -> None:
    """With no free frame the page is put back and nothing changes (docs/zsmalloc.md, edge case
    "Isolation, migration and putback")."""
    mem = PhysicalMemory(max_pages=3)
    pool = Pool("full", memory=mem)
    hs = [pool.malloc(40) for _ in range(10)]  # class 48: 3 pages, memory now full
    for i, h in enumerate(hs):
        pool.write_object(h, fill(40, i))
    z = ai.zspage_of(pool, hs[0])
    pages = ai.zspage_pfns(pool, z)
    assert mem.nr_free == 0
    assert mem.migrate_pfn(pages[1]) is False  # no target frame: putback
    assert z.isolated == 0 and ai.zspage_pfns(pool, z) == pages
    assert not mem.flags[pages[1]] & 0x04, "PG_isolated cleared on putback"
    assert mem.compact().migrated == 0
    for i, h in enumerate(hs):
        assert pool.read_object(h, 40) == fill(40, i)
    check_pool_invariants(pool, {h: 40 for h in hs})


def test_migrate_pfn_refuses_frames_the_pool_does_not_own(pool: Pool, mem: PhysicalMemory) -> None:
    """Frames the pool does not own, beyond the high-water mark, or locked, are refused
    (docs/zsmalloc.md, edge case "Isolation, migration and putback")."""
    other = mem.alloc_page()  # not movable: someone else's page
    h = pool.malloc(100)
    (pfn, _) = ai.location(pool, h)
    assert mem.migrate_pfn(other) is False
    assert mem.migrate_pfn(mem.high_water + 5) is False  # beyond the high-water mark
    mem.lock_page(pfn)
    try:
        assert mem.migrate_pfn(pfn) is False  # busy page lock: skipped, not waited
    finally:
        mem.unlock_page(pfn)
    assert ai.location(pool, h)[0] == pfn
    check_pool_invariants(pool, {h: 100})


def test_destroy_flushes_the_deferred_free(
    mem: PhysicalMemory, caplog: pytest.LogCaptureFixture
) -> None:
    """zs_destroy_pool waits for a pending deferred free instead of leaking its zspage
    (docs/zsmalloc.md, edge case "Deferred free when a page lock is busy")."""
    pool = Pool("flush", memory=mem)
    h = pool.malloc(2040)
    (pfn,) = ai.zspage_pfns(pool, ai.zspage_of(pool, h))
    mem.lock_page(pfn)
    pool.free(h)  # deferred: the page is locked
    assert pool.total_pages == 1
    t = threading.Timer(0.2, mem.unlock_page, args=(pfn,))
    t.start()
    caplog.set_level("INFO")
    pool.destroy()  # must wait for the worker, not leak
    t.join()
    assert pool.total_pages == 0
    assert mem.nr_used == 0
    assert "Freeing non-empty" not in caplog.text
