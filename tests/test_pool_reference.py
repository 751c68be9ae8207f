"""The pool's hand-inlined hot-path copies agree with their readable references.

`allocator.pool` runs zs_malloc, zs_free, map and the read/write fast paths with copies of
lower functions inlined.  Each has one reference implementation, the plain function in the
lower module (see the table in the pool module's docstring):

    find_get_zspage, fix_fullness_group          allocator.fullness
    obj_malloc, obj_free, resolve_and_pin        allocator.zspage_ops
    cache_alloc_handle, the handle check         allocator.handles.HandleCache

Twin pools on twin memories replay one random history: one through the pool's own methods,
the other through zs_malloc / zs_free / read / write composed of the references only.  After
every step the two must agree on the handle returned, the handle cells and the free-cell
stack, every class's stats and fullness lists (order included), every zspage's inuse,
freeobj and chain, pages_allocated, and the bytes of every frame (so the freelists and the
object headers too).  Compaction (zsmalloc's and the memory's) and page migration run on
both twins between the steps, to reach the states they leave behind.  The handle check is
compared on its own, error by error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator import InvalidHandle, MapMode, PhysicalMemory, Pool
from allocator.fullness import find_get_zspage, fix_fullness_group
from allocator.handles import HANDLE_SHIFT
from allocator.sizeclass import NR_ZS_FULLNESS, OBJ_USED, ZS_EMPTY, ZS_HANDLE_SIZE
from allocator.zspage import obj_to_location
from allocator.zspage_ops import (
    free_zspage,
    handle_to_zspage,
    obj_free,
    obj_malloc,
    resolve_and_pin,
)

# ------------------------------------------------------------------ zs_* from the references


def ref_malloc(pool: Pool, size: int) -> int:
    """zs_malloc written with the references: cache_alloc_handle, find_get_zspage,
    obj_malloc, fix_fullness_group (the new-zspage path is shared with the pool)."""
    cls = pool.size_class[pool.table.get_size_class_index(size + ZS_HANDLE_SIZE)]
    handle = pool.handles.alloc()
    with cls.lock:
        zspage = find_get_zspage(cls)
        if zspage is not None:
            obj = obj_malloc(pool, zspage, handle)
            fix_fullness_group(cls, zspage)
            pool.handles.cells[handle >> HANDLE_SHIFT] = obj  # record_obj
            cls.stats[OBJ_USED] += 1
            return handle
    return pool._malloc_new_zspage(cls, handle)


def ref_free(pool: Pool, handle: int) -> None:
    """zs_free written with the references: the handle check, obj_free, fix_fullness_group,
    free_zspage, cache_free_handle."""
    ml = pool.migrate_lock
    ml.read_lock()
    try:
        obj, zspage = handle_to_zspage(pool, handle)
        cls = pool.size_class[zspage.class_idx]
        cls.lock.acquire()
    finally:
        ml.read_unlock()
    try:
        obj_free(pool, cls.size, obj)
        cls.stats[OBJ_USED] -= 1
        if fix_fullness_group(cls, zspage) == ZS_EMPTY:
            free_zspage(pool, cls, zspage)
    finally:
        cls.lock.release()
    pool.handles.free(handle)


def _usable_span(pool: Pool, obj: int, zspage: Any) -> tuple[int, int, int]:
    """(arena address of the usable bytes, bytes before the frame ends, next frame's address)."""
    pfn, idx = obj_to_location(obj, pool.obj_index_bits)
    cls = pool.size_class[zspage.class_idx]
    off = (cls.size * idx) % pool.page_size + (0 if zspage.huge else ZS_HANDLE_SIZE)
    pages = zspage.pages
    k = pages.index(pfn)
    nxt = pages[k + 1] * pool.page_size if k + 1 < len(pages) else -1
    return pfn * pool.page_size + off, pool.page_size - off, nxt


def ref_read(pool: Pool, handle: int, length: int) -> bytes:
    """read_object written with resolve_and_pin, walking the zspage's own page list."""
    obj, zspage = resolve_and_pin(pool, handle)
    try:
        start, room, nxt = _usable_span(pool, obj, zspage)
        arena = pool.memory.arena
        if length <= room:
            return arena[start : start + length].tobytes()
        return arena[start : start + room].tobytes() + arena[nxt : nxt + length - room].tobytes()
    finally:
        zspage.lock.read_unlock()


def ref_write(pool: Pool, handle: int, data: bytes) -> None:
    obj, zspage = resolve_and_pin(pool, handle)
    try:
        start, room, nxt = _usable_span(pool, obj, zspage)
        arena = pool.memory.arena
        n = min(len(data), room)
        arena[start : start + n] = data[:n]
        if len(data) > n:
            arena[nxt : nxt + len(data) - n] = data[n:]
    finally:
        zspage.lock.read_unlock()


# ------------------------------------------------------------------ comparing two pools


def snapshot(pool: Pool) -> dict[str, Any]:
    """Everything the hot paths change, in a form two twins can be compared by."""
    mem = pool.memory
    top = mem.high_water
    lists = []
    for cls in pool.classes:
        for fg in range(NR_ZS_FULLNESS):
            lists.append(
                (
                    cls.index,
                    fg,
                    [
                        (z.first_page, z.inuse, z.freeobj, z.fullness, z.class_idx, tuple(z.pages))
                        for z in cls.fullness_list[fg]
                    ],
                )
            )
    return {
        "cells": pool.handles.cells.tobytes(),
        "free_cells": list(pool.handles.free_cells),
        "stats": [list(cls.stats) for cls in pool.classes],
        "lists": lists,
        "pages_allocated": pool.pages_allocated,
        "high_water": top,
        "frames": mem.arena[: top * pool.page_size].tobytes(),
        "index": list(mem.index[:top]),
        "page_type": list(mem.page_type[:top]),
        "flags": bytes(mem.flags[:top]),
    }


def assert_twins(fast: Pool, ref: Pool, where: str) -> None:
    a, b = snapshot(fast), snapshot(ref)
    for key in a:
        assert a[key] == b[key], f"{where}: the twins differ in {key}"


class Twins:
    """Two pools fed the same history: `fast` through Pool's methods, `ref` through the
    reference compositions above."""

    def __init__(self, page_size: int = 4096, chain_size: int = 4, max_pages: int = 1 << 12):
        self.fast = Pool(
            "fast", PhysicalMemory(max_pages=max_pages, page_size=page_size), chain_size=chain_size
        )
        self.ref = Pool(
            "ref", PhysicalMemory(max_pages=max_pages, page_size=page_size), chain_size=chain_size
        )
        self.live: dict[int, int] = {}  # handle -> size
        self.steps = 0

    def both(self, fast: Callable[[Pool], Any], ref: Callable[[Pool], Any], what: str) -> Any:
        self.steps += 1
        ra, rb = fast(self.fast), ref(self.ref)
        assert ra == rb, f"step {self.steps} ({what}): {ra!r} != {rb!r}"
        assert_twins(self.fast, self.ref, f"step {self.steps} ({what})")
        return ra

    def malloc(self, size: int) -> None:
        h = self.both(lambda p: p.malloc(size), lambda p: ref_malloc(p, size), f"malloc {size}")
        self.live[h] = size

    def free(self, h: int) -> None:
        self.both(lambda p: p.free(h), lambda p: ref_free(p, h), f"free {h:#x}")
        del self.live[h]

    def write(self, h: int, data: bytes) -> None:
        self.both(
            lambda p: p.write_object(h, data), lambda p: ref_write(p, h, data), f"write {h:#x}"
        )

    def read(self, h: int, length: int) -> None:
        def mapped(p: Pool) -> bytes:
            with p.map_object(h, MapMode.RO) as view:
                return bytes(view[:length])

        want = ref_read(self.ref, h, length)
        assert ref_read(self.fast, h, length) == want
        self.both(
            lambda p: p.read_object(h, length), lambda p: ref_read(p, h, length), f"read {h:#x}"
        )
        self.both(mapped, lambda p: ref_read(p, h, length), f"map {h:#x}")

    def compact(self) -> None:
        self.both(lambda p: p.compact(), lambda p: p.compact(), "zs_compact")

    def migrate(self, pfn: int) -> None:
        self.both(
            lambda p: p.memory.migrate_pfn(pfn),
            lambda p: p.memory.migrate_pfn(pfn),
            f"migrate {pfn}",
        )

    def compact_memory(self) -> None:
        self.both(
            lambda p: p.memory.compact().migrated,
            lambda p: p.memory.compact().migrated,
            "compact_memory",
        )

    def close(self) -> None:
        for pool in (self.fast, self.ref):
            assert pool.flush_free_work(10)
            pool.check_invariants()
        for h in list(self.live):
            self.free(h)
        for pool in (self.fast, self.ref):
            assert pool.total_pages == 0
            pool.destroy()


def random_size(rnd: random.Random, classes: list[int]) -> int:
    """Mostly a few fixed classes (so zspages fill, empty and change lists often), some any
    size, some huge."""
    r = rnd.random()
    if r < 0.6:
        return rnd.choice(classes)
    if r < 0.9:
        return rnd.randint(1, 3000)
    return rnd.randint(3200, 4096)


def run_history(tw: Twins, rnd: random.Random, steps: int) -> None:
    classes = [rnd.randint(1, 2200) for _ in range(3)]
    for _ in range(steps):
        r = rnd.random()
        live = list(tw.live)
        if r < 0.45 or not live:
            tw.malloc(random_size(rnd, classes))
        elif r < 0.75:
            tw.free(rnd.choice(live))
        elif r < 0.85:
            h = rnd.choice(live)
            size = tw.live[h]
            tw.write(h, rnd.randbytes(rnd.randint(0, size)))
        elif r < 0.93:
            h = rnd.choice(live)
            tw.read(h, rnd.randint(0, tw.live[h]))
        elif r < 0.96:
            pfns = [p for p in tw.fast.memory.used_pfns()]
            tw.migrate(rnd.choice(pfns))
        elif r < 0.99:
            tw.compact()
        else:
            tw.compact_memory()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("page_size,chain_size", [(4096, 4), (4096, 8), (16384, 4)])
def test_hot_paths_agree_with_the_references(seed: int, page_size: int, chain_size: int) -> None:
    rnd = random.Random(f"{seed}-{page_size}-{chain_size}")
    tw = Twins(page_size=page_size, chain_size=chain_size)
    run_history(tw, rnd, 600)
    tw.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(min_value=20, max_value=300))
def test_hot_paths_agree_on_hypothesis_histories(rnd: random.Random, steps: int) -> None:
    tw = Twins(max_pages=1 << 11)
    run_history(tw, rnd, steps)
    tw.close()


# ------------------------------------------------------------------ the handle check


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        fn()
    except (InvalidHandle, TypeError) as e:
        return type(e).__name__, str(e)
    return "ok", ""


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_handle_check_copies_agree_with_checked_obj(data: st.DataObject) -> None:
    pool = Pool("handles", PhysicalMemory(max_pages=1 << 10))
    live = [pool.malloc(s) for s in data.draw(st.lists(st.integers(1, 4096), max_size=20))]
    freed = live[::3]
    for h in freed:
        pool.free(h)
    live = [h for h in live if h not in freed]
    cells = len(pool.handles.cells)
    known = live + freed if live + freed else [8]
    handle: Any = data.draw(
        st.one_of(  # deliberately of any type: bad ones raise TypeError
            st.sampled_from(known),
            st.builds(int.__add__, st.sampled_from(known), st.integers(-7, 7)),  # misaligned
            st.integers(min_value=-64, max_value=(cells + 4) << HANDLE_SHIFT),
            st.sampled_from([0, None, "8", 8.0, 1 << 70, -(1 << 70)]),
        )
    )
    want = outcome(lambda: pool.handles.checked_obj(handle))

    def mapped() -> None:
        with pool.map_object(handle, MapMode.RO):
            pass

    assert outcome(lambda: pool.read_object(handle, 0)) == want
    assert outcome(lambda: pool.write_object(handle, b"")) == want
    assert outcome(mapped) == want
    assert outcome(lambda: resolve_and_pin(pool, handle)[1].lock.read_unlock()) == want
    if want[0] != "ok" and handle != 0:  # zs_free(0) is a no-op, as in the kernel
        assert outcome(lambda: pool.free(handle)) == want
    assert not pool.migrate_lock.is_locked()
    pool.check_invariants()
    for h in live:
        pool.free(h)
    pool.destroy()
