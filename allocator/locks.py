"""Locks for the zsmalloc port: Mutex, a qrwlock-like RWLock, and the lock order they obey.

This module owns every lock primitive the allocator uses (page locks excepted: a bit per frame
in ``allocator.memory``), the lockdep switch, and the two texts every lock of the stack answers
to: the lock order below and the list of shortcuts that rely on the GIL at the end.  The
debugging facilities the kernel builds around its locks, lock classes with their ranks, lockdep
and lock_stat, are ``allocator.lockdep``; every name of theirs is importable from here too.

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

import sys
import threading
from collections.abc import Callable
from time import perf_counter_ns
from typing import Final

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
    lockdep_holds,
    lockdep_released,
    site_class,
)

# fmt: off
__all__ = [
    "LockClass", "LockMode", "LockStat", "LockOrderViolation", "Mutex", "PlainLock", "RWLock",
    "PAGE_LOCK", "MIGRATE_LOCK", "CLASS_LOCK", "ZSPAGE_LOCK", "MAP_AREA_LOCK", "MAP_BUFFER_LOCK",
    "LOCK_ORDER", "ZONE_LOCK", "LEAF_RANK", "PAGES_ALLOCATED_LOCK", "HANDLE_CACHE_LOCK",
    "ZSPAGE_SET_LOCK", "FREE_WORK_LOCK", "PAGE_FLAGS_LOCK", "set_lockdep", "hot_path_lock",
    "lockdep_stats", "lockdep_enabled", "held_locks", "lock_classes", "lock_stat_text",
    "lock_stat_reset", "lockdep_before", "lockdep_acquired", "lockdep_released", "contention_point"
]
# fmt: on

# The sides as module globals: the fast paths below load them with one LOAD_GLOBAL.
_READ = LockMode.READ
_WRITE = LockMode.WRITE


# ------------------------------------------------------------------------------------------
# The lockdep switch
# ------------------------------------------------------------------------------------------


class LockdepSwitch:
    """Whether lockdep is on, read on every acquire and release: an attribute of a ``Final``
    object, which compiled code reads directly (a module global is a dictionary look-up)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


LOCKDEP: Final = LockdepSwitch()


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


# ------------------------------------------------------------------------------------------
# RWLock
# ------------------------------------------------------------------------------------------


# The reader fast path relies on the GIL making each list operation and attribute read one
# indivisible step; a free-threaded build (sys._is_gil_enabled() False) takes the slow path:
# there ``_wbusy`` never drops to False.
_SLOW_READERS: bool = not getattr(sys, "_is_gil_enabled", lambda: True)()


class _Guard:
    """``with rwlock.read():`` / ``with rwlock.write():``: one side's lock and unlock."""

    __slots__ = ("_l", "_lock", "_unlock")

    def __init__(self, lock: RWLock, take: Callable[[], None], drop: Callable[[], None]) -> None:
        self._l = lock
        self._lock = take
        self._unlock = drop

    def __enter__(self) -> RWLock:
        self._lock()
        return self._l

    def __exit__(self, *exc: object) -> None:
        self._unlock()


class RWLock:
    """A writer-preferring reader/writer lock modelled on the kernel's qrwlock.

    State lives in plain ints guarded by one ``threading.Lock`` (``_lock``), held only for a few
    bytecodes on the fast paths. A reader gets in at once unless a writer holds the lock **or is
    queued** (qrwlock makes new readers wait behind a waiting writer); a writer gets in when
    nobody holds it and no other writer is queued. Threads that must wait sleep on condition
    variables created lazily on the first contention, count themselves in ``_waiters``
    (``is_contended()``, like ``rwlock_is_contended`` = someone is on the wait queue) and record
    lock_stat.

    Hand-off: when a writer unlocks and only readers are queued, every queued reader is admitted
    at once (counted into ``_readers`` before they even wake, as qrwlock's queued readers hold
    their reader bias while spinning), so a writer that re-locks straight away (compaction
    yielding on ``is_contended``) cannot starve them. Among writers, the one woken is the oldest
    waiter (Condition wakes FIFO), and a writer arriving while others are queued queues too.

    The lock has no owner: a read lock may be released by any thread (kernel rwlocks do not
    track readers either), but lockdep tracks the acquiring thread.

    Reader fast path (qrwlock's: add the reader bias, then look for a writer): while no writer
    holds or waits (``_wbusy``), a reader appends a token to ``_fast`` without taking ``_lock``
    and then re-reads ``_wbusy``; a writer sets ``_wbusy`` under ``_lock`` before it counts
    ``_fast``.  Each step is one bytecode-level operation under the GIL, so either the reader sees
    the writer's flag (and backs out to the slow path) or the writer sees the reader's token (and
    waits for it).  Readers are counted in ``_readers`` + ``len(_fast)``; an unlock takes a token
    if there is one, else decrements ``_readers`` (the counts are interchangeable, as the lock
    has no owner).  So is the back-out of a reader that saw the flag after its append
    (``_fast_backout``): its own token may already have been taken by a slow-path reader's
    unlock, and then it gives back the count that unlock left in ``_readers``; no release can
    fail or strand a count.  Without a GIL (free-threaded CPython) every reader takes the slow
    path.
    """

    __slots__ = (
        "_lock",
        "_cls",
        "_readers",
        "_writer",
        "_waiters",
        "_wwait",
        "_rwait",
        "_rgrant",
        "_rcond",
        "_wcond",
        "_rg",
        "_wg",
        "_fast",
        "_wbusy",
        "_racq",
        "__weakref__",
    )

    def __init__(self, lock_class: LockClass | None = None) -> None:
        cls = lock_class if lock_class is not None else site_class(True)
        cls.rw = True
        self._lock = threading.Lock()
        self._cls = cls
        self._readers = 0  # readers holding the lock (including granted, not yet awake)
        self._writer = False  # a writer holds the lock
        self._waiters = 0  # threads queued in read_lock/write_lock (is_contended)
        self._wwait = 0  # queued writers (they block new readers)
        self._rwait = 0  # queued readers
        self._rgrant = 0  # queued readers already admitted by a write_unlock hand-off
        self._fast: list[None] = []  # one token per reader that came in by the fast path
        self._wbusy = _SLOW_READERS  # a writer holds or waits: readers must take the slow path
        self._racq = cls.read.count  # counts one acquisition in lock_stat
        self._rcond: threading.Condition | None = None
        self._wcond: threading.Condition | None = None
        self._rg: _Guard | None = None
        self._wg: _Guard | None = None

    @property
    def lock_class(self) -> LockClass:
        return self._cls

    # -- read side -------------------------------------------------------------------------

    def read_lock(self) -> None:
        if LOCKDEP.on:
            lockdep_before(self, self._cls, _READ)
        if not self._wbusy:
            fast = self._fast
            fast.append(None)  # publish the reader first ...
            if not self._wbusy:  # ... then look for a writer (see the class docstring)
                self._racq()
                if LOCKDEP.on:
                    lockdep_acquired(self, self._cls, _READ)
                return
            self._fast_backout()
        lk = self._lock
        lk.acquire()
        if self._writer or self._wwait:
            self._read_wait()
        self._readers += 1
        lk.release()
        self._racq()
        if LOCKDEP.on:
            lockdep_acquired(self, self._cls, _READ)

    def _read_wait(self) -> None:
        # Called and returns with self._lock held (released if the wait is interrupted).
        cond = self._rcond
        if cond is None:
            cond = self._rcond = threading.Condition(self._lock)
        self._waiters += 1
        self._rwait += 1
        t0 = perf_counter_ns()
        try:
            while True:
                if self._rgrant:
                    # Admitted by write_unlock: already counted in _readers; the caller's
                    # increment is compensated here.
                    self._rgrant -= 1
                    self._readers -= 1
                    break
                if not (self._writer or self._wwait):
                    break
                cond.wait()
        except BaseException:
            self._waiters -= 1
            self._rwait -= 1
            if self._rgrant > self._rwait:
                # A grant was meant for us: give the read lock back.
                self._rgrant -= 1
                self._readers -= 1
                if not self._readers and not self._fast and self._wwait:
                    self._wcond.notify()  # type: ignore[union-attr]
            self._lock.release()
            raise
        self._waiters -= 1
        self._rwait -= 1
        self._cls.read.contended(perf_counter_ns() - t0, contention_point())

    def try_read_lock(self) -> bool:
        if not self._wbusy:
            fast = self._fast
            fast.append(None)
            if not self._wbusy:
                self._racq()
                if LOCKDEP.on:
                    lockdep_acquired(self, self._cls, _READ, True)
                return True
            self._fast_backout()
        lk = self._lock
        lk.acquire()
        if self._writer or self._wwait:
            lk.release()
            return False
        self._readers += 1
        lk.release()
        self._racq()
        if LOCKDEP.on:
            lockdep_acquired(self, self._cls, _READ, True)
        return True

    def read_unlock(self) -> None:
        fast = self._fast
        if fast:
            try:
                fast.pop()
            except IndexError:  # another thread took the last token in between
                self._read_unlock_slow()
            else:
                if self._wbusy and not fast:
                    self._fast_drained()
        else:
            self._read_unlock_slow()
        if LOCKDEP.on:
            lockdep_released(self)

    def _read_unlock_slow(self) -> None:
        lk = self._lock
        lk.acquire()
        r = self._readers - 1
        if r < 0:
            lk.release()
            raise RuntimeError(f"read_unlock of {self._cls.name} without readers")
        self._readers = r
        if r == 0 and self._wwait and not self._fast:
            self._wcond.notify()  # type: ignore[union-attr]
        lk.release()

    def _fast_backout(self) -> None:
        """Undo a fast-path ``append`` after a writer's flag appeared: give back one reader count.

        Not ``_fast.pop()`` alone: the token appended may already be gone, popped by the
        ``read_unlock`` of a reader whose count was in ``_readers`` (a slow-path reader admitted
        by a hand-off).  That unlock then left its own count in ``_readers``, so this back-out
        takes it from there.  Either way exactly one count goes, and the back-out cannot fail.
        """
        try:
            self._fast.pop()
        except IndexError:
            self._read_unlock_slow()  # wakes a waiting writer if that was the last reader
        else:
            self._fast_drained()

    def _fast_drained(self) -> None:
        """A fast-path token went while a writer was about: wake the writer if it was the last
        reader (the writer waits under ``_lock`` for ``_readers`` and ``_fast`` to empty)."""
        with self._lock:
            if self._wwait and not self._writer and not self._readers and not self._fast:
                self._wcond.notify()  # type: ignore[union-attr]

    def _wake_readers(self) -> None:
        # The lock is free of writers and no writer is queued: admit every queued reader.
        n = self._rwait - self._rgrant
        if n > 0:
            self._readers += n
            self._rgrant += n
            self._rcond.notify_all()  # type: ignore[union-attr]

    # -- write side ------------------------------------------------------------------------

    def write_lock(self) -> None:
        if LOCKDEP.on:
            lockdep_before(self, self._cls, _WRITE)
        lk = self._lock
        lk.acquire()
        self._wbusy = True  # before counting _fast: see the class docstring
        if self._writer or self._readers or self._fast or self._wwait:
            self._write_wait()
        self._writer = True
        lk.release()
        self._cls.write.count()
        if LOCKDEP.on:
            lockdep_acquired(self, self._cls, _WRITE)

    # write_lock_nested(lock, SINGLE_DEPTH_NESTING) is only a lockdep annotation in the kernel;
    # our lockdep already allows same-class nesting.
    def write_lock_nested(self) -> None:
        self.write_lock()

    def _write_wait(self) -> None:
        # Called and returns with self._lock held (released if the wait is interrupted).
        cond = self._wcond
        if cond is None:
            cond = self._wcond = threading.Condition(self._lock)
        self._waiters += 1
        self._wwait += 1
        t0 = perf_counter_ns()
        try:
            # Queue behind writers already waiting (wait at least once), then until free.
            if self._wwait > 1 or self._writer or self._readers or self._fast:
                cond.wait()
            while self._writer or self._readers or self._fast:
                cond.wait()
        except BaseException:
            self._waiters -= 1
            self._wwait -= 1
            if not self._writer:
                if self._wwait:
                    if not self._readers and not self._fast:
                        cond.notify()  # pass our turn on
                else:
                    self._wbusy = _SLOW_READERS
                    if self._rwait:
                        self._wake_readers()  # readers we were holding back may go on now
            self._lock.release()
            raise
        self._waiters -= 1
        self._wwait -= 1
        self._cls.write.contended(perf_counter_ns() - t0, contention_point())

    def try_write_lock(self) -> bool:
        lk = self._lock
        lk.acquire()
        self._wbusy = True
        if self._writer or self._readers or self._fast or self._wwait:
            self._wbusy = self._writer or self._wwait > 0 or _SLOW_READERS
            lk.release()
            return False
        self._writer = True
        lk.release()
        self._cls.write.count()
        if LOCKDEP.on:
            lockdep_acquired(self, self._cls, _WRITE, True)
        return True

    def write_unlock(self) -> None:
        lk = self._lock
        lk.acquire()
        if not self._writer:
            lk.release()
            raise RuntimeError(f"write_unlock of {self._cls.name} not write-locked")
        self._writer = False
        if not self._wwait:
            self._wbusy = _SLOW_READERS
        if self._waiters:
            if self._wwait:
                self._wcond.notify()  # type: ignore[union-attr]
            else:
                self._wake_readers()
        lk.release()
        if LOCKDEP.on:
            lockdep_released(self)

    # -- queries and context managers --------------------------------------------------------

    def is_contended(self) -> bool:
        """rwlock_is_contended(): some thread is queued waiting for this lock."""
        return self._waiters > 0

    def is_locked(self) -> bool:
        return self._writer or self._readers > 0 or len(self._fast) > 0

    def is_write_locked(self) -> bool:
        return self._writer

    def assert_held(self, mode: LockMode | None = None) -> None:
        """lockdep_assert_held(_read/_write): with lockdep on, this thread must hold the lock
        (on the given side); with it off, the lock must be held that way by somebody."""
        if LOCKDEP.on:
            if not lockdep_holds(self, mode):
                raise LockOrderViolation(f"{self._cls.name} is not held by this thread")
            return
        readers = self._readers + len(self._fast)
        if mode is None:
            ok = self._writer or readers > 0
        else:
            ok = self._writer if mode == _WRITE else readers > 0
        if not ok:
            raise LockOrderViolation(f"{self._cls.name} is not held")

    @property
    def readers(self) -> int:
        return self._readers + len(self._fast)

    def read(self) -> _Guard:
        g = self._rg
        if g is None:
            g = self._rg = _Guard(self, self.read_lock, self.read_unlock)
        return g

    def write(self) -> _Guard:
        g = self._wg
        if g is None:
            g = self._wg = _Guard(self, self.write_lock, self.write_unlock)
        return g

    def __repr__(self) -> str:
        n = self.readers
        state = "W" if self._writer else f"R{n}" if n else "unlocked"
        return f"<RWLock {self._cls.name} {state} waiters={self._waiters}>"
