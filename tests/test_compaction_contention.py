"""Compaction and migrate_lock contention (docs/zsmalloc.md, "Compaction and the shrinker", and
the edge cases "When compaction of a class stops" and "Compaction waits for mapped objects").

The scenarios are made deterministic by holding a mapping: zs_map_object returns holding the
zspage read lock, so a compactor that isolates that zspage blocks in migrate_write_lock while
it holds write(migrate_lock). While it is blocked, other threads can be queued on
migrate_lock at will; the mapping is then dropped and compaction goes on.

Layout used (class 112: 2 pages, 73 objects, ALMOST_EMPTY iff inuse <= 54), created in this
order so that the ALMOST_FULL list is [D1, D2]:
    D2: 56 objects (ALMOST_FULL, 17 free slots)
    D1: 70 objects (ALMOST_FULL, 3 free slots)   <- list head, first destination
    S : 10 objects (ALMOST_EMPTY)                <- the only source
zs_can_compact = (219 - 136) // 73 * 2 = 2 pages. Without contention S drains into D1 (3) and
D2 (7) and is freed. With a reader queued on migrate_lock, compaction stops the class as soon
as D1 fills up: S keeps 7 objects, D2 is untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from allocator import MapMode, Pool
from allocator.locks import MIGRATE_LOCK
from support import alloc_invariants as ai
from support.alloc_invariants import ZS_ALMOST_EMPTY, ZS_ALMOST_FULL, ZS_FULL, check_pool_invariants

SIZE = 100  # class 112


def data(i: int, n: int = SIZE) -> bytes:
    return bytes(((i * 37 + k) & 0xFF) | 1 for k in range(n))


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


class Layout:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        groups = [[pool.malloc(SIZE) for _ in range(73)] for _ in range(3)]
        keep = (56, 70, 10)  # D2, D1, S
        self.live: dict[int, bytes] = {}
        for g, k in zip(groups, keep):
            for h in g[k:]:
                pool.free(h)
            for h in g[:k]:
                self.live[h] = data(len(self.live))
                pool.write_object(h, self.live[h])
        self.d2, self.d1, self.s = (ai.zspage_of(pool, g[0]) for g in groups)
        self.s_handles = groups[2][:10]
        self.d1_handles = groups[1][:70]
        self.cls = ai.class_of(pool, self.s)
        assert ai.fullness_list(self.cls, ZS_ALMOST_FULL) == [self.d1, self.d2]
        assert ai.fullness_list(self.cls, ZS_ALMOST_EMPTY) == [self.s]
        assert pool.freeable_pages() == 2
        # An object of another class, for the reader.
        self.other = pool.malloc(3000)
        self.live[self.other] = data(999, 3000)
        pool.write_object(self.other, self.live[self.other])

    def verify(self) -> None:
        for h, want in self.live.items():
            assert self.pool.read_object(h, len(want)) == want, f"object {h:#x} changed"
        check_pool_invariants(self.pool, {h: len(v) for h, v in self.live.items()})


class Holder(threading.Thread):
    """Maps `handle` (zspage read lock held) until release(); optionally writes through it."""

    def __init__(
        self, pool: Pool, handle: int, mode: MapMode = MapMode.RO, write: bytes | None = None
    ) -> None:
        super().__init__(daemon=True, name="holder")
        self.pool, self.handle, self.mode, self.write = pool, handle, mode, write
        self.mapped = threading.Event()
        self._go = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.pool.map_object(self.handle, self.mode) as buf:
                self.mapped.set()
                self._go.wait(20)
                if self.write is not None:
                    buf[: len(self.write)] = self.write
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e
            self.mapped.set()

    def release(self) -> None:
        self._go.set()
        self.join(10)
        assert not self.is_alive(), "holder did not finish"
        assert self.error is None, self.error


class Runner(threading.Thread):
    def __init__(self, fn: Callable[[], object], name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e
        finally:
            self.done.set()

    def finish(self, timeout: float = 10.0) -> object:
        assert self.done.wait(timeout), f"{self.name} did not finish"
        assert self.error is None, f"{self.name} failed: {self.error!r}"
        return self.result


def test_uncontended_baseline(pool: Pool) -> None:
    """Without a waiter the same layout compacts completely: S is drained and freed."""
    lay = Layout(pool)
    assert pool.compact() == 2
    assert ai.zspage_of(pool, lay.s_handles[0]) is not lay.s
    assert lay.d1.inuse == 73 and lay.d2.inuse == 63
    lay.verify()


def test_compaction_gives_way_to_a_queued_reader(pool: Pool) -> None:
    lay = Layout(pool)
    ml = ai.migrate_lock(pool)
    holder = Holder(pool, lay.s_handles[0])
    holder.start()
    assert holder.mapped.wait(10)

    compactor = Runner(pool.compact, "compactor")
    compactor.start()
    # The compactor isolated S and now waits for S's write lock, holding write(migrate_lock).
    wait_until(lambda: lay.s.lock.is_contended(), "compactor blocked on the mapped source")
    assert ml.is_write_locked()

    contentions = MIGRATE_LOCK.read.contentions
    reader = Runner(lambda: pool.read_object(lay.other, 3000), "reader")
    reader.start()
    wait_until(ml.is_contended, "reader queued on migrate_lock")
    time.sleep(0.05)
    assert not reader.done.is_set(), "the reader must wait while compaction holds migrate_lock"

    holder.release()  # compaction proceeds, fills D1, sees the queued reader
    freed = compactor.finish()
    assert reader.finish() == lay.live[lay.other], "the reader proceeded and read its object"
    assert MIGRATE_LOCK.read.contentions > contentions, "lock_stat: the reader's wait is counted"

    assert freed == 0, "the class was abandoned before the source was drained"
    assert lay.d1.inuse == 73 and lay.d1.fullness == ZS_FULL, "the first destination was filled"
    assert lay.s.inuse == 7, "the partly drained source went back with 7 objects"
    assert lay.s.fullness == ZS_ALMOST_EMPTY
    assert lay.d2.inuse == 56, "no second destination was taken after the contention"
    assert pool.freeable_pages() == 2
    lay.verify()

    # Once nobody waits, compaction finishes the job.
    assert pool.compact() == 2
    assert lay.d2.inuse == 63
    assert pool.freeable_pages() == 0
    lay.verify()


def test_compactor_waits_for_a_mapped_destination(pool: Pool) -> None:
    """With an object of the destination mapped RW, compaction waits in
    migrate_write_lock(dst); the write made through the mapping is not lost, and while it
    waits zs_free / zs_map_object on any class block, zs_malloc of another class proceeds
    and zs_malloc of the class being compacted waits for its class lock (docs/zsmalloc.md,
    edge case "Compaction waits for mapped objects")."""
    lay = Layout(pool)
    ml = ai.migrate_lock(pool)
    target = lay.d1_handles[5]
    new = data(4242)
    holder = Holder(pool, target, MapMode.RW, write=new)
    holder.start()
    assert holder.mapped.wait(10)

    compactor = Runner(pool.compact, "compactor")
    compactor.start()
    wait_until(lambda: lay.d1.lock.is_contended(), "compactor blocked on the mapped destination")
    assert ml.is_write_locked()

    free_other = Runner(lambda: pool.free(lay.other), "free-other-class")
    map_src = Runner(lambda: pool.read_object(lay.s_handles[1], SIZE), "map-same-class")
    same_class_malloc = Runner(lambda: pool.malloc(SIZE), "malloc-same-class")
    for r in (free_other, map_src, same_class_malloc):
        r.start()
    other_class_malloc = Runner(lambda: pool.malloc(1000), "malloc-other-class")
    other_class_malloc.start()
    h_other = other_class_malloc.finish(5)  # only class.lock of class 1024: proceeds
    assert isinstance(h_other, int)
    time.sleep(0.1)
    for r in (free_other, map_src, same_class_malloc):
        assert not r.done.is_set(), f"{r.name} must wait while compaction is blocked"
    assert ml.is_contended()

    holder.release()
    # The blocked free/map are queued on migrate_lock: once D1 fills up, compaction gives way.
    assert compactor.finish() == 0
    assert lay.d1.inuse == 73 and lay.s.inuse == 7
    free_other.finish()
    del lay.live[lay.other]
    assert map_src.finish() == lay.live[lay.s_handles[1]]
    h_same = same_class_malloc.finish()
    assert isinstance(h_same, int)
    lay.live[target] = new + lay.live[target][len(new) :]
    assert pool.read_object(target, SIZE) == new, "the write under the mapping survived"
    pool.free(h_same)
    pool.free(h_other)
    lay.verify()


def test_migration_waits_for_a_mapped_page(pool: Pool) -> None:
    """zs_page_migrate takes the zspage write lock too: a mapped object pins its page."""
    lay = Layout(pool)
    h = lay.s_handles[0]
    pfn = ai.location(pool, h)[0]
    holder = Holder(pool, h)
    holder.start()
    assert holder.mapped.wait(10)
    mig = Runner(lambda: pool.memory.migrate_pfn(pfn), "migrate")
    mig.start()
    wait_until(lambda: lay.s.lock.is_contended(), "migration blocked on the mapped zspage")
    time.sleep(0.05)
    assert not mig.done.is_set()
    holder.release()
    assert mig.finish() is True
    assert ai.location(pool, h)[0] != pfn
    lay.verify()
