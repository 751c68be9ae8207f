"""Tests of allocator.memory without the pool: a fake MovableOps owner stands in for zsmalloc."""

# Threads run `lambda: (f(), g())`: two calls in one target; the tuple of Nones is unused.
# mypy: disable-error-code="func-returns-value"
from __future__ import annotations

import functools
import random
import re
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allocator import locks
from allocator.locks import CLASS_LOCK, PAGE_LOCK, LockOrderViolation, Mutex
from allocator.memory import (
    INDEX_NONE,
    PG_ISOLATED,
    PG_MOVABLE,
    PG_PRIVATE,
    MigrateStatus,
    MovableOps,
    OutOfMemory,
    PhysicalMemory,
)
from support.fake_owner import FakeOwner, rss_bytes


def run_threads(targets: list[Callable[[], None]], timeout: float = 15.0) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"watchdog: threads stuck after {timeout}s"
    if errors:
        raise errors[0]


def test_fake_owner_is_movable_ops() -> None:
    assert isinstance(FakeOwner(PhysicalMemory(max_pages=4)), MovableOps)


# ---------------------------------------------------------------------------- frame allocator


def test_lowest_pfn_first_and_reuse() -> None:
    mem = PhysicalMemory(max_pages=64)
    assert [mem.alloc_page() for _ in range(8)] == list(range(8))
    assert mem.nr_used == 8 and mem.high_water == 8
    for p in (5, 2, 6):
        mem.free_page(p)
    assert mem.nr_used == 5 and mem.high_water == 8
    assert [mem.alloc_page() for _ in range(4)] == [2, 5, 6, 8]


def test_high_water_drops_over_free_frames() -> None:
    mem = PhysicalMemory(max_pages=64)
    for _ in range(10):
        mem.alloc_page()
    for p in (3, 8, 7, 6):
        mem.free_page(p)
    assert mem.high_water == 10
    mem.free_page(9)
    assert mem.high_water == 6  # 9 freed, and 8, 7, 6 were already free
    assert mem.alloc_page() == 3
    assert [mem.alloc_page() for _ in range(3)] == [6, 7, 8]
    assert mem.high_water == 9


def test_out_of_memory() -> None:
    mem = PhysicalMemory(max_pages=4)
    for _ in range(4):
        mem.alloc_page()
    with pytest.raises(OutOfMemory):
        mem.alloc_page()
    assert isinstance(OutOfMemory(), MemoryError)
    mem.free_page(1)
    assert mem.alloc_page() == 1


def test_bad_frees() -> None:
    mem = PhysicalMemory(max_pages=8)
    p = mem.alloc_page()
    mem.free_page(p)
    with pytest.raises(ValueError):
        mem.free_page(p)  # double free
    with pytest.raises(ValueError):
        mem.free_page(5)  # never allocated
    q = mem.alloc_page()
    mem.lock_page(q)
    with pytest.raises(ValueError):
        mem.free_page(q)  # freeing a locked page (kernel: bad_page)
    mem.unlock_page(q)
    mem.free_page(q)


def test_random_alloc_free_matches_model() -> None:
    rnd = random.Random(1)
    mem = PhysicalMemory(max_pages=300)
    used: set[int] = set()
    for _ in range(5000):
        if used and (rnd.random() < 0.5 or len(used) == 300):
            p = rnd.choice(sorted(used))
            mem.free_page(p)
            used.remove(p)
        else:
            expect = min(set(range(300)) - used)
            assert mem.alloc_page() == expect
            used.add(expect)
        assert mem.nr_used == len(used)
        assert mem.high_water == (max(used) + 1 if used else 0)
    assert len(mem._heap) <= 2 * 300 + 1024


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_free_drops_contents_in_batches(backing: str) -> None:
    """A freed frame keeps its bytes until DIRTY_FRAMES frees have gathered (reused before
    that, it comes back with stale bytes, as alloc_page without __GFP_ZERO); then every
    dirty frame is dropped (MADV_DONTNEED, or a punched hole with the memfd arena: reads
    zeros), in runs of neighbours, and drop_free_frames does it now.  The memfd-only check
    that the blocks really go is in test_memory_memfd.py."""
    from allocator.memory import DIRTY_FRAMES

    mem = PhysicalMemory(max_pages=4 * DIRTY_FRAMES, backing=backing)
    p = mem.alloc_page()
    mem.view(p)[:] = b"\xab" * 4096
    mem.alloc_page()  # keep p below the top so it is reused from the heap
    mem.free_page(p)
    assert mem.alloc_page() == p
    assert bytes(mem.view(p)) == b"\xab" * 4096  # reused before the batch: stale
    mem.free_page(p)
    mem.drop_free_frames()
    assert mem.alloc_page() == p and bytes(mem.view(p)) == bytes(4096)
    # A full batch drops every frame in it, in runs (one call per run of neighbours).
    frames = [mem.alloc_page() for _ in range(DIRTY_FRAMES + 8)]
    for f in frames:
        mem.view(f)[:] = b"\xcd" * 4096
    keep = frames[-1]  # stays allocated above the others
    for f in frames[:DIRTY_FRAMES]:
        mem.free_page(f)
    assert not mem._dirty
    assert all(bytes(mem.view(f)) == bytes(4096) for f in frames[:DIRTY_FRAMES])
    assert bytes(mem.view(keep)) == b"\xcd" * 4096
    # scattered frees (many runs of one frame) are dropped too
    rest = [f for f in frames[DIRTY_FRAMES:] if f != keep]
    for f in rest[::2]:
        mem.free_page(f)
    mem.drop_free_frames()
    assert all(bytes(mem.view(f)) == bytes(4096) for f in rest[::2])
    assert all(bytes(mem.view(f)) == b"\xcd" * 4096 for f in rest[1::2])


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_small_page_size_zero_filled(backing: str) -> None:
    mem = PhysicalMemory(max_pages=16, page_size=512, backing=backing)
    p = mem.alloc_page()
    mem.view(p)[:] = b"\x01" * 512
    mem.free_page(p)
    mem.drop_free_frames()
    assert mem.alloc_page() == p and bytes(mem.view(p)) == bytes(512)


def test_rss_follows_frames_in_use() -> None:
    # 16 GiB of address space, nothing touched yet; no prefaulting, which runs RSS up to a
    # chunk ahead of the frames in use (test_prefault)
    mem = PhysicalMemory(max_pages=1 << 22, prefault=False)
    n = 8192  # 32 MiB
    pfns = [mem.alloc_page() for _ in range(n)]
    before = rss_bytes()
    for p in pfns:
        mem.view(p)[::1024] = b"\x5a" * 4
    touched = rss_bytes()
    assert touched - before > n * 4096 * 3 // 4
    for p in pfns:
        mem.free_page(p)
    after = rss_bytes()
    assert touched - after > n * 4096 * 3 // 4
    assert mem.high_water == 0 and mem.nr_used == 0


def test_metadata_arrays_grow_in_place_and_reset_on_free() -> None:
    mem = PhysicalMemory(max_pages=20000)
    arrays = (mem.private, mem.index, mem.page_type, mem.flags)
    pfns = [mem.alloc_page() for _ in range(10000)]
    assert all(a is b for a, b in zip(arrays, (mem.private, mem.index, mem.page_type, mem.flags)))
    assert all(len(a) >= 10000 for a in arrays)
    p = pfns[9999]
    assert mem.private[p] is None and mem.index[p] == INDEX_NONE and mem.page_type[p] == 0
    owner = FakeOwner(mem)
    mem.private[p] = owner
    mem.index[p] = 77
    mem.page_type[p] = 96
    mem.set_page_flag(p, PG_PRIVATE)
    mem.set_movable(p, owner)
    assert mem.flags[p] == PG_PRIVATE | PG_MOVABLE and mem.is_movable(p)
    assert mem.test_page_flag(p, PG_PRIVATE) and not mem.test_page_flag(p, PG_ISOLATED)
    mem.clear_page_flag(p, PG_PRIVATE)
    assert not mem.test_page_flag(p, PG_PRIVATE) and mem.test_page_flag(p, PG_MOVABLE)
    mem.free_page(p)
    assert mem.private[p] is None and mem.index[p] == INDEX_NONE
    assert mem.page_type[p] == 0 and mem.flags[p] == 0 and not mem.is_movable(p)


def test_view_of_free_frame_rejected_under_lockdep(lockdep: None) -> None:
    mem = PhysicalMemory(max_pages=8)
    with pytest.raises(ValueError):
        mem.view(3)


# ---------------------------------------------------------------------------- page locks


def test_page_lock_basics() -> None:
    mem = PhysicalMemory(max_pages=8)
    pfns = [mem.alloc_page() for _ in range(4)]
    for p in pfns:  # one thread locks every frame of a zspage
        mem.lock_page(p)
    assert all(mem.page_is_locked(p) for p in pfns)
    assert not mem.trylock_page(pfns[2])
    for p in pfns:
        mem.unlock_page(p)
    assert mem.trylock_page(pfns[2])
    mem.unlock_page(pfns[2])
    with pytest.raises(RuntimeError):
        mem.unlock_page(pfns[2])
    with mem.page_locked(pfns[1]) as p:
        assert p == pfns[1] and mem.page_is_locked(p)
    assert not mem.page_is_locked(pfns[1])


def test_page_lock_blocks_and_wakes() -> None:
    mem = PhysicalMemory(max_pages=200)
    pfns = [mem.alloc_page() for _ in range(130)]
    a, b = pfns[1], pfns[65]  # same hashed wait queue
    mem.lock_page(a)
    mem.lock_page(b)
    got: list[int] = []

    def waiter(p: int) -> None:
        mem.lock_page(p)
        got.append(p)
        mem.unlock_page(p)

    ts = [threading.Thread(target=waiter, args=(p,), daemon=True) for p in (a, b)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    assert got == []
    mem.unlock_page(b)
    ts[1].join(5)
    assert got == [b]
    mem.unlock_page(a)
    ts[0].join(5)
    assert got == [b, a]


def test_page_lock_mutual_exclusion() -> None:
    mem = PhysicalMemory(max_pages=16)
    pfns = [mem.alloc_page() for _ in range(3)]
    counters = dict.fromkeys(pfns, 0)

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(1500):
            p = rnd.choice(pfns)
            with mem.page_locked(p):
                v = counters[p]
                if rnd.random() < 0.1:
                    time.sleep(0)
                counters[p] = v + 1

    run_threads([functools.partial(work, s) for s in range(4)])
    assert sum(counters.values()) == 6000


def test_page_lock_lockdep(lockdep: None) -> None:
    mem = PhysicalMemory(max_pages=8)
    p, q = mem.alloc_page(), mem.alloc_page()
    cl = Mutex(CLASS_LOCK)
    with mem.page_locked(p), mem.page_locked(q):  # same class nests
        with cl:
            pass
    with cl:
        assert mem.trylock_page(p)  # free_zspage: trylock under class->lock
        mem.unlock_page(p)
        with pytest.raises(LockOrderViolation):
            mem.lock_page(p)  # a sleeping lock_page there would invert
        assert not mem.page_is_locked(p)
    with mem.page_locked(p):
        with pytest.raises(LockOrderViolation, match="recursive"):
            mem.lock_page(p)
    assert locks.held_locks() == []


def test_page_lock_released_by_other_thread(lockdep: None) -> None:
    mem = PhysicalMemory(max_pages=8)
    p = mem.alloc_page()
    mem.lock_page(p)
    run_threads([lambda: mem.unlock_page(p)])
    assert locks.held_locks() == []
    mem.lock_page(p)
    mem.unlock_page(p)


def test_page_lock_stat() -> None:
    mem = PhysicalMemory(max_pages=8)
    p = mem.alloc_page()
    before_acq, before_con = PAGE_LOCK.acquisitions, PAGE_LOCK.contentions
    mem.lock_page(p)
    mem.unlock_page(p)
    assert PAGE_LOCK.acquisitions - before_acq == 1 and PAGE_LOCK.contentions == before_con
    mem.lock_page(p)
    t = threading.Thread(target=lambda: (mem.lock_page(p), mem.unlock_page(p)), daemon=True)
    t.start()
    wait_queue = mem._waitq[p % len(mem._waitq)]
    deadline = time.monotonic() + 5
    while not wait_queue.waiters:  # the other thread is asleep on the page lock
        assert time.monotonic() < deadline
        time.sleep(0.001)
    mem.unlock_page(p)
    t.join(5)
    assert PAGE_LOCK.contentions == before_con + 1


# ---------------------------------------------------------------------------- migration


def test_migrate_success_protocol() -> None:
    mem = PhysicalMemory(max_pages=32)
    owner = FakeOwner(mem)
    for obj in range(6):
        owner.alloc(obj)
    assert owner.try_free(1) and owner.try_free(2)
    src = owner.where[4]
    assert mem.migrate_pfn(src)
    new = owner.where[4]
    assert new == 1  # the lowest free frame
    assert owner.calls == [("isolate", src), ("migrate", src, 1)]
    owner.check(4)
    assert mem.is_free(src) and mem.private[src] is None and mem.flags[src] == 0
    assert mem.flags[new] == PG_PRIVATE | PG_MOVABLE
    assert not mem.page_is_locked(src) and not mem.page_is_locked(new)
    vm = mem.vmstat()
    assert (
        vm["pgmigrate_success"] == 1 and vm["pgmigrate_fail"] == 0 and vm["compact_isolated"] == 1
    )
    assert mem.nr_used == 4


def test_migrate_failure_puts_back_and_frees_target() -> None:
    mem = PhysicalMemory(max_pages=32)
    owner = FakeOwner(mem, fail_migrate=True)
    for obj in range(4):
        owner.alloc(obj)
    owner.try_free(0)
    src = owner.where[3]
    used = mem.nr_used
    assert mem.migrate_pfn_status(src) is MigrateStatus.FAILED
    assert owner.calls == [("isolate", src), ("migrate", src, 0), ("putback", src)]
    assert owner.where[3] == src and mem.is_movable(src) and not mem.flags[src] & PG_ISOLATED
    assert mem.is_free(0) and mem.nr_used == used
    assert not mem.page_is_locked(src) and not owner.isolated
    owner.check(3)
    vm = mem.vmstat()
    assert vm["pgmigrate_fail"] == 1 and vm["pgmigrate_success"] == 0


def test_migrate_refusals() -> None:
    mem = PhysicalMemory(max_pages=8)
    owner = FakeOwner(mem, refuse_isolate=True)
    p = owner.alloc(1)
    plain = mem.alloc_page()  # allocated but not movable
    assert mem.migrate_pfn_status(p) is MigrateStatus.ISOLATE_FAILED
    assert owner.calls == [("isolate", p)]
    assert mem.migrate_pfn_status(plain) is MigrateStatus.NOT_MOVABLE
    assert mem.migrate_pfn_status(6) is MigrateStatus.NOT_MOVABLE  # free frame
    assert mem.migrate_pfn_status(10**6) is MigrateStatus.NOT_MOVABLE  # beyond the arena
    assert not mem.migrate_pfn(-1)
    owner.refuse_isolate = False
    mem.lock_page(p)
    assert mem.migrate_pfn_status(p) is MigrateStatus.BUSY  # trylock failed
    mem.unlock_page(p)
    assert mem.migrate_pfn_status(p, lower_only=True) is MigrateStatus.NO_TARGET
    assert owner.calls[-2:] == [("isolate", p), ("putback", p)]
    assert mem.nr_used == 2 and mem.vmstat()["pgmigrate_fail"] == 0
    assert mem.migrate_pfn(p)  # to the lowest free frame: 2, above it
    assert owner.where[1] == 2


def test_owner_free_during_migration_is_deferred() -> None:
    """A frame freed by its owner while a migrator pins it is reused only after the migrator
    lets go (put_page), never handed out under the migrator's feet."""
    mem = PhysicalMemory(max_pages=8)
    owner = FakeOwner(mem)
    p = owner.alloc(1)
    mem.alloc_page()  # keep p below the top

    class Freeing(FakeOwner):
        def isolate_page(self, pfn: int) -> bool:
            # the owner's own free path runs concurrently and gets the frame freed
            self.mem.clear_movable(pfn)
            self.mem.free_page(pfn)
            assert self.mem.alloc_page() != pfn  # not reusable yet
            return False

    f = Freeing(mem)
    mem.set_movable(p, f)
    assert mem.migrate_pfn_status(p) is MigrateStatus.ISOLATE_FAILED
    assert mem.is_free(p) and mem.alloc_page() == p


def test_migrate_under_lockdep(lockdep: None) -> None:
    mem = PhysicalMemory(max_pages=16)
    owner = FakeOwner(mem)
    for obj in range(4):
        owner.alloc(obj)
    owner.try_free(0)
    assert mem.migrate_pfn(owner.where[3])
    assert mem.compact().success
    assert locks.held_locks() == []


# ---------------------------------------------------------------------------- compaction


def test_compact_moves_high_frames_down() -> None:
    mem = PhysicalMemory(max_pages=128)
    owner = FakeOwner(mem)
    for obj in range(40):
        owner.alloc(obj)
    unmovable = mem.alloc_page()  # pfn 40: a frame compaction cannot move
    for obj in range(40):
        if obj % 3:
            assert owner.try_free(obj)
    survivors = sorted(owner.where)
    before = mem.high_water
    assert before == 41
    res = mem.compact()
    assert res.success and res.failed == 0
    assert res.high_water_before == 41 and res.high_water_after == mem.high_water == 41
    assert res.migrated > 0
    # everything movable now sits in the lowest frames
    assert sorted(owner.where.values()) == list(range(len(survivors)))
    for obj in survivors:
        owner.check(obj)
    mem.free_page(unmovable)
    assert mem.high_water == len(survivors)
    vm = mem.vmstat()
    assert vm["pgmigrate_success"] == res.migrated == vm["compact_isolated"]
    assert vm["compact_success"] == 1 and vm["compact_fail"] == 0 and vm["compact_stall"] == 0
    assert vm["compact_migrate_scanned"] == res.migrate_scanned > 0
    assert vm["compact_free_scanned"] == res.free_scanned > 0
    again = mem.compact(direct=True)
    assert again.migrated == 0 and again.success
    assert mem.vmstat()["compact_stall"] == 1


def test_compact_counts_failures() -> None:
    mem = PhysicalMemory(max_pages=32)
    owner = FakeOwner(mem, fail_migrate=True)
    for obj in range(6):
        owner.alloc(obj)
    owner.try_free(0)
    owner.try_free(1)
    res = mem.compact()
    assert not res.success and res.failed >= 1 and res.migrated == 0
    assert mem.high_water == 6 and mem.nr_used == 4
    vm = mem.vmstat()
    assert vm["compact_fail"] == 1 and vm["pgmigrate_fail"] == res.failed
    for obj in range(2, 6):
        owner.check(obj)


def test_compact_empty_and_full() -> None:
    mem = PhysicalMemory(max_pages=8)
    assert mem.compact().migrated == 0
    owner = FakeOwner(mem)
    for obj in range(8):
        owner.alloc(obj)
    res = mem.compact()  # nothing free below: the scanners meet
    assert res.migrated == 0 and res.success


def test_vmstat_text_format() -> None:
    mem = PhysicalMemory(max_pages=8)
    mem.mod_vmstat("nr_zspages", 3)
    text = mem.vmstat_text()
    lines = text.splitlines()
    assert all(re.fullmatch(r"[a-z_]+ -?\d+", ln) for ln in lines)
    names = [ln.split()[0] for ln in lines]
    for n in (
        "nr_free_pages",
        "nr_zspages",
        "pgmigrate_success",
        "pgmigrate_fail",
        "compact_migrate_scanned",
        "compact_free_scanned",
        "compact_isolated",
        "compact_stall",
        "compact_fail",
        "compact_success",
    ):
        assert n in names
    assert "nr_free_pages 8\n" in text and "nr_zspages 3\n" in text
    mem.vmstat_reset()


def test_vmstat_frame_counters() -> None:
    """pgalloc_normal, pgfree and nr_zspages (fields, not the dict of the other events): a
    zspage's frames count in nr_zspages from alloc_page(zspage=True) to free_page(zspage=True);
    the names keep /proc/vmstat's order; a reset clears the events, not the gauge."""
    mem = PhysicalMemory(max_pages=8)
    a = mem.alloc_page(zspage=True)
    b = mem.alloc_page()
    c = mem.alloc_page()
    mem.free_page(b)
    assert mem.claim_lowest_free_below(8) == b  # compaction's free scanner allocates too
    vm = mem.vmstat()
    assert (vm["nr_zspages"], vm["pgalloc_normal"], vm["pgfree"]) == (1, 4, 1)
    mem.free_page(a, zspage=True)
    mem.free_page(b)
    vm = mem.vmstat()
    assert (vm["nr_zspages"], vm["pgalloc_normal"], vm["pgfree"]) == (0, 4, 3)
    names = list(vm)
    assert names[4:8] == ["nr_zspages", "pgalloc_normal", "pgfree", "pgmigrate_success"]
    mem.mod_vmstat("pgfree", 5)
    mem.mod_vmstat("nr_zspages", 2)
    assert mem.vmstat()["pgfree"] == 8
    mem.vmstat_reset()
    vm = mem.vmstat()
    assert (vm["nr_zspages"], vm["pgalloc_normal"], vm["pgfree"]) == (2, 0, 0)
    assert list(vm) == names
    mem.free_page(c)


# ---------------------------------------------------------------------------- stress


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_concurrent_owners_migrator_compactor(lockdep: None, backing: str) -> None:
    concurrent_owners(1.2, backing)


@pytest.mark.soak
def test_concurrent_owners_migrator_compactor_soak(lockdep: None) -> None:
    concurrent_owners(30.0)


def concurrent_owners(seconds: float, backing: str = "anon") -> None:
    """Owners allocate/check/free while a migrator moves random frames and a compactor runs:
    data and metadata stay consistent, nothing deadlocks, no frame is lost or reused twice."""
    mem = PhysicalMemory(max_pages=600, backing=backing)
    owners = [FakeOwner(mem) for _ in range(3)]
    stop = threading.Event()
    ids = iter(range(10**9))
    id_lock = threading.Lock()

    def owner_work(o: FakeOwner, seed: int) -> None:
        rnd = random.Random(seed)
        mine: list[int] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r = rnd.random()
            if r < 0.45 and len(mine) < 150:
                with id_lock:
                    obj = next(ids)
                try:
                    o.alloc(obj)
                    mine.append(obj)
                except OutOfMemory:
                    pass
            elif r < 0.85 and mine:
                obj = mine[rnd.randrange(len(mine))]
                if o.try_free(obj):
                    mine.remove(obj)
            elif mine:
                o.check(mine[rnd.randrange(len(mine))])
        for obj in mine:
            while not o.try_free(obj):
                time.sleep(0.0005)

    def migrator() -> None:
        rnd = random.Random(99)
        while not stop.is_set():
            hw = mem.high_water
            if hw:
                mem.migrate_pfn(rnd.randrange(hw), lower_only=rnd.random() < 0.5)
            else:
                time.sleep(0.001)

    def compactor() -> None:
        while not stop.is_set():
            mem.compact()
            time.sleep(0.005)

    bg = [threading.Thread(target=f, daemon=True) for f in (migrator, compactor)]
    for t in bg:
        t.start()
    try:
        run_threads(
            [functools.partial(owner_work, o, s) for s, o in enumerate(owners)],
            timeout=seconds + 20,
        )
    finally:
        stop.set()
        for t in bg:
            t.join(10)
    assert not any(t.is_alive() for t in bg)
    assert mem.nr_used == 0 and mem.high_water == 0
    assert not mem._refs
    vm = mem.vmstat()
    assert vm["pgmigrate_success"] > 0
    assert vm["pgalloc_normal"] == vm["pgfree"]


def test_arena_and_wait_on_page_locked() -> None:
    mem = PhysicalMemory(max_pages=8)
    p = mem.alloc_page()
    q = mem.alloc_page()
    mem.arena[q * 4096 : q * 4096 + 3] = b"abc"
    assert bytes(mem.view(q)[:3]) == b"abc" and mem.arena is mem.arena
    mem.wait_on_page_locked(p)  # unlocked: returns at once
    mem.lock_page(p)
    done = threading.Event()

    def waiter() -> None:
        mem.wait_on_page_locked(p)
        done.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert not done.wait(0.05)
    mem.unlock_page(p)
    assert done.wait(5)
    assert not mem.page_is_locked(p)  # waiting does not take the lock


def test_compact_scan_counts_and_concurrent_runs() -> None:
    mem = PhysicalMemory(max_pages=4096)
    owner = FakeOwner(mem)
    for obj in range(2000):
        owner.alloc(obj)
    rnd = random.Random(5)
    for obj in rnd.sample(range(2000), 1000):
        assert owner.try_free(obj)
    res_box: list = []
    run_threads([lambda: res_box.append(mem.compact()) for _ in range(3)])
    total = sum(r.migrated for r in res_box)
    assert mem.high_water == 1000 == mem.nr_used
    assert sorted(owner.where.values()) == list(range(1000))
    vm = mem.vmstat()
    assert vm["pgmigrate_success"] == total
    for r in res_box:  # each scanner looks at a frame at most once per run
        assert r.migrate_scanned <= 2000 and r.free_scanned <= 2000
    for obj in owner.where:
        owner.check(obj)


# ---------------------------------------------------------------------------- model-based


class MemoryMachine(RuleBasedStateMachine):
    """Random alloc / free / stamp / migrate / compact sequences against a model of which frames
    are in use, which are movable, and what each frame holds."""

    N = 48

    def __init__(self) -> None:
        super().__init__()
        self.mem = PhysicalMemory(max_pages=self.N)
        self.owner = FakeOwner(self.mem)
        self.plain: dict[int, int] = {}  # unmovable frame -> stamp
        self.next_obj = 0

    def _used(self) -> set[int]:
        return set(self.plain) | set(self.owner.where.values())

    @rule(movable=st.booleans())
    def alloc(self, movable: bool) -> None:
        free = set(range(self.N)) - self._used()
        if not free:
            with pytest.raises(OutOfMemory):
                self.mem.alloc_page()
            return
        if movable:
            self.next_obj += 1
            pfn = self.owner.alloc(self.next_obj)
        else:
            pfn = self.mem.alloc_page()
            self.plain[pfn] = pfn * 7 + 1
            self.mem.view(pfn)[100] = self.plain[pfn] & 0xFF
        assert pfn == min(free)

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        if not self._used():
            return
        pfn = data.draw(st.sampled_from(sorted(self._used())))
        if pfn in self.plain:
            del self.plain[pfn]
            self.mem.free_page(pfn)
        else:
            obj = next(o for o, p in self.owner.where.items() if p == pfn)
            assert self.owner.try_free(obj)
        assert self.mem.is_free(pfn)

    @rule(pfn=st.integers(-1, N), lower_only=st.booleans(), fail=st.booleans())
    def migrate(self, pfn: int, lower_only: bool, fail: bool) -> None:
        before = dict(self.owner.where)
        free = set(range(self.N)) - self._used()
        self.owner.fail_migrate = fail
        st_ = self.mem.migrate_pfn_status(pfn, lower_only=lower_only)
        self.owner.fail_migrate = False
        if pfn not in before.values():
            assert st_ is MigrateStatus.NOT_MOVABLE
        elif not free or (lower_only and min(free) > pfn):
            assert st_ is MigrateStatus.NO_TARGET
        elif fail:
            assert st_ is MigrateStatus.FAILED and self.owner.where == before
        else:
            assert st_ is MigrateStatus.SUCCESS
            obj = next(o for o, p in before.items() if p == pfn)
            assert self.owner.where[obj] == min(free)

    @rule()
    def compact(self) -> None:
        n_movable = len(self.owner.where)
        res = self.mem.compact()
        assert res.success and res.failed == 0
        # After compaction, no free frame lies below any movable frame.
        movable = sorted(self.owner.where.values())
        assert len(movable) == n_movable
        if movable:
            free = set(range(self.N)) - self._used()
            assert not [f for f in free if f < movable[-1]], "a free frame left below a movable one"

    @invariant()
    def consistent(self) -> None:
        used = self._used()
        assert self.mem.nr_used == len(used)
        assert self.mem.high_water == (max(used) + 1 if used else 0)
        for pfn, stamp in self.plain.items():
            assert self.mem.view(pfn)[100] == stamp & 0xFF and not self.mem.is_movable(pfn)
        for obj in self.owner.where:
            self.owner.check(obj)
        assert not self.mem._refs and not any(self.mem._pglocked)
        assert self.mem.vmstat()["nr_free_pages"] == self.N - len(used)


TestMemoryMachine = MemoryMachine.TestCase
TestMemoryMachine.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


def test_zone_lock_in_lock_stat() -> None:
    from allocator.locks import ZONE_LOCK, lock_stat_text

    mem = PhysicalMemory(max_pages=8)
    before = ZONE_LOCK.acquisitions
    mem.free_page(mem.alloc_page())
    assert ZONE_LOCK.acquisitions - before == 2
    assert "&zone->lock:" in lock_stat_text()
