"""Tests of allocator.locks: Mutex, the writer-preferring RWLock, lockdep and lock_stat."""

# Threads run `lambda: (f(), g())`: two calls in one target; the tuple of Nones is unused.
# mypy: disable-error-code="func-returns-value"
from __future__ import annotations

import functools
import itertools
import random
import threading
import time
from collections.abc import Callable

import pytest

from allocator import locks
from allocator import rwlock as rwlock_module
from allocator.locks import (
    CLASS_LOCK,
    LOCK_ORDER,
    MAP_AREA_LOCK,
    MIGRATE_LOCK,
    PAGE_LOCK,
    ZSPAGE_LOCK,
    LockClass,
    LockOrderViolation,
    Mutex,
    RWLock,
    lock_stat_reset,
    lock_stat_text,
    set_lockdep,
)
from support.pure_locks import PURE_LOCKS  # for the tests that trace or fake lock internals

_uniq = itertools.count()


def fresh_class(rank: int | None = None, rw: bool = False) -> LockClass:
    """A lock class of its own, so counters are not shared with other tests."""
    return LockClass(f"test.{next(_uniq)}", rank, rw=rw)


def run_threads(targets: list[Callable[[], object]], timeout: float = 10.0) -> None:
    """Start threads, join them with a watchdog; fail (instead of hanging) if one is stuck and
    re-raise the first exception a thread raised."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported to the main thread
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, f"watchdog: {len(stuck)} thread(s) still running after {timeout}s (deadlock?)"
    if errors:
        raise errors[0]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


# ---------------------------------------------------------------------------- classes


def test_documented_order() -> None:
    assert [c.rank for c in LOCK_ORDER] == [10, 20, 30, 40, 50]
    assert LOCK_ORDER == (PAGE_LOCK, MIGRATE_LOCK, CLASS_LOCK, ZSPAGE_LOCK, MAP_AREA_LOCK)
    assert MIGRATE_LOCK.rw and ZSPAGE_LOCK.rw and not CLASS_LOCK.rw


def test_lock_class_registry() -> None:
    a = LockClass("test.registry", 7)
    assert LockClass("test.registry", 7) is a
    with pytest.raises(ValueError):
        LockClass("test.registry", 8)
    assert a in locks.lock_classes()


def test_default_class_per_creation_site() -> None:
    def make() -> Mutex:
        return Mutex()

    assert make().lock_class is make().lock_class
    assert Mutex().lock_class is not make().lock_class


# ---------------------------------------------------------------------------- Mutex


def test_mutex_basics() -> None:
    m = Mutex(fresh_class())
    assert not m.locked()
    m.acquire()
    assert m.locked()
    assert not m.trylock()
    m.release()
    assert m.trylock()
    m.release()
    with m:
        assert m.locked()
        assert m.acquire(blocking=False) is False
    assert not m.locked()
    assert m.acquire() is True and m.acquire(False) is False
    m.release()


def test_mutex_excludes() -> None:
    m = Mutex(fresh_class())
    counter = [0]

    def work() -> None:
        for _ in range(2000):
            with m:
                v = counter[0]
                counter[0] = v + 1

    run_threads([work] * 4)
    assert counter[0] == 8000


def test_mutex_release_by_other_thread_is_caught(lockdep: None) -> None:
    m = Mutex(fresh_class())
    m.acquire()
    err: list[BaseException] = []

    def other() -> None:
        try:
            m.release()
        except LockOrderViolation as e:
            err.append(e)

    run_threads([other])
    assert err and m.locked()
    m.release()


def test_mutex_release_unheld(lockdep: None) -> None:
    m = Mutex(fresh_class())
    with pytest.raises((LockOrderViolation, RuntimeError)):
        m.release()


# ---------------------------------------------------------------------------- PlainLock


@pytest.fixture(params=["PlainLock", "Mutex"])
def token_lock(request: pytest.FixtureRequest) -> locks.PlainLock:
    """Both token locks: a PlainLock, and a Mutex (a PlainLock with lock_stat and lockdep)."""
    return locks.PlainLock() if request.param == "PlainLock" else Mutex(fresh_class())


def test_token_lock_basics(token_lock: locks.PlainLock) -> None:
    lk = token_lock
    assert not lk.locked() and lk.acquire() and lk.locked()
    assert lk.acquire(False) is False and lk.acquire(blocking=False) is False
    lk.release()
    with lk as entered:
        assert entered is lk and lk.locked()
    assert not lk.locked()
    with pytest.raises(RuntimeError, match="unlocked"):
        lk.release()
    assert len(lk._tok) == 1  # a bad release adds no second token
    assert lk.acquire(False) and not lk.acquire(False)
    lk.release()


def test_token_lock_waiter_sleeps_until_release(token_lock: locks.PlainLock) -> None:
    lk = token_lock
    lk.acquire()
    got: list[float] = []

    def waiter() -> None:
        with lk:
            got.append(time.monotonic())

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while lk._waiters != 1:  # counted in before it sleeps
        assert time.monotonic() < deadline, "the waiter never waited"
        time.sleep(0.001)
    time.sleep(0.02)
    assert not got
    released = time.monotonic()
    lk.release()
    t.join(10)
    assert got and got[0] >= released and lk._waiters == 0 and not lk.locked()
    if isinstance(lk, Mutex):
        assert lk.lock_class.write.contentions == 1


def test_token_lock_excludes_under_contention(token_lock: locks.PlainLock) -> None:
    lk = token_lock
    counter = [0]

    def work() -> None:
        for i in range(3000):
            with lk:
                v = counter[0]
                if i % 100 == 0:
                    time.sleep(0)  # let the others find the lock held and wait
                counter[0] = v + 1

    run_threads([work] * 4)
    assert counter[0] == 12000 and lk._waiters == 0 and not lk.locked()


class _Interrupted(Exception):
    pass


def test_an_interrupted_waiter_passes_the_wake_up_on(token_lock: locks.PlainLock) -> None:
    """A waiter notified by a release and then interrupted (KeyboardInterrupt in the kernel's
    place) must wake the next waiter, or that one sleeps while the lock is free."""
    lk = token_lock

    class InterruptFirst(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            woken = super().wait(timeout)
            if threading.current_thread().name == "first":
                raise _Interrupted
            return woken

    lk._cond = InterruptFirst(threading.Lock())
    lk.acquire()
    outcome: dict[str, str] = {}

    def waiter() -> None:
        name = threading.current_thread().name
        try:
            with lk:
                outcome[name] = "locked"
        except _Interrupted:
            outcome[name] = "interrupted"

    threads = []
    for n, name in enumerate(("first", "second"), 1):
        threads.append(threading.Thread(target=waiter, name=name, daemon=True))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while lk._waiters != n:  # "first" sleeps before "second" (Condition wakes FIFO)
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lk.release()
    for t in threads:
        t.join(10)
    assert outcome == {"first": "interrupted", "second": "locked"}
    assert lk._waiters == 0 and not lk.locked()


def test_a_condition_runs_on_a_token_lock(token_lock: locks.PlainLock) -> None:
    cond = threading.Condition(token_lock)  # type: ignore[arg-type]
    ready: list[int] = []

    def consumer() -> None:
        with cond:
            while not ready:
                cond.wait()

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    with cond:
        ready.append(1)
        cond.notify()
    t.join(10)
    assert not t.is_alive() and not token_lock.locked()


# ---------------------------------------------------------------------------- RWLock


def test_rwlock_shared_readers_exclusive_writer() -> None:
    rw = RWLock(fresh_class(rw=True))
    rw.read_lock()
    rw.read_lock()  # another reader (same thread is fine with lockdep off)
    assert rw.readers == 2 and rw.is_locked()
    assert not rw.try_write_lock()
    assert rw.try_read_lock()
    for _ in range(3):
        rw.read_unlock()
    assert rw.try_write_lock()
    assert rw.is_write_locked()
    assert not rw.try_read_lock() and not rw.try_write_lock()
    rw.write_unlock()
    with rw.write():
        assert rw.is_write_locked()
    with rw.read():
        assert rw.readers == 1
    assert not rw.is_locked()


def test_rwlock_unlock_errors() -> None:
    rw = RWLock(fresh_class(rw=True))
    with pytest.raises(RuntimeError):
        rw.read_unlock()
    with pytest.raises(RuntimeError):
        rw.write_unlock()


def test_rwlock_writer_preference_and_is_contended() -> None:
    """A queued writer blocks new readers (qrwlock) and makes the lock contended."""
    rw = RWLock(fresh_class(rw=True))
    order: list[str] = []
    rw.read_lock()  # the main thread is an active reader
    assert not rw.is_contended()

    def writer() -> None:
        rw.write_lock()
        order.append("writer")
        time.sleep(0.02)
        rw.write_unlock()

    def late_reader() -> None:
        rw.read_lock()
        order.append("reader")
        rw.read_unlock()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    wait_until(rw.is_contended)  # the writer is queued behind our read lock
    assert not rw.try_read_lock(), "a new reader must not pass a queued writer"
    r = threading.Thread(target=late_reader, daemon=True)
    r.start()
    wait_until(lambda: rw._waiters == 2)
    assert order == []
    rw.read_unlock()  # the writer goes first, then the queued reader
    w.join(5)
    r.join(5)
    assert not w.is_alive() and not r.is_alive()
    assert order == ["writer", "reader"]
    assert not rw.is_contended() and not rw.is_locked()


def test_rwlock_waiting_readers_all_woken() -> None:
    rw = RWLock(fresh_class(rw=True))
    rw.write_lock()
    inside = threading.Barrier(5, timeout=5)

    def reader() -> None:
        with rw.read():
            inside.wait()  # all four readers hold the lock at the same time

    ts = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in ts:
        t.start()
    wait_until(lambda: rw._waiters == 4)
    assert rw.is_contended()
    rw.write_unlock()
    inside.wait()
    for t in ts:
        t.join(5)
    assert not any(t.is_alive() for t in ts)


def test_rwlock_relocking_writer_does_not_starve_readers() -> None:
    """__zs_compact pattern: hold the write lock, drop it when is_contended(), take it again at
    once. Queued readers are handed the lock on write_unlock, so they get through."""
    rw = RWLock(fresh_class(rw=True))
    stop = threading.Event()
    yields = [0]

    def compactor() -> None:
        rw.write_lock()
        while not stop.is_set():
            if rw.is_contended():
                yields[0] += 1
                rw.write_unlock()
                rw.write_lock()  # re-lock immediately, no sleep
        rw.write_unlock()

    reads = [0]

    def reader() -> None:
        for _ in range(200):
            with rw.read():
                reads[0] += 1

    c = threading.Thread(target=compactor, daemon=True)
    c.start()
    try:
        run_threads([reader] * 3, timeout=10)
    finally:
        stop.set()
        c.join(5)
    assert reads[0] == 600 and yields[0] > 0


def test_rwlock_writers_queue_fifo() -> None:
    rw = RWLock(fresh_class(rw=True))
    rw.read_lock()
    order: list[int] = []

    def writer(i: int) -> None:
        with rw.write():
            order.append(i)

    ts = []
    for i in range(4):
        t = threading.Thread(target=writer, args=(i,), daemon=True)
        t.start()
        ts.append(t)
        wait_until(lambda: rw._wwait == i + 1)  # noqa: B023 - called in this iteration
    assert not rw.try_write_lock()
    rw.read_unlock()
    for t in ts:
        t.join(5)
    assert order == [0, 1, 2, 3]


def start_writer(rw: RWLock) -> tuple[threading.Thread, threading.Event]:
    """A thread that write-locks `rw` (setting the event once in) and unlocks; returns once it
    is queued on the lock."""
    got = threading.Event()

    def writer() -> None:
        rw.write_lock()
        got.set()
        rw.write_unlock()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    wait_until(rw.is_contended)
    return w, got


def test_rwlock_fast_path_readers_hold_off_a_writer() -> None:
    """Readers that came in without taking the internal lock (no writer about) still keep a
    writer out until the last of them unlocks, whichever thread unlocks."""
    rw = RWLock(fresh_class(rw=True))
    rw.read_lock()
    rw.read_lock()
    assert rw._fast, "with no writer about, readers take the fast path"
    assert rw.readers == 2 and rw.is_locked()
    w, got = start_writer(rw)
    rw.read_unlock()
    time.sleep(0.02)
    assert not got.is_set(), "one reader is still inside"
    unlocker = threading.Thread(target=rw.read_unlock, daemon=True)  # no owner: any thread
    unlocker.start()
    unlocker.join(5)
    assert got.wait(5)
    w.join(5)
    assert not rw.is_locked() and not rw.is_contended() and not rw._fast


def test_rwlock_fast_and_slow_readers_mix() -> None:
    """A reader admitted by a writer's hand-off (slow path, counted in _readers) and one that
    came in later by the fast path are one reader count: a writer waits for both."""
    rw = RWLock(fresh_class(rw=True))
    rw.write_lock()
    slow_in = threading.Event()
    release_slow = threading.Event()

    def slow_reader() -> None:
        rw.read_lock()  # queued behind the writer: slow path, then granted
        slow_in.set()
        release_slow.wait(5)
        rw.read_unlock()

    r = threading.Thread(target=slow_reader, daemon=True)
    r.start()
    wait_until(lambda: rw._waiters == 1)
    rw.write_unlock()
    assert slow_in.wait(5)
    rw.read_lock()  # no writer about now: the fast path
    assert rw._fast and rw.readers == 2
    w, got = start_writer(rw)
    assert not rw.try_read_lock(), "a queued writer shuts the fast path too"
    rw.read_unlock()  # takes the fast token; the slow reader remains
    time.sleep(0.02)
    assert not got.is_set()
    release_slow.set()  # its unlock finds no token: the slow count goes
    r.join(5)
    assert got.wait(5)
    w.join(5)
    assert not rw.is_locked() and not rw.is_contended() and rw.readers == 0


def test_rwlock_failed_try_write_lock_reopens_the_fast_path() -> None:
    rw = RWLock(fresh_class(rw=True))
    rw.read_lock()
    assert not rw.try_write_lock()
    assert rw.try_read_lock() and len(rw._fast) == 2
    rw.read_unlock()
    rw.read_unlock()
    assert rw.try_write_lock()
    assert not rw.try_read_lock()
    rw.write_unlock()
    rw.read_lock()
    assert rw._fast
    rw.read_unlock()
    with pytest.raises(RuntimeError):
        rw.read_unlock()


def test_rwlock_without_a_gil_every_reader_takes_the_slow_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Free-threaded CPython: the fast path's reasoning needs the GIL, so it is never used."""
    monkeypatch.setattr(rwlock_module, "_SLOW_READERS", True)
    rw = RWLock(fresh_class(rw=True))
    for _ in range(2):
        rw.read_lock()
        assert rw.try_read_lock()
        assert not rw._fast and rw.readers == 2
        rw.read_unlock()
        rw.read_unlock()
        rw.write_lock()
        rw.write_unlock()
        assert rw.try_write_lock()
        rw.write_unlock()
    rwlock_stress(0.3, 6, rw)


def test_rwlock_reader_backs_out_when_a_writer_flag_appears() -> None:
    """The window between publishing a fast-path token and re-checking for a writer: a reader
    that finds the flag set then takes its token back and goes the slow way."""
    rw = PURE_LOCKS.RWLock(fresh_class(rw=True))

    class Racing(list):
        def append(self, item: object) -> None:
            super().append(item)
            rw._wbusy = True  # as if a writer got to _lock right after our append

    rw._fast = Racing()
    rw.read_lock()  # no writer really holds or waits: it gets in, slowly
    assert rw._readers == 1 and not rw._fast and rw.readers == 1
    rw.read_unlock()
    assert rw.readers == 0 and not rw.is_locked()
    rw.write_lock()  # a real writer's unlock clears the flag again
    rw.write_unlock()
    rw._fast = []
    rw.read_lock()
    assert rw._fast and rw._readers == 0
    rw.read_unlock()


class ParkAfter:
    """A line tracer that parks the thread it is installed in at a chosen point of a function:
    right after the first line of ``func`` whose source contains ``marker`` has run (that is,
    at the next line event in the same frame).  ``parked`` is set once the thread waits there;
    ``go`` lets it continue."""

    def __init__(self, func: Callable[..., object], marker: str) -> None:
        import inspect

        lines, first = inspect.getsourcelines(func)
        hits = [first + i for i, text in enumerate(lines) if marker in text]
        assert hits, f"{marker!r} not in {func.__qualname__}"
        self.code = func.__code__
        self.line = hits[0]
        self.parked = threading.Event()
        self.go = threading.Event()
        self._armed = True

    def install(self) -> None:
        import sys

        sys.settrace(self._global)

    def _global(self, frame, event, arg):
        return self._local if frame.f_code is self.code else None

    def _local(self, frame, event, arg):
        if event == "line" and self._armed and frame.f_lineno > self.line:
            self._armed = False
            self.parked.set()
            self.go.wait(10)
        return self._local


def test_rwlock_slow_reader_unlock_cannot_strand_a_fast_reader_backing_out() -> None:
    """The hand-off schedule that wedged the pool (a slow-path reader's unlock taking the token
    of a fast-path reader still inside read_lock), forced step by step:

    1. writer W1 holds the lock, reader S queues; W1's unlock admits S (counted in _readers)
       and clears the writer flag;
    2. reader B passes the flag check and appends its fast-path token, then is parked;
    3. writer W2 sets the flag and waits for the readers;
    4. S unlocks: a token is there, so it pops B's token, leaving its own count in _readers;
    5. B resumes, sees the flag and backs out.
    Before the fix B's back-out popped an empty list (IndexError out of read_lock) and _readers
    kept S's count forever, so W2 and everybody after it waited forever.  Now B's back-out
    takes the count from _readers, W2 gets the lock, then B does."""
    rw = PURE_LOCKS.RWLock(fresh_class(rw=True))
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return run

    rw.write_lock()  # W1 (this thread)
    s_in, s_release = threading.Event(), threading.Event()

    def reader_s() -> None:
        rw.read_lock()
        s_in.set()
        assert s_release.wait(10)
        rw.read_unlock()

    s = threading.Thread(target=guarded(reader_s), daemon=True)
    s.start()
    wait_until(lambda: rw._rwait == 1)  # S queued (slow path)
    rw.write_unlock()  # hand-off admits S
    assert s_in.wait(5) and rw._readers == 1 and not rw._wbusy

    park = ParkAfter(PURE_LOCKS.RWLock.read_lock, "fast.append(None)")
    b_in = threading.Event()

    def reader_b() -> None:
        park.install()
        rw.read_lock()
        b_in.set()
        rw.read_unlock()

    b = threading.Thread(target=guarded(reader_b), daemon=True)
    b.start()
    assert park.parked.wait(5)  # B: token appended, parked
    assert len(rw._fast) == 1
    w2, w2_got = start_writer(rw)  # W2 sets the flag and waits
    assert rw._wbusy and rw._wwait == 1
    s_release.set()  # S's unlock pops B's token
    s.join(5)
    assert not s.is_alive() and not rw._fast and rw._readers == 1
    park.go.set()  # B backs out
    assert w2_got.wait(5), f"W2 never got the lock: {rw!r}, errors {errors!r}"
    w2.join(5)
    assert b_in.wait(5)
    b.join(5)
    assert not errors, errors
    assert not b.is_alive() and not w2.is_alive()
    assert rw.readers == 0 and not rw.is_locked() and not rw.is_contended()
    assert rw._readers == 0 and rw._wwait == rw._rwait == rw._rgrant == 0
    assert rw.try_write_lock()
    rw.write_unlock()


def test_rwlock_stress() -> None:
    rwlock_stress(0.6, 8)


@pytest.mark.soak
def test_rwlock_stress_soak() -> None:
    rwlock_stress(20.0, 16)


def rwlock_stress(seconds: float, nthreads: int, rw: RWLock | None = None) -> None:
    """Many threads, random read/write/try mixes: readers never overlap a writer, writers never
    overlap anyone; finishes under a watchdog (no lost wake-up)."""
    if rw is None:
        rw = RWLock(fresh_class(rw=True))
    state = {"readers": 0, "writers": 0, "writes": 0}
    guard = threading.Lock()
    bad: list[str] = []

    def check() -> None:
        if state["writers"] > 1 or (state["writers"] and state["readers"]):
            bad.append(f"overlap {state}")

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            op = rnd.random()
            if op < 0.25 or (op < 0.3 and rw.try_write_lock()):
                if op < 0.25:
                    rw.write_lock()
                with guard:
                    state["writers"] += 1
                    check()
                if rnd.random() < 0.2:
                    time.sleep(0)
                with guard:
                    state["writers"] -= 1
                    state["writes"] += 1
                rw.write_unlock()
            else:
                if op < 0.35:
                    if not rw.try_read_lock():
                        continue
                else:
                    rw.read_lock()
                with guard:
                    state["readers"] += 1
                    check()
                if rnd.random() < 0.2:
                    time.sleep(0)
                with guard:
                    state["readers"] -= 1
                rw.read_unlock()

    run_threads([functools.partial(worker, s) for s in range(nthreads)], timeout=seconds + 10)
    assert not bad, bad[:3]
    assert state["writes"] > 0
    assert not rw.is_locked() and not rw.is_contended()


# ---------------------------------------------------------------------------- lockdep


def test_lockdep_off_by_default() -> None:
    assert not locks.lockdep_enabled()
    cl = Mutex(CLASS_LOCK)
    ml = RWLock(MIGRATE_LOCK)
    with cl:
        with ml.read():  # an inversion, but nobody is checking
            pass


def test_lockdep_catches_inversion_before_blocking(lockdep: None) -> None:
    cl = Mutex(CLASS_LOCK)
    ml = RWLock(MIGRATE_LOCK)
    with ml.read():
        with cl:  # documented order: fine
            pass
    with cl:
        with pytest.raises(LockOrderViolation, match="inversion"):
            ml.read_lock()
        assert not ml.is_locked(), "the violation must be raised before taking the lock"
        with pytest.raises(LockOrderViolation):
            ml.write_lock()
    assert not cl.locked()
    assert locks.held_locks() == []


def test_lockdep_allows_same_class_nesting(lockdep: None) -> None:
    src, dst = RWLock(ZSPAGE_LOCK), RWLock(ZSPAGE_LOCK)
    ml = RWLock(MIGRATE_LOCK)
    cl = Mutex(CLASS_LOCK)
    with ml.write(), cl:  # __zs_compact: migrate_lock -> class->lock -> src -> dst
        src.write_lock()
        dst.write_lock_nested()
        assert len(locks.held_locks()) == 4
        dst.write_unlock()
        src.write_unlock()


def test_lockdep_allows_trylock_inversion(lockdep: None) -> None:
    cl = Mutex(CLASS_LOCK)
    page = Mutex(PAGE_LOCK)  # stands in for a page lock taken by free_zspage
    with cl:
        assert page.trylock()  # trylock against the order: allowed
        page.release()
    # ... but holding the trylocked lower-rank lock does not excuse a later blocking inversion
    with cl:
        assert page.trylock()
        with pytest.raises(LockOrderViolation):
            RWLock(MIGRATE_LOCK).read_lock()
        page.release()


def test_lockdep_release_out_of_order(lockdep: None) -> None:
    """zs_map_object: read(migrate_lock) -> read(zspage->lock) -> read_unlock(migrate_lock)."""
    ml, zl = RWLock(MIGRATE_LOCK), RWLock(ZSPAGE_LOCK)
    ml.read_lock()
    zl.read_lock()
    ml.read_unlock()
    assert len(locks.held_locks()) == 1 and "zspage" in locks.held_locks()[0]
    # A nested map of another zspage (migrate_lock after zspage->lock) is an inversion.
    with pytest.raises(LockOrderViolation):
        ml.read_lock()
    zl.read_unlock()
    assert locks.held_locks() == []


def test_lockdep_recursion(lockdep: None) -> None:
    m = Mutex(fresh_class())
    with m:
        with pytest.raises(LockOrderViolation, match="recursive"):
            m.acquire()
        assert not m.trylock()  # a trylock just fails
    rw = RWLock(fresh_class(rw=True))
    with rw.read():
        with pytest.raises(LockOrderViolation, match="recursive read"):
            rw.read_lock()
        with pytest.raises(LockOrderViolation):
            rw.write_lock()


def test_lockdep_graph_for_unranked_classes(lockdep: None) -> None:
    a, b = Mutex(fresh_class()), Mutex(fresh_class())
    with a, b:
        pass
    with b:
        with pytest.raises(LockOrderViolation, match="inversion"):
            a.acquire()
    # lockdep state is per thread: another thread learns from the same graph
    err: list[BaseException] = []

    def other() -> None:
        try:
            with b:
                a.acquire()
        except LockOrderViolation as e:
            err.append(e)

    run_threads([other])
    assert err


def test_lockdep_per_thread_stacks(lockdep: None) -> None:
    cl = Mutex(CLASS_LOCK)
    ml = RWLock(MIGRATE_LOCK)
    with cl:
        # another thread holds nothing: migrate_lock is fine there
        run_threads([lambda: (ml.read_lock(), ml.read_unlock())])


# ---------------------------------------------------------------------------- lock_stat


def test_lock_stat_uncontended_counts_only_acquisitions() -> None:
    c = fresh_class()
    m = Mutex(c)
    for _ in range(10):
        with m:
            pass
    assert m.trylock()
    m.release()
    assert c.acquisitions == 11
    assert c.contentions == 0 and c.wait_total_ns == 0 and c.wait_max_ns == 0


def test_lock_stat_counts_contention_when_waiting() -> None:
    c = fresh_class()
    m = Mutex(c)
    m.acquire()
    about_to_wait = threading.Event()
    t = threading.Thread(
        target=lambda: (about_to_wait.set(), m.acquire(), m.release()), daemon=True
    )
    t.start()
    assert about_to_wait.wait(5)
    time.sleep(0.05)
    m.release()
    t.join(5)
    assert c.acquisitions == 2
    assert c.contentions == 1
    assert c.wait_total_ns >= 1_000_000 and c.wait_max_ns == c.wait_total_ns == c.wait_min_ns
    text = lock_stat_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(c.name + ":"))
    fields = line.split()
    assert fields[1] == "1" and fields[-1] == "2"
    assert "<lambda>" in text  # the contention point is the caller that waited


def test_lock_stat_rw_sides() -> None:
    c = fresh_class(rw=True)
    rw = RWLock(c)
    rw.write_lock()
    t = threading.Thread(target=lambda: (rw.read_lock(), rw.read_unlock()), daemon=True)
    t.start()
    wait_until(rw.is_contended)
    rw.write_unlock()
    t.join(5)
    with rw.read():
        pass
    assert c.write.acquisitions == 1 and c.write.contentions == 0
    assert c.read.acquisitions == 2 and c.read.contentions == 1
    text = lock_stat_text()
    assert f"{c.name}-W:" in text and f"{c.name}-R:" in text
    assert text.startswith("lock_stat version 0.4\n")
    assert "waittime-max" in text and "acquisitions" in text


def test_lock_stat_reset() -> None:
    c = fresh_class()
    m = Mutex(c)
    with m:
        pass
    c.write.contended(1000, "here")
    lock_stat_reset()
    assert c.acquisitions == 0 and c.contentions == 0 and c.wait_max_ns == 0
    with m:
        pass
    assert c.acquisitions == 1


def test_assert_held(lockdep: None) -> None:
    m = Mutex(fresh_class())
    rw = RWLock(fresh_class(rw=True))
    with pytest.raises(LockOrderViolation):
        m.assert_held()
    with m:
        m.assert_held()
        err: list[BaseException] = []

        def other() -> None:
            try:
                m.assert_held()
            except LockOrderViolation as e:
                err.append(e)

        run_threads([other])
        assert err, "held by another thread is not held by this one"
    with rw.read():
        rw.assert_held()
        rw.assert_held(locks.LockMode.READ)
        with pytest.raises(LockOrderViolation):
            rw.assert_held(locks.LockMode.WRITE)
    with pytest.raises(LockOrderViolation):
        rw.assert_held()


def test_assert_held_without_lockdep() -> None:
    m = Mutex(fresh_class())
    with pytest.raises(LockOrderViolation):
        m.assert_held()
    with m:
        m.assert_held()


def test_lockdep_reports_acquisition_sites() -> None:
    set_lockdep(True)
    try:
        cl = Mutex(CLASS_LOCK)
        with cl:
            assert "test_lockdep_reports_acquisition_sites test_locks.py:" in locks.held_locks()[0]
            with pytest.raises(LockOrderViolation, match="test_locks.py"):
                RWLock(MIGRATE_LOCK).read_lock()
        set_lockdep(True, record_sites=False)
        with cl:
            assert locks.held_locks()[0].endswith(" at ?")
    finally:
        set_lockdep(False)
