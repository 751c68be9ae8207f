"""RWLock: the writer-preferring reader/writer lock of the zsmalloc port (qrwlock's stand-in).

The pool's ``migrate_lock`` and every zspage's lock are RWLocks.  The lock order they obey, the
other primitives (``PlainLock``, ``Mutex``) and the list of shortcuts that rely on the GIL
(shortcut 1 is this lock's reader fast path) are ``allocator.locks``', which re-exports
``RWLock``; lockdep and lock_stat are ``allocator.lockdep``'s.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from time import perf_counter_ns

from .lockdep import (
    LockClass,
    LockMode,
    LockOrderViolation,
    contention_point,
    lockdep_acquired,
    lockdep_before,
    lockdep_holds,
    lockdep_released,
    site_class,
)
from .lockdep_switch import LOCKDEP

__all__ = ["RWLock"]

# The sides as module globals: the fast paths below load them with one LOAD_GLOBAL.
_READ = LockMode.READ
_WRITE = LockMode.WRITE

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
        if not cls.rw:
            cls.rw = True
        self._lock = threading.Lock()  # `threading` looked up here: the explorer swaps it
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
