"""The stack's one lock order (allocator/locks.py, "The lock order of the whole stack"): every
lock the device, the slot table, the pool and the memory take is a ranked lockdep class, what
they really do follows the ranks, and the failure paths let go of what they took."""

# Threads run `lambda: (f(), g())`: two calls in one target; the tuple of Nones is unused.
# mypy: disable-error-code="func-returns-value"
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest

from allocator import PhysicalMemory, Pool, locks, migrate
from allocator import lockdep as lockdep_checker  # the fixture `lockdep` shadows the name
from allocator.locks import (
    CLASS_LOCK,
    LEAF_RANK,
    MIGRATE_LOCK,
    PAGE_LOCK,
    LockOrderViolation,
    lockdep_stats,
    set_lockdep,
)
from zramfs.device import COMPACT_LOCK, INIT_LOCK, REGISTRY_LOCK, Registry
from zramfs.slots import STRIPE_LOCK

PAGE = 4096


def pages(n: int, seed: int) -> list[bytes]:
    """Pages of varied compressibility (several size classes), none same-filled."""
    out = []
    for i in range(n):
        head = os.urandom(64 + (i * 97 + seed) % 2500)
        out.append((head + bytes([i & 0xFF, 1]) * PAGE)[:PAGE])
    return out


def churn(reg: Registry) -> None:
    """Everything the stack does with its locks: writes, overwrites, reads, discards, a
    compaction, a memory compaction, idle marking, reset and hot_remove."""
    dev = reg.devices[0]
    dev.set_disksize(256 * PAGE)
    data = pages(256, 1)
    for i, p in enumerate(data):
        dev.write(i * PAGE, p)
    dev.write(0, b"".join(pages(16, 2)))  # a multi-page overwrite frees under stripes
    for i in range(0, 256, 3):
        dev.discard(i * PAGE, PAGE)
    assert dev.read(20 * PAGE, PAGE) == data[20]
    assert dev.read(16 * PAGE, 8 * PAGE)[PAGE : 2 * PAGE] == data[17]
    dev.compact()
    reg.memory.compact()
    dev.mark_idle(None)
    dev.reset()
    extra = reg.hot_add()
    reg.devices[extra].set_disksize(16 * PAGE)
    reg.devices[extra].write(0, data[5])
    reg.hot_remove(extra)


def test_every_lock_of_the_stack_is_ranked_and_taken_in_rank_order(lockdep: None) -> None:
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 12))
    churn(reg)
    assert lockdep_stats()["violations"] == 0
    with lockdep_checker._graph_lock:
        edges = [(a, b) for a, succ in lockdep_checker._graph.items() for b in succ]
    assert edges, "lockdep recorded no nesting at all"
    unranked = {c.name for e in edges for c in e if c.rank is None}
    assert not unranked, f"locks of the stack outside the documented order: {unranked}"
    backwards = [(a.name, b.name) for a, b in edges if a.rank > b.rank]  # type: ignore[operator]
    assert not backwards, backwards
    seen = {(a.name, b.name) for a, b in edges}
    # The nestings the order is written for (allocator/locks.py, the table's explanation).
    for outer, inner in [
        (STRIPE_LOCK, MIGRATE_LOCK),  # an overwrite frees the old object under its stripe
        (INIT_LOCK, STRIPE_LOCK),  # reset frees every slot under the stripes
        (COMPACT_LOCK, MIGRATE_LOCK),  # compaction runs under the device's compact lock
        (COMPACT_LOCK, INIT_LOCK),  # ... and looks the pool up under dev_lock
        (REGISTRY_LOCK, INIT_LOCK),  # hot_remove resets under the registry lock
        (PAGE_LOCK, MIGRATE_LOCK),  # memory compaction migrates under the page lock
        (MIGRATE_LOCK, CLASS_LOCK),
    ]:
        assert (outer.name, inner.name) in seen, f"{outer.name} -> {inner.name} never seen"
    leaves = {b for a, b in edges if b.rank == LEAF_RANK}
    assert all(a.rank != LEAF_RANK or a is b for a, b in edges), (
        "a leaf lock was held while another lock was taken"
    )
    assert leaves, "no leaf lock was taken under another lock"


def test_stripes_are_checked_only_when_lockdep_was_on_at_disksize() -> None:
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 10))
    dev = reg.devices[0]
    dev.set_disksize(16 * PAGE)
    assert type(dev._stripes[0].lock) is locks.PlainLock  # unchecked, uncounted
    dev.reset()
    set_lockdep(True)
    try:
        dev.set_disksize(16 * PAGE)
        assert isinstance(dev._stripes[0].lock, locks.Mutex)
        assert dev._stripes[0].lock.lock_class is STRIPE_LOCK
    finally:
        set_lockdep(False)


def test_a_stripe_taken_under_migrate_lock_is_an_inversion(lockdep: None) -> None:
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 10))
    dev = reg.devices[0]
    dev.set_disksize(16 * PAGE)
    pool = dev.pool
    assert pool is not None
    with pool.migrate_lock.read():
        with pytest.raises(LockOrderViolation, match="zram_slot_lock.*migrate_lock"):
            with dev._stripes[5].lock:
                pass
    assert int(lockdep_stats()["violations"]) >= 1 and lockdep_stats()["debug_locks"] == 0
    set_lockdep(True)  # switching clears the count
    assert lockdep_stats()["violations"] == 0


@pytest.mark.pure_python
def test_compaction_does_not_hold_the_device_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """open, close, configuration and statistics go on while a compaction runs; reset waits
    for it (compact_store holds init_lock for read only)."""
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 10))
    dev = reg.devices[0]
    dev.set_disksize(64 * PAGE)
    pool = dev.pool
    assert pool is not None
    inside, finish = threading.Event(), threading.Event()
    real = pool.compact

    def slow_compact() -> int:
        inside.set()
        assert finish.wait(10)
        return real()

    monkeypatch.setattr(pool, "compact", slow_compact)
    t = threading.Thread(target=dev.compact, daemon=True)
    t.start()
    assert inside.wait(5)
    dev.open()
    dev.close()
    dev.set_mem_limit(1 << 20)
    assert dev.stats().limit_pages == (1 << 20) // PAGE
    reset_done = threading.Event()
    r = threading.Thread(target=lambda: (dev.reset(), reset_done.set()), daemon=True)
    r.start()
    time.sleep(0.05)
    assert not reset_done.is_set(), "reset tore the pool down under a running compaction"
    finish.set()
    t.join(5)
    assert reset_done.wait(5)
    r.join(5)
    assert not dev.initialized


@pytest.mark.pure_python
@pytest.mark.parametrize("where", ["lookup", "move"])
def test_a_failed_migration_releases_every_lock(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """zs_page_migrate takes migrate_lock, class->lock and the zspage lock; an exception at
    any point after the first must leave none held, and the page goes back (isolated 0)."""
    mem = PhysicalMemory(max_pages=1 << 10)
    pool = Pool("migrate-fail", memory=mem)
    payload = [os.urandom(300) for _ in range(40)]
    handles = [pool.malloc(len(p)) for p in payload]
    for h, p in zip(handles, payload, strict=True):
        pool.write_object(h, p)
    pfn = pool.zspages()[0].first_page

    real_lookup = migrate._get_zspage

    def boom(*args: Any) -> Any:
        # zs_page_isolate looks the zspage up too: fail only inside zs_page_migrate
        if sys._getframe(1).f_code is not migrate.zs_page_migrate.__code__:
            return real_lookup(*args)
        raise RuntimeError("injected")

    monkeypatch.setattr(migrate, "_get_zspage" if where == "lookup" else "_move_page", boom)
    zspage = pool._private[pfn]
    with pytest.raises(RuntimeError, match="injected"):
        mem.migrate_pfn(pfn)
    monkeypatch.undo()
    assert not pool.migrate_lock.is_locked()
    assert not any(c.lock.locked() for c in pool.classes)
    assert not zspage.lock.is_locked() and zspage.isolated == 0
    assert not mem.page_is_locked(pfn)
    for h, p in zip(handles, payload, strict=True):  # the pool still works, data intact
        assert pool.read_object(h, len(p)) == p
        pool.free(h)
