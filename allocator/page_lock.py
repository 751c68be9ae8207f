"""Page locks of the simulated memory: PG_locked per frame and the hashed wait queues.

`PageLocks` is the part of `allocator.memory.PhysicalMemory` that mirrors the kernel's
lock_page(), trylock_page(), unlock_page() and wait_on_page_locked() (mm/filemap.c): a
``PG_locked`` byte per frame (``_pglocked``, grown with the other per-frame arrays by
`PhysicalMemory`) and a small table of wait queues shared by hashing the PFN, as the kernel's
page_waitqueue() does.  One thread may hold any number of page locks.  lockdep and lock_stat see
them as the ``PG_locked`` class (``allocator.locks.PAGE_LOCK``: rank 10, the outermost), keyed
per frame by (memory, PFN).

Locking: a wait queue's ``lock`` (a `PlainLock`, a leaf) protects the ``PG_locked`` bytes of
the frames that hash to it and the queue's ``waiters`` count; a sleeper waits on the queue's
condition, and an unlock notifies all of the queue's sleepers only when it has any (each
rechecks its own frame's byte).
"""

from __future__ import annotations

import threading
from time import perf_counter_ns
from typing import Final

from . import locks as _locks
from .lockdep_switch import LOCKDEP
from .locks import PAGE_LOCK, LockMode

__all__ = ["PageLocks"]

_WRITE = LockMode.WRITE

_NR_WAITQ: Final = 64  # hashed page wait queues (kernel: PAGE_WAIT_TABLE_SIZE = 256)

# counts one PG_locked acquisition in lock_stat; held once here, as the locks hold theirs
# (`LockStat.count`), rather than looked up through the lock class on every page lock
_count_acquisition: Final = PAGE_LOCK.write.count


class _WaitQueue:
    __slots__ = ("lock", "cond", "waiters")

    def __init__(self) -> None:
        self.lock = _locks.PlainLock()
        self.cond = threading.Condition(self.lock)  # type: ignore[arg-type]
        self.waiters = 0


class _PageGuard:
    __slots__ = ("_mem", "_pfn")

    def __init__(self, mem: PageLocks, pfn: int) -> None:
        self._mem = mem
        self._pfn = pfn

    def __enter__(self) -> int:
        self._mem.lock_page(self._pfn)
        return self._pfn

    def __exit__(self, *exc: object) -> None:
        self._mem.unlock_page(self._pfn)


class PageLocks:
    """PG_locked of every frame and the hashed wait queues (the base of `PhysicalMemory`)."""

    def __init__(self) -> None:
        # one byte per frame; the owner extends it in place as frames appear
        self._pglocked = bytearray()
        self._waitq = [_WaitQueue() for _ in range(_NR_WAITQ)]

    def lock_page(self, pfn: int) -> None:
        """Sleeping lock_page(): wait until PG_locked is clear, then set it."""
        if LOCKDEP.on:
            _locks.lockdep_before((id(self), pfn), PAGE_LOCK, _WRITE)
        wq = self._waitq[pfn & (_NR_WAITQ - 1)]
        locked = self._pglocked
        wq.lock.acquire()
        if locked[pfn]:
            wq.waiters += 1
            t0 = perf_counter_ns()
            try:
                while locked[pfn]:
                    wq.cond.wait()
            except BaseException:
                wq.waiters -= 1
                wq.lock.release()
                raise
            wq.waiters -= 1
            locked[pfn] = 1
            wq.lock.release()
            PAGE_LOCK.write.contended(perf_counter_ns() - t0, _locks.contention_point())
        else:
            locked[pfn] = 1
            wq.lock.release()
        _count_acquisition()
        if LOCKDEP.on:
            _locks.lockdep_acquired((id(self), pfn), PAGE_LOCK, _WRITE)

    def trylock_page(self, pfn: int) -> bool:
        lk = self._waitq[pfn & (_NR_WAITQ - 1)].lock
        locked = self._pglocked
        lk.acquire()
        if locked[pfn]:
            lk.release()
            return False
        locked[pfn] = 1
        lk.release()
        _count_acquisition()
        if LOCKDEP.on:
            _locks.lockdep_acquired((id(self), pfn), PAGE_LOCK, _WRITE, True)
        return True

    def unlock_page(self, pfn: int) -> None:
        wq = self._waitq[pfn & (_NR_WAITQ - 1)]
        locked = self._pglocked
        lk = wq.lock
        lk.acquire()
        if not locked[pfn]:
            lk.release()
            raise RuntimeError(f"unlock_page: pfn {pfn} is not locked")
        locked[pfn] = 0
        if wq.waiters:
            # The wait queue is shared by several frames: wake all, each rechecks its bit.
            wq.cond.notify_all()
        lk.release()
        if LOCKDEP.on:
            _locks.lockdep_released((id(self), pfn))

    def wait_on_page_locked(self, pfn: int) -> None:
        """wait_on_page_locked(): sleep until the frame's PG_locked is clear, without taking it
        (lockdep checks it like a lock_page: waiting there can deadlock the same way)."""
        if LOCKDEP.on:
            _locks.lockdep_before((id(self), pfn), PAGE_LOCK, _WRITE)
        wq = self._waitq[pfn & (_NR_WAITQ - 1)]
        locked = self._pglocked
        with wq.lock:
            if locked[pfn]:
                wq.waiters += 1
                try:
                    while locked[pfn]:
                        wq.cond.wait()
                finally:
                    wq.waiters -= 1

    def page_is_locked(self, pfn: int) -> bool:
        return bool(self._pglocked[pfn])

    def page_locked(self, pfn: int) -> _PageGuard:
        """``with mem.page_locked(pfn):`` lock_page ... unlock_page."""
        return _PageGuard(self, pfn)
