"""Locks for the zsmalloc port: PlainLock, Mutex, a qrwlock-like RWLock, and their lock order.

This module owns the lock primitives the allocator uses (page locks excepted: a bit per frame in
``allocator.memory``; ``RWLock`` is ``allocator.rwlock``'s, re-exported here), turning lockdep
on and off (the switch itself is ``allocator.lockdep_switch``), and the two texts every lock of
the stack answers to: the lock order below and the list of shortcuts that rely on the GIL at the
end.  The debugging facilities the kernel builds around its locks, lock classes with their
ranks, lockdep and lock_stat, are ``allocator.lockdep``; every name of theirs is importable from
here too.

* **Lock classes** (``LockClass``, ``allocator.lockdep``): like lockdep's ``struct
  lock_class_key``, every lock belongs to a class, and a class has a *rank*, its position in
  the lock order below.

* **The lock order of the whole stack** (outermost first; a thread may only block on a lock
  whose rank is not below the rank of any lock it holds).  This table is the one place the
  order is written; the ranks under 10 belong to the allocator's user (zram, ``zramfs``), which
  defines those classes itself, so this package still knows nothing of it::

      rank  class                         lock                             class in
         2  zram-control                  Registry's device table          zramfs.device
         3  &zram->compact                one compaction per device; holds
                                          off reset meanwhile (compact_store
                                          keeps init_lock for read)        zramfs.device
         4  &zram->init_lock              ZramDevice.dev_lock (config)     zramfs.device
         6  zram_slot_lock                a slot-table stripe              zramfs.slots
        10  PG_locked                     page lock (memory compaction)    lockdep
        20  &pool->migrate_lock (rw)                                       lockdep
        30  &class->lock                                                   lockdep
        40  &zspage->lock (rw)                                             lockdep
        50  zs_map_area.lock              the per-CPU mapping area         lockdep
        60  &zone->lock                   the page allocator's free lists  lockdep
        70  leaf locks                    counters and lists guarded for a
                                          few statements, never held while
                                          taking another lock: pages_
                                          allocated, the handle cache, the
                                          zspage set, pool->free_work, page
                                          flags, the backing-device bitmap  lockdep / users

  ``lockdep`` is ``allocator.lockdep``, where this package's classes are defined; the locks
  themselves are this module's Mutex and RWLock, the page lock is ``allocator.memory``'s.
  Rows 10-50 are zsmalloc 5.17's documented order (mm/zsmalloc.c header comment).  The zram
  rows follow from the data path: a slot's stripe is held while its old object is freed
  (zs_free takes migrate_lock and class->lock) and while a page is decompressed; device
  configuration (dev_lock) frees every slot under the stripes on reset; hot_remove resets
  the device under the registry lock.  Not in the checker, on purpose: the internals of a
  Mutex/RWLock and the page-lock wait queues (they are the lock primitives themselves, held
  for a few bytecodes), ``allocator.prefault``'s lock of an arena (held by its helper thread
  around one madvise, taken under the zone lock by ``drop_free_frames``, never around another
  lock), and the hot-path locks created by ``hot_path_lock()`` while lockdep is off: the slot
  stripes and the leaf locks, ``PlainLock``s (the kernel too checks these only in lockdep
  builds).  So lockdep sees them in objects created after ``set_lockdep(True)``.

* **PlainLock** (``threading.Lock``'s interface, a token in a list), **Mutex** (a PlainLock
  with a class, lock_stat and lockdep: the ``spin_lock``/``mutex`` stand-in) and **RWLock**
  (``rwlock_t``/qrwlock stand-in: a queued writer blocks *new* readers, ``is_contended()`` is
  ``rwlock_is_contended``).  The uncontended paths are a list operation or one
  ``threading.Lock``, and one C-level counter; condition variables, timestamps and statistics
  exist only on the slow path (a thread has to wait).

* **lockdep** (``set_lockdep(True)``, off by default; the checker is ``allocator.lockdep``):
  a blocking acquisition against the ranks raises ``LockOrderViolation`` before it blocks.  The
  switch is ``LOCKDEP.on``, read on every acquire and release (one native attribute read when
  this module is compiled), and the primitives below and ``allocator.memory``'s page locks call
  lockdep's hooks only when it is on.

* **lock_stat** (``lock_stat_text()``/``lock_stat_reset()``, ``allocator.lockdep``): per class
  and side, acquisitions always, contentions and wait times when a thread actually waited.

**Shortcuts that rely on the GIL.**  The hot path of the stack does a few things without a
lock because, under the GIL, each is one indivisible C-level operation.  They are listed here
so that none is added silently; a build without a GIL refuses to start (``zramfs.runtime``),
except for the first, which has a slow path of its own.

1. The RWLock reader fast path (``_fast`` list append/pop, then a re-read of ``_wbusy``):
   Dekker-style, see ``RWLock``.  Explored line by line, with the original hand-off bug
   injected and found, in ``tests/test_lock_interleavings.py``; without a GIL every reader
   takes the slow path.
2. lock_stat acquisition counters (``allocator.lockdep``): an ``itertools.count``'s bound
   ``__next__`` is one C call; the other counters change only under ``LockStat._lock``.
3. lockdep's known-edge check (``allocator.lockdep``) reads the dependency graph without
   ``_graph_lock``: a ``dict.get`` and a set membership test, each atomic; a miss falls back to
   the locked path.
4. ``RWLock.is_contended``/``readers``/``is_locked`` and ``Mutex.locked`` read counters
   without ``_lock``: a snapshot that may be stale the moment it is taken, as the kernel's
   ``rwlock_is_contended`` is; compaction uses it only as a hint to yield.
5. The pool's handle cache (``allocator.handles.HandleCache``; the pool binds its
   ``free_cells`` and ``grow`` as ``_free_cells`` and ``_grow_cells``): ``free_cells`` is
   popped and appended without a lock (atomic list operations) and ``cells`` is indexed by
   every thread while ``grow`` extends it under its leaf lock.  ``array.extend`` reallocates
   in one C call and nobody holds a buffer export of it, so an index is read either before or
   after the move, never during it.
6. ``PhysicalMemory``'s per-frame arrays are grown in place the same way (``_grow``, under the
   zone lock) while other threads index them.
7. ``zs_can_compact``/``zs_shrinker_count`` and the device statistics read counters without
   the locks that guard them: each read is one attribute or list item; the sum is a snapshot,
   as the kernel's unlocked reads in ``zs_shrinker_count`` and ``mm_stat_show`` are.
8. The device's data path reads ``_meta``, ``_stripes`` and ``limit_pages`` without
   ``dev_lock``: single attribute loads; reset, which replaces them, refuses while the image
   is open, and a new mem_limit applies from the next page as in the kernel.
9. ``PlainLock`` and ``Mutex``: the token is popped and appended without a lock, and
   ``release`` reads ``_waiters`` without the condition's lock, after its append (see
   ``PlainLock`` for why no wake-up is lost).

Compiled (setup.py), each step above is still one C-level operation under the GIL, and
compiled code offers other threads a subset of the interpreted source's preemption points
(docs/guarantees.md, "6. Locks: no deadlock, one order").
"""

from __future__ import annotations

import threading
from time import perf_counter_ns

from . import lockdep as _checker
from .lockdep import (
    CLASS_LOCK,
    FREE_WORK_LOCK,
    HANDLE_CACHE_LOCK,
    LEAF_RANK,
    LOCK_ORDER,
    MAP_AREA_LOCK,
    MAP_BUFFER_LOCK,
    MIGRATE_LOCK,
    PAGE_FLAGS_LOCK,
    PAGE_LOCK,
    PAGES_ALLOCATED_LOCK,
    ZONE_LOCK,
    ZSPAGE_LOCK,
    ZSPAGE_SET_LOCK,
    LockClass,
    LockMode,
    LockOrderViolation,
    LockStat,
    contention_point,
    held_locks,
    lock_classes,
    lock_stat_reset,
    lock_stat_text,
    lockdep_acquired,
    lockdep_before,
    lockdep_released,
    site_class,
)
from .lockdep_switch import LOCKDEP
from .rwlock import RWLock

__all__ = [
    "LockClass",
    "LockMode",
    "LockStat",
    "LockOrderViolation",
    "Mutex",
    "PlainLock",
    "RWLock",
    "PAGE_LOCK",
    "MIGRATE_LOCK",
    "CLASS_LOCK",
    "ZSPAGE_LOCK",
    "MAP_AREA_LOCK",
    "MAP_BUFFER_LOCK",
    "LOCK_ORDER",
    "ZONE_LOCK",
    "LEAF_RANK",
    "PAGES_ALLOCATED_LOCK",
    "HANDLE_CACHE_LOCK",
    "ZSPAGE_SET_LOCK",
    "FREE_WORK_LOCK",
    "PAGE_FLAGS_LOCK",
    "set_lockdep",
    "hot_path_lock",
    "lockdep_stats",
    "lockdep_enabled",
    "held_locks",
    "lock_classes",
    "lock_stat_text",
    "lock_stat_reset",
    "lockdep_before",
    "lockdep_acquired",
    "lockdep_released",
    "contention_point",
]

# Mutex's side as a module global: its fast paths load it with one LOAD_GLOBAL (the read side
# is allocator.rwlock's).
_WRITE = LockMode.WRITE


def set_lockdep(enabled: bool, *, record_sites: bool = True) -> None:
    """Turn lockdep on or off. Switching clears the held-lock stacks, the dependency graph
    (locks taken while it was off are unknown to it) and the violation count. ``record_sites``
    remembers where each held lock was taken, for the violation reports (about half of
    lockdep's cost per acquisition)."""
    _checker.reset(record_sites=record_sites)
    LOCKDEP.on = bool(enabled)


def lockdep_enabled() -> bool:
    return LOCKDEP.on


def lockdep_stats() -> dict[str, int | str]:
    """Whether lockdep is on, how many violations it reported since it was last switched on,
    and the first of them (``debug_locks`` is 0 once one was reported, as in the kernel)."""
    return {"lockdep": int(LOCKDEP.on), **_checker.violation_stats()}


def hot_path_lock(lock_class: LockClass) -> PlainLock:
    """A lock of ``lock_class`` for a hot path: a checked ``Mutex`` when lockdep is on at the
    time it is created, else a ``PlainLock``, which counts nothing in lock_stat (the pool's
    per-zspage counters, the page flags and the slot stripes would pay for it on every
    request).  The kernel likewise checks such locks only in lockdep builds."""
    return Mutex(lock_class) if LOCKDEP.on else PlainLock()


# ------------------------------------------------------------------------------------------
# PlainLock, Mutex
# ------------------------------------------------------------------------------------------


class PlainLock:
    """A non-recursive lock with ``threading.Lock``'s interface: one token in a list, popped
    by ``acquire`` and appended back by ``release`` (shortcut 9 above; from compiled code a
    fifth of a ``threading.Lock``'s cost, docs/performance.md "The token locks").  A thread
    that finds no token counts itself in ``_waiters`` under ``_cond``'s lock and pops again
    before it sleeps; ``release`` appends before it reads ``_waiters``.  So either that second
    pop finds the token or the releaser notifies the waiter, under the lock it holds until it
    sleeps: no wake-up is lost (``tests/test_lock_interleavings.py`` finds both orders reversed
    as deadlocks).  Not fair, as ``threading.Lock`` is not."""

    __slots__ = ("_tok", "_cond", "_waiters")

    def __init__(self) -> None:
        self._tok: list[None] = [None]  # the lock is free while its one token is here
        self._cond = threading.Condition(threading.Lock())  # where waiters sleep
        self._waiters = 0  # threads in _wait_token (changed under _cond's lock)

    def acquire(self, blocking: bool = True) -> bool:
        try:
            self._tok.pop()
        except IndexError:
            if not blocking:
                return False
            self._wait_token()
        return True

    def _wait_token(self) -> None:
        cond = self._cond
        tok = self._tok
        with cond:
            self._waiters += 1
            try:
                while True:
                    try:
                        tok.pop()
                        break
                    except IndexError:
                        cond.wait()
            except BaseException:
                # Interrupted, perhaps after a release notified this thread: pass the
                # wake-up on, or the next waiter sleeps while the token is free.
                self._waiters -= 1
                if tok and self._waiters:
                    cond.notify()
                raise
            self._waiters -= 1

    def release(self) -> None:
        tok = self._tok
        if tok:
            raise RuntimeError("release of an unlocked lock")
        tok.append(None)  # the token first, then the look for waiters (see above)
        if self._waiters:
            with self._cond:
                self._cond.notify()

    def locked(self) -> bool:
        return not self._tok

    # __enter__/__exit__ repeat acquire/release: in the pure build a call is a Python frame
    def __enter__(self) -> PlainLock:
        try:
            self._tok.pop()
        except IndexError:
            self._wait_token()
        return self

    def __exit__(self, t: object, v: object, tb: object) -> None:
        tok = self._tok
        if tok:
            raise RuntimeError("release of an unlocked lock")
        tok.append(None)
        if self._waiters:
            with self._cond:
                self._cond.notify()


class Mutex(PlainLock):
    """A non-recursive lock of a given class (class->lock is a spinlock in the kernel): a
    ``PlainLock`` with lock_stat and lockdep around it."""

    __slots__ = ("_cls", "_stat", "_acq", "_owner", "__weakref__")

    def __init__(self, lock_class: LockClass | None = None) -> None:
        super().__init__()
        cls = lock_class if lock_class is not None else site_class(False)
        self._cls = cls
        self._stat = cls.write
        self._acq = cls.write.count  # counts one acquisition in lock_stat
        self._owner = 0

    @property
    def lock_class(self) -> LockClass:
        return self._cls

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (``blocking=False`` is trylock, as threading.Lock's signature)."""
        if not blocking:
            return self.trylock()
        if LOCKDEP.on:
            lockdep_before(self, self._cls, _WRITE)
        try:
            self._tok.pop()
        except IndexError:
            self._wait_token()
        self._acq()
        if LOCKDEP.on:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE)
        return True

    def _wait_token(self) -> None:
        t0 = perf_counter_ns()
        PlainLock._wait_token(self)
        self._stat.contended(perf_counter_ns() - t0, contention_point())

    def trylock(self) -> bool:
        try:
            self._tok.pop()
        except IndexError:
            return False
        self._acq()
        if LOCKDEP.on:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE, True)
        return True

    def release(self) -> None:
        if LOCKDEP.on:
            owner = self._owner
            if owner and owner != threading.get_ident():
                raise LockOrderViolation(
                    f"{self._cls.name} released by a thread that does not own it"
                )
            self._owner = 0
            lockdep_released(self, strict=bool(owner))
        PlainLock.release(self)

    def assert_held(self) -> None:
        """lockdep_assert_held / assert_spin_locked: with lockdep on, this thread must hold the
        lock; with it off, somebody must."""
        if LOCKDEP.on:
            if self._owner != threading.get_ident():
                raise LockOrderViolation(f"{self._cls.name} is not held by this thread")
        elif self._tok:
            raise LockOrderViolation(f"{self._cls.name} is not held")

    def __enter__(self) -> Mutex:
        if LOCKDEP.on:
            lockdep_before(self, self._cls, _WRITE)
        try:
            self._tok.pop()
        except IndexError:
            self._wait_token()
        self._acq()
        if LOCKDEP.on:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE)
        return self

    def __exit__(self, t: object, v: object, tb: object) -> None:
        if LOCKDEP.on:
            self.release()
        else:
            PlainLock.__exit__(self, t, v, tb)

    def __repr__(self) -> str:
        return f"<Mutex {self._cls.name} {'locked' if not self._tok else 'unlocked'}>"
