"""Model-based test of the zsmalloc pool: random malloc/map/free/compact/migrate sequences
checked against a dict model after every step, plus the accounting invariants (docs/zsmalloc.md,
edge case "Accounting invariants").

Default profile: bounded to well under a minute. ``pytest -m soak`` runs a bigger profile.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from allocator import MapMode, Pool
from allocator.locks import set_lockdep
from allocator.memory import PhysicalMemory
from support.alloc_invariants import (
    PAGE_SIZE,
    REF_BY_INDEX,
    check_classes_table,
    check_pool_invariants,
    ref_class_for_alloc,
)

# Sizes: uniform over 1..4096 plus the boundaries of docs/zsmalloc.md's edge cases (size limits,
# class lookup, spanning objects, the huge class).
INTERESTING_SIZES = [1, 8, 24, 25, 40, 41, 72, 120, 664, 1352, 2040, 3064, 3256, 3257, 4088, 4096]
SIZES = st.one_of(st.integers(1, PAGE_SIZE), st.sampled_from(INTERESTING_SIZES))
# A few classes with few objects per zspage, so that zspages fill up, fragment, and
# compaction has something to do (class 48 spans pages, 1024/1360/3072/3264 hold 3-5 objects).
CLUSTERED = st.sampled_from([40, 100, 700, 1000, 1000, 1352, 2040, 3000, 3000, 3256])


def pattern(seed: int, n: int) -> bytes:
    """A byte pattern that differs per object and per position (never all zeros)."""
    base = bytes(((seed * 131 + i * 7 + (i >> 8)) & 0xFF) | 1 for i in range(min(n, 257)))
    return (base * (n // len(base) + 1))[:n] if n else b""


class PoolMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.memory = PhysicalMemory(max_pages=1 << 14)
        self.pool = Pool("sm", memory=self.memory)
        self.model: dict[int, bytes] = {}
        self.seed = 0
        self.compacted_total = 0

    @initialize()
    def lockdep_on(self) -> None:
        set_lockdep(True)

    # -- helpers ---------------------------------------------------------------------------
    def _write(self, handle: int, data: bytes, mode: MapMode) -> None:
        with self.pool.map_object(handle, mode) as buf:
            assert len(buf) >= len(data), f"mapping of {len(buf)} bytes < object of {len(data)}"
            buf[: len(data)] = data

    def _read(self, handle: int, n: int) -> bytes:
        with self.pool.map_object(handle, MapMode.RO) as buf:
            return bytes(buf[:n])

    def _pool_pfns(self) -> list[int]:
        return [
            pfn for pfn in range(self.memory.high_water) if self.memory.private[pfn] is not None
        ]

    # -- rules -----------------------------------------------------------------------------
    @rule(target=handles, size=SIZES, wo=st.booleans())
    def malloc(self, size: int, wo: bool) -> int:
        return self._malloc(size, wo)

    @rule(target=handles, size=CLUSTERED)
    def malloc_clustered(self, size: int) -> int:
        return self._malloc(size, True)

    def _malloc(self, size: int, wo: bool) -> int:
        before = set(self.model)
        h = self.pool.malloc(size)
        assert isinstance(h, int) and h != 0
        assert h not in before, f"malloc returned live handle {h:#x} again"
        self.seed += 1
        data = pattern(self.seed, size)
        self._write(h, data, MapMode.WO if wo else MapMode.RW)
        self.model[h] = data
        return h

    @rule(h=handles, rw=st.booleans())
    def rewrite(self, h: int, rw: bool) -> None:
        if h not in self.model:
            return
        self.seed += 1
        data = pattern(self.seed, len(self.model[h]))
        if rw:
            # RW must see the current contents before we overwrite them.
            with self.pool.map_object(h, MapMode.RW) as buf:
                assert bytes(buf[: len(data)]) == self.model[h]
                buf[: len(data)] = data
        else:
            self.pool.write_object(h, data)
        self.model[h] = data

    @rule(h=handles)
    def read(self, h: int) -> None:
        if h not in self.model:
            return
        want = self.model[h]
        assert self._read(h, len(want)) == want
        assert self.pool.read_object(h, len(want)) == want

    @rule(h=consumes(handles))
    def free(self, h: int) -> None:
        if h not in self.model:
            return
        del self.model[h]
        self.pool.free(h)

    @rule()
    def compact(self) -> None:
        before = self.pool.total_pages
        pc_before = self.pool.stats.pages_compacted
        freeable = self.pool.freeable_pages()
        # The shrinker count is the sum of zs_can_compact, i.e. the table's freeable total.
        assert freeable == check_classes_table(self.pool).total[5]
        freed = self.pool.compact()
        assert freed >= 0
        # Single-threaded: no page is locked, so every free is synchronous (docs/zsmalloc.md,
        # edge cases "Deferred free when a page lock is busy", "pages_compacted counts deferred
        # frees").
        assert before - self.pool.total_pages == freed, (before, self.pool.total_pages, freed)
        assert self.pool.stats.pages_compacted == pc_before + freed
        # Each freed source needs zs_can_compact > 0 first, so no more than the count is freed.
        assert freed <= freeable, (freed, freeable)
        # Post-condition without contention (docs/zsmalloc.md, edge case "When compaction of a
        # class stops"): a class either has nothing freeable left or
        # every ALMOST_* zspage but the last partly drained source has become a destination.
        t = check_classes_table(self.pool, self.model_sizes())
        for idx, r in t.rows.items():
            assert r.freeable == 0 or r.almost_full + r.almost_empty <= 1, (
                f"class {idx} (size {r.size}) left compactable after zs_compact: {r}"
            )
        self.compacted_total += freed
        event(f"compact freed pages: {'0' if not freed else '>0'}")

    @rule(data=st.data())
    def migrate_frame(self, data: st.DataObject) -> None:
        pfns = self._pool_pfns()
        if not pfns:
            return
        pfn = data.draw(st.sampled_from(pfns), label="pfn")
        total = self.pool.total_pages
        ok = self.memory.migrate_pfn(pfn)
        assert ok in (True, False)
        event(f"migrate_pfn: {ok}")
        if ok:
            assert self.memory.private[pfn] is None, "migrated-away frame still owned by the pool"
        assert self.pool.total_pages == total, "migration must not change pages_allocated"

    @rule()
    def memory_compact(self) -> None:
        total = self.pool.total_pages
        hw = self.memory.high_water
        self.memory.compact()
        assert self.pool.total_pages == total
        assert self.memory.high_water <= hw

    @rule(n=st.integers(1, 40), size=CLUSTERED, keep_every=st.integers(2, 5))
    def fragment(self, n: int, size: int, keep_every: int) -> None:
        """Allocate a run of objects and free most of them: builds ALMOST_EMPTY zspages."""
        hs = [self._malloc(size, True) for _ in range(n)]
        for i, h in enumerate(hs):
            if i % keep_every:
                del self.model[h]
                self.pool.free(h)

    # -- invariants ------------------------------------------------------------------------
    def model_sizes(self) -> list[int]:
        return [len(v) for v in self.model.values()]

    @invariant()
    def contents_and_accounting(self) -> None:
        for h, want in self.model.items():
            got = self._read(h, len(want))
            assert got == want, f"handle {h:#x}: contents changed"
        check_pool_invariants(self.pool, {h: len(v) for h, v in self.model.items()})
        # Pages actually held in memory by the pool equal pages_allocated (no leak, no double use).
        assert len(self._pool_pfns()) == self.pool.total_pages

    def teardown(self) -> None:
        try:
            for h in list(self.model):
                self.pool.free(h)
            self.model.clear()
            if self.pool.total_pages:
                # Only EMPTY zspages can be left: a full compaction must not find anything.
                check_classes_table(self.pool, [])
            self.pool.destroy()
        finally:
            set_lockdep(False)


def _run(max_examples: int, steps: int) -> None:
    run_state_machine_as_test(
        PoolMachine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_pool_state_machine() -> None:
    _run(max_examples=int(os.environ.get("ZS_SM_EXAMPLES", "60")), steps=50)


@pytest.mark.soak
def test_pool_state_machine_soak() -> None:
    _run(max_examples=200, steps=150)  # about 5 minutes


def test_class_table_oracle_self_check() -> None:
    """The oracle itself: 69 classes, and the class boundaries of docs/zsmalloc.md, edge case
    "Class lookup adds the handle size"."""
    assert len(REF_BY_INDEX) == 69
    assert ref_class_for_alloc(24).size == 32 and ref_class_for_alloc(25).size == 48
    assert ref_class_for_alloc(3256).size == 3264 and ref_class_for_alloc(3257).size == 4096
    assert ref_class_for_alloc(656 - 8).size == 672
