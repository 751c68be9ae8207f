"""Locks for the zsmalloc port: lock classes, Mutex, a qrwlock-like RWLock, lockdep, lock_stat.

This module owns every lock primitive the allocator uses and the two debugging facilities the
kernel builds around its locks:

* **Lock classes** (``LockClass``): like lockdep's ``struct lock_class_key``, every lock belongs
  to a class, and a class has a *rank*, its position in the lock order below.

* **The lock order of the whole stack** (outermost first; a thread may only block on a lock
  whose rank is not below the rank of any lock it holds).  This table is the one place the
  order is written; the ranks under 10 belong to the allocator's user (zram, ``zramfs``), which
  defines those classes itself, so this package still knows nothing of it::

      rank  class                         lock                             defined in
         2  zram-control                  Registry's device table          zramfs.device
         3  &zram->compact                one compaction per device; holds
                                          off reset meanwhile (compact_store
                                          keeps init_lock for read)        zramfs.device
         4  &zram->init_lock              ZramDevice.dev_lock (config)     zramfs.device
         6  zram_slot_lock                a slot-table stripe              zramfs.slots
        10  PG_locked                     page lock (memory compaction)    memory
        20  &pool->migrate_lock (rw)                                       here
        30  &class->lock                                                   here
        40  &zspage->lock (rw)                                             here
        50  zs_map_area.lock              the per-CPU mapping area         here
        60  &zone->lock                   the page allocator's free lists  here
        70  leaf locks                    counters and lists guarded for a
                                          few statements, never held while
                                          taking another lock: pages_
                                          allocated, the handle cache, the
                                          zspage set, pool->free_work, page
                                          flags, the backing-device bitmap  here / users

  Rows 10-50 are zsmalloc 5.17's documented order (mm/zsmalloc.c header comment).  The zram
  rows follow from the data path: a slot's stripe is held while its old object is freed
  (zs_free takes migrate_lock and class->lock) and while a page is decompressed; device
  configuration (dev_lock) frees every slot under the stripes on reset; hot_remove resets
  the device under the registry lock.  Not in the checker, on purpose: the internal
  ``threading.Lock`` of a Mutex/RWLock and the page-lock wait queues (they are the lock
  primitives themselves, held for a few bytecodes), and the hot-path locks created by
  ``hot_path_lock()`` while lockdep is off: the slot stripes and the leaf locks (a plain lock's
  ``with`` is one C call, a checked one's a Python frame; the kernel too checks these only in
  lockdep builds).  So lockdep sees them in objects created after ``set_lockdep(True)``.

* **Mutex** (``spin_lock``/``mutex`` stand-in) and **RWLock** (``rwlock_t``/qrwlock stand-in:
  a queued writer blocks *new* readers, ``is_contended()`` is ``rwlock_is_contended``).
  The uncontended paths touch one ``threading.Lock`` and one C-level counter; condition
  variables, timestamps and statistics exist only on the slow path (a thread has to wait).

* **lockdep** (``set_lockdep(True)``, off by default): a per-thread stack of held locks. A
  blocking acquisition of a lock whose class ranks *lower* than a held lock's class raises
  ``LockOrderViolation`` before blocking. Same-class nesting is allowed (several page locks of
  one zspage, ``write_lock_nested`` of src+dst zspages), trylocks are never checked (the kernel
  allows trylock inversions: free_zspage trylocks pages under class->lock). Unranked classes
  are checked the way real lockdep does it: every blocking acquisition records the dependency
  ``held class -> new class`` and a cycle in that graph is an inversion. Re-acquiring a lock
  instance the thread already holds (including a recursive read of a writer-preferring rwlock,
  which deadlocks as soon as a writer queues) is reported too.

* **lock_stat** (``lock_stat_text()``/``lock_stat_reset()``): per class, and for rw classes
  separately per read/write side (``&pool->migrate_lock-R`` / ``-W`` as in
  /proc/lock_stat): acquisitions (always counted, with an atomic C counter), contentions and
  wait times (counted only when a thread actually waited) and the call sites that contended.
  Hold times are not measured (that would put clock reads on the fast path).

``allocator.memory`` implements page locks (a PG_locked bit per frame) on top of the hooks
``lockdep_before/lockdep_acquired/lockdep_released`` and ``LockClass.stat``.

**Shortcuts that rely on the GIL.**  The hot path of the stack does a few things without a
lock because, under the GIL, each is one indivisible C-level operation.  They are listed here
so that none is added silently; a build without a GIL refuses to start (``zramfs.runtime``),
except for the first, which has a slow path of its own.

1. The RWLock reader fast path (``_fast`` list append/pop, then a re-read of ``_wbusy``):
   Dekker-style, see ``RWLock``.  Explored line by line, with the original hand-off bug
   injected and found, in ``tests/test_lock_interleavings.py``; without a GIL every reader
   takes the slow path.
2. lock_stat acquisition counters: ``next()`` on an ``itertools.count`` is one C call; the
   other counters change only under ``LockStat._lock``.
3. lockdep's known-edge check reads the dependency graph without ``_graph_lock``: a
   ``dict.get`` and a set membership test, each atomic; a miss falls back to the locked path.
4. ``RWLock.is_contended``/``readers``/``is_locked`` and ``Mutex.locked`` read counters
   without ``_lock``: a snapshot that may be stale the moment it is taken, as the kernel's
   ``rwlock_is_contended`` is; compaction uses it only as a hint to yield.
5. The pool's handle cache: ``_free_cells`` is popped and appended without a lock (atomic list
   operations) and ``_cells`` is indexed by every thread while ``_grow_cells`` extends it
   under its leaf lock.  ``array.extend`` reallocates in one C call and nobody holds a buffer
   export of it, so an index is read either before or after the move, never during it.
6. ``PhysicalMemory``'s per-frame arrays are grown in place the same way (``_grow``, under the
   zone lock) while other threads index them.
7. ``zs_can_compact``/``zs_shrinker_count`` and the device statistics read counters without
   the locks that guard them: each read is one attribute or list item; the sum is a snapshot,
   as the kernel's unlocked reads in ``zs_shrinker_count`` and ``mm_stat_show`` are.
8. The device's data path reads ``_meta``, ``_stripes`` and ``limit_pages`` without
   ``dev_lock``: single attribute loads; reset, which replaces them, refuses while the image
   is open, and a new mem_limit applies from the next page as in the kernel.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import Counter
from enum import IntEnum
from time import perf_counter_ns
from typing import Any, Iterator

__all__ = [
    "LockClass",
    "LockMode",
    "LockStat",
    "LockOrderViolation",
    "Mutex",
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
]


class LockOrderViolation(AssertionError):
    """lockdep found an acquisition that can deadlock (order inversion, recursion, bad release).

    Every report is also counted (``lockdep_stats()``), so a process serving requests, where
    the exception becomes an I/O error, can still be asked afterwards whether lockdep fired:
    the kernel's ``debug_locks`` turning 0 after the first report, in /proc/lockdep_stats."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        global _violations, _first_violation
        with _violations_lock:
            _violations += 1
            if not _first_violation:
                _first_violation = str(args[0]) if args else "lock order violation"


_violations = 0
_first_violation = ""
_violations_lock = threading.Lock()


def lockdep_stats() -> dict[str, int | str]:
    """Whether lockdep is on, how many violations it reported since it was last switched on,
    and the first of them (``debug_locks`` is 0 once one was reported, as in the kernel)."""
    return {"lockdep": int(_lockdep), "violations": _violations,
            "debug_locks": int(_violations == 0), "first_violation": _first_violation}


class LockMode(IntEnum):
    """Which side of a lock an acquisition took (a Mutex or page lock is always WRITE)."""

    READ = 0
    WRITE = 1


_READ = LockMode.READ
_WRITE = LockMode.WRITE


def _count_value(counter: "itertools.count[int]") -> int:
    # itertools.count has no public getter; its repr is "count(N)" where N is the next value.
    return int(repr(counter)[6:-1])


class LockStat:
    """lock_stat counters of one side (read or write) of one lock class.

    ``acquisitions`` is an ``itertools.count`` bumped with ``next()``: a single C call, so it is
    atomic under the GIL and costs ~30 ns on the fast path. Everything else is updated only on
    the slow path, under a private leaf lock.
    """

    __slots__ = ("_acq", "_acq_base", "contentions", "wait_total_ns", "wait_min_ns", "wait_max_ns",
                 "points", "_lock")

    def __init__(self) -> None:
        self._acq = itertools.count()
        self._acq_base = 0
        self.contentions = 0
        self.wait_total_ns = 0
        self.wait_min_ns = 0
        self.wait_max_ns = 0
        self.points: Counter[str] = Counter()   # contending call sites (kernel: "contention points")
        self._lock = threading.Lock()

    @property
    def acquisitions(self) -> int:
        return _count_value(self._acq) - self._acq_base

    def contended(self, wait_ns: int, point: str | None = None) -> None:
        """Record one acquisition that had to wait ``wait_ns`` nanoseconds."""
        with self._lock:
            self.contentions += 1
            self.wait_total_ns += wait_ns
            if wait_ns > self.wait_max_ns:
                self.wait_max_ns = wait_ns
            if self.contentions == 1 or wait_ns < self.wait_min_ns:
                self.wait_min_ns = wait_ns
            if point is not None:
                self.points[point] += 1

    def reset(self) -> None:
        with self._lock:
            self._acq_base = _count_value(self._acq)
            self.contentions = 0
            self.wait_total_ns = 0
            self.wait_min_ns = 0
            self.wait_max_ns = 0
            self.points.clear()


class LockClass:
    """A kind of lock (lockdep's lock class): a name, a rank in the lock order, lock_stat counters.

    Classes are registered by name; constructing a class whose name exists returns the existing
    one (the rank must agree). ``rank=None`` means "not in the documented order": such a class
    is only checked through the lockdep dependency graph. ``rw`` marks classes of rwlocks, whose
    lock_stat is shown as separate -R and -W lines.
    """

    __slots__ = ("name", "rank", "rw", "read", "write", "__weakref__")

    _registry: dict[str, "LockClass"] = {}
    _registry_lock = threading.Lock()

    name: str
    rank: int | None
    rw: bool
    read: LockStat
    write: LockStat

    def __new__(cls, name: str, rank: int | None = None, *, rw: bool = False) -> "LockClass":
        with cls._registry_lock:
            existing = cls._registry.get(name)
            if existing is not None:
                if existing.rank != rank:
                    raise ValueError(f"lock class {name!r} already registered with rank {existing.rank}")
                existing.rw = existing.rw or rw
                return existing
            self = object.__new__(cls)
            self.name = name
            self.rank = rank
            self.rw = rw
            self.read = LockStat()
            self.write = LockStat()
            cls._registry[name] = self
            return self

    def __init__(self, name: str, rank: int | None = None, *, rw: bool = False) -> None:
        pass  # all work is done in __new__ (registry lookup)

    def __repr__(self) -> str:
        return f"LockClass({self.name!r}, rank={self.rank}{', rw' if self.rw else ''})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (LockClass, (self.name, self.rank), None)

    def stat(self, mode: LockMode) -> LockStat:
        return self.write if mode else self.read

    # Totals over both sides: the INTERFACES.md attribute names.
    @property
    def acquisitions(self) -> int:
        return self.read.acquisitions + self.write.acquisitions

    @property
    def contentions(self) -> int:
        return self.read.contentions + self.write.contentions

    @property
    def wait_total_ns(self) -> int:
        return self.read.wait_total_ns + self.write.wait_total_ns

    @property
    def wait_max_ns(self) -> int:
        return max(self.read.wait_max_ns, self.write.wait_max_ns)

    @property
    def wait_min_ns(self) -> int:
        mins = [s.wait_min_ns for s in (self.read, self.write) if s.contentions]
        return min(mins) if mins else 0

    def reset(self) -> None:
        self.read.reset()
        self.write.reset()


# The documented zsmalloc 5.17 order, outermost first (mm/zsmalloc.c header comment).
PAGE_LOCK = LockClass("PG_locked", 10)
MIGRATE_LOCK = LockClass("&pool->migrate_lock", 20, rw=True)
CLASS_LOCK = LockClass("&class->lock", 30)
ZSPAGE_LOCK = LockClass("&zspage->lock", 40, rw=True)
MAP_AREA_LOCK = LockClass("zs_map_area.lock", 50)
MAP_BUFFER_LOCK = MAP_AREA_LOCK
LOCK_ORDER: tuple[LockClass, ...] = (PAGE_LOCK, MIGRATE_LOCK, CLASS_LOCK, ZSPAGE_LOCK, MAP_AREA_LOCK)
# The page allocator's lock (allocator.memory's free-frame lists): a leaf under every zsmalloc
# lock, as the buddy allocator's zone->lock is. Not part of zsmalloc's documented order.
ZONE_LOCK = LockClass("&zone->lock", 60)
# Locks that guard a counter or a list for a few statements and are never held while another
# lock is taken (rank 70 in the table above).  Each has its own class, so lock_stat tells them
# apart and the dependency graph still sees an inversion between two of them.
LEAF_RANK = 70
PAGES_ALLOCATED_LOCK = LockClass("&pool->pages_allocated", LEAF_RANK)
HANDLE_CACHE_LOCK = LockClass("&pool->handle_cache", LEAF_RANK)
ZSPAGE_SET_LOCK = LockClass("&pool->zspages", LEAF_RANK)
FREE_WORK_LOCK = LockClass("&pool->free_work", LEAF_RANK)
PAGE_FLAGS_LOCK = LockClass("page->flags", LEAF_RANK)



def hot_path_lock(lock_class: LockClass) -> "Mutex | threading.Lock":
    """A lock of ``lock_class`` for a hot path: a checked ``Mutex`` when lockdep is on at the
    time it is created, else a plain ``threading.Lock`` (a ``with`` on it is one C call; a
    Mutex's is a Python frame, which the pool's per-zspage counters and the slot stripes would
    pay on every request).  Both have ``acquire``/``release``/``locked`` and the context
    manager protocol.  The kernel likewise checks such locks only in lockdep builds."""
    return Mutex(lock_class) if _lockdep else threading.Lock()


def _site_class(rw: bool) -> LockClass:
    """Default class of a lock created without one: one class per creation site, as lockdep keys
    a lock by the static key of its init call site (so unrelated locks never share a class)."""
    f = sys._getframe(2)
    name = "%s:%d" % ("/".join(f.f_code.co_filename.rsplit("/", 2)[-2:]), f.f_lineno)
    return LockClass(("rwlock@" if rw else "mutex@") + name, rw=rw)


def lock_classes() -> list[LockClass]:
    """All registered lock classes, ranked ones in order first, then by name."""
    with LockClass._registry_lock:
        classes = list(LockClass._registry.values())
    return sorted(classes, key=lambda c: (c.rank is None, c.rank or 0, c.name))


# ------------------------------------------------------------------------------------------
# lockdep
# ------------------------------------------------------------------------------------------

# Read on every acquire/release: a module global is the cheapest check CPython has.
_lockdep = False
_lockdep_sites = True


# A held-lock entry is a plain tuple (cheap to build on every acquisition with lockdep on):
# (key, lock class, mode, taken by trylock, acquisition site as (code object, line)).
_Held = tuple


def _fmt_held(held: list[_Held]) -> str:
    return "[" + ", ".join(_fmt_entry(h) for h in held) + "]"


def _fmt_entry(h: _Held) -> str:
    side = "R" if h[2] == _READ else "W"
    how = " (trylock)" if h[3] else ""
    code, line = h[4]
    where = "%s %s:%d" % (code.co_name, code.co_filename.rsplit("/", 1)[-1], line) if code else "?"
    return f"{h[1].name}-{side} {_describe(h[0])}{how} at {where}"


def _describe(key: object) -> str:
    if isinstance(key, tuple):
        return "pfn %d" % key[1] if len(key) == 2 else repr(key)
    return "%s@%#x" % (type(key).__name__, id(key))


# Frames in these files are lock machinery, not acquisition sites (memory.py: page locks).
_LOCK_FILES = frozenset({__file__, __file__.rsplit("/", 1)[0] + "/memory.py"})

_tls = threading.local()
_all_held: dict[int, list[_Held]] = {}           # thread ident -> its held stack (lockdep on)
_graph: dict[LockClass, set[LockClass]] = {}     # class dependency edges (held -> acquired)
_graph_lock = threading.Lock()


def _held() -> list[_Held]:
    try:
        return _tls.held
    except AttributeError:
        held: list[_Held] = []
        _tls.held = held
        _all_held[threading.get_ident()] = held
        return held


def set_lockdep(enabled: bool, *, record_sites: bool = True) -> None:
    """Turn lockdep on or off. Switching clears the held-lock stacks, the dependency graph
    (locks taken while it was off are unknown to it) and the violation count. ``record_sites`` remembers where each held
    lock was taken, for the violation reports (about half of lockdep's cost per acquisition)."""
    global _lockdep, _lockdep_sites, _violations, _first_violation
    _lockdep_sites = bool(record_sites)
    with _violations_lock:
        _violations = 0
        _first_violation = ""
    with _graph_lock:
        _graph.clear()
    for held in list(_all_held.values()):
        held.clear()
    _lockdep = bool(enabled)


def lockdep_enabled() -> bool:
    return _lockdep


def held_locks() -> list[str]:
    """The current thread's held locks, outermost first (lockdep on; empty otherwise)."""
    return [_fmt_entry(h) for h in _held()]


def _reaches(src: LockClass, dst: LockClass) -> bool:
    """Is there a dependency path src -> ... -> dst in the class graph? (caller holds _graph_lock)"""
    seen = {src}
    todo = [src]
    while todo:
        c = todo.pop()
        for n in _graph.get(c, ()):
            if n is dst:
                return True
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False


def lockdep_before(key: object, cls: LockClass, mode: LockMode, trylock: bool = False) -> None:
    """Check an acquisition of ``key`` (class ``cls``) before blocking on it. lockdep on only."""
    held = _held()
    if not held:
        return
    for h in held:
        k = h[0]
        if k is key or (type(k) is tuple and k == key):
            if trylock:
                return  # a trylock of a held lock just fails; no deadlock
            what = "recursive read" if mode == _READ and h[2] == _READ else "recursive"
            raise LockOrderViolation(
                f"{what} acquisition of {cls.name} {_describe(key)} already held by this thread"
                f" (would deadlock); held: {_fmt_held(held)}")
    if trylock:
        return
    rank = cls.rank
    if rank is not None:
        for h in held:
            r = h[1].rank
            if r is not None and r > rank:
                raise LockOrderViolation(
                    f"lock order inversion: acquiring {cls.name} (rank {rank}) while holding "
                    f"{h[1].name} (rank {r}); held: {_fmt_held(held)}")
    # Dependency graph: held class -> cls. A new edge closing a cycle is an inversion. Known
    # edges are checked without the graph lock (set/dict reads are atomic under the GIL).
    for h in held:
        hc = h[1]
        if hc is not cls:
            succ = _graph.get(hc)
            if succ is None or cls not in succ:
                break
    else:
        return
    with _graph_lock:
        for h in held:
            hc = h[1]
            if hc is cls:
                continue  # same-class nesting is allowed (write_lock_nested, lock_zspage)
            succ = _graph.get(hc)
            if succ is not None and cls in succ:
                continue
            if _reaches(cls, hc):
                raise LockOrderViolation(
                    f"lock order inversion: {cls.name} is acquired before {hc.name} elsewhere, "
                    f"now after it; held: {_fmt_held(held)}")
            _graph.setdefault(hc, set()).add(cls)


def lockdep_acquired(key: object, cls: LockClass, mode: LockMode, trylock: bool = False) -> None:
    site: tuple[Any, int] = (None, 0)
    if _lockdep_sites:
        # The acquisition site: the first caller outside the lock modules.
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename in _LOCK_FILES:
            f = f.f_back
        if f is not None:
            site = (f.f_code, f.f_lineno)
    _held().append((key, cls, mode, trylock, site))


def lockdep_released(key: object, strict: bool = False) -> None:
    """Drop ``key`` from the releasing thread's held stack (any position: zsmalloc releases
    migrate_lock while keeping the inner lock). A lock released by another thread than the
    one that took it (legal for page locks) is removed from the taker's stack. ``strict``
    (Mutex) makes releasing a lock this thread does not hold a violation."""
    held = _held()
    for i in range(len(held) - 1, -1, -1):
        k = held[i][0]
        if k is key or (type(k) is tuple and k == key):
            del held[i]
            return
    if strict:
        raise LockOrderViolation(f"release of {_describe(key)} which this thread does not hold")
    for other in list(_all_held.values()):
        for i in range(len(other) - 1, -1, -1):
            k = other[i][0]
            if k is key or (type(k) is tuple and k == key):
                del other[i]
                return


def contention_point() -> str:
    """The caller outside the lock modules that is contending (slow path only)."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename in _LOCK_FILES:
        f = f.f_back
    if f is None:
        return "?"
    return "%s %s:%d" % (f.f_code.co_name, f.f_code.co_filename.rsplit("/", 1)[-1], f.f_lineno)


# ------------------------------------------------------------------------------------------
# Mutex
# ------------------------------------------------------------------------------------------


class Mutex:
    """A non-recursive lock of a given class (class->lock is a spinlock in the kernel; here it
    is a ``threading.Lock`` with lock_stat and lockdep around it)."""

    __slots__ = ("_lock", "_cls", "_stat", "_acq", "_owner", "__weakref__")

    def __init__(self, lock_class: LockClass | None = None) -> None:
        cls = lock_class if lock_class is not None else _site_class(False)
        self._lock = threading.Lock()
        self._cls = cls
        self._stat = cls.write
        self._acq = cls.write._acq     # lock_stat's acquisition counter (never replaced)
        self._owner = 0

    @property
    def lock_class(self) -> LockClass:
        return self._cls

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (``blocking=False`` is trylock, as threading.Lock's signature)."""
        if not blocking:
            return self.trylock()
        if _lockdep:
            lockdep_before(self, self._cls, _WRITE)
        if not self._lock.acquire(False):
            self._acquire_slow()
        next(self._acq)
        if _lockdep:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE)
        return True

    def _acquire_slow(self) -> None:
        t0 = perf_counter_ns()
        self._lock.acquire()
        self._stat.contended(perf_counter_ns() - t0, contention_point())

    def trylock(self) -> bool:
        if not self._lock.acquire(False):
            return False
        next(self._acq)
        if _lockdep:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE, True)
        return True

    def release(self) -> None:
        if _lockdep:
            owner = self._owner
            if owner and owner != threading.get_ident():
                raise LockOrderViolation(f"{self._cls.name} released by a thread that does not own it")
            self._owner = 0
            lockdep_released(self, strict=bool(owner))
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def assert_held(self) -> None:
        """lockdep_assert_held / assert_spin_locked: with lockdep on, this thread must hold the
        lock; with it off, somebody must."""
        if _lockdep:
            if self._owner != threading.get_ident():
                raise LockOrderViolation(f"{self._cls.name} is not held by this thread")
        elif not self._lock.locked():
            raise LockOrderViolation(f"{self._cls.name} is not held")

    def __enter__(self) -> "Mutex":
        if _lockdep:
            lockdep_before(self, self._cls, _WRITE)
        if not self._lock.acquire(False):
            self._acquire_slow()
        next(self._acq)
        if _lockdep:
            self._owner = threading.get_ident()
            lockdep_acquired(self, self._cls, _WRITE)
        return self

    def __exit__(self, t: object, v: object, tb: object) -> None:
        if _lockdep:
            self.release()
        else:
            self._lock.release()

    def __repr__(self) -> str:
        return f"<Mutex {self._cls.name} {'locked' if self._lock.locked() else 'unlocked'}>"


# ------------------------------------------------------------------------------------------
# RWLock
# ------------------------------------------------------------------------------------------


# The reader fast path relies on the GIL making each list operation and attribute read one
# indivisible step; a free-threaded build (sys._is_gil_enabled() False) takes the slow path:
# there ``_wbusy`` never drops to False.
_SLOW_READERS: bool = not getattr(sys, "_is_gil_enabled", lambda: True)()


class _ReadGuard:
    __slots__ = ("_l",)

    def __init__(self, lock: "RWLock") -> None:
        self._l = lock

    def __enter__(self) -> "RWLock":
        self._l.read_lock()
        return self._l

    def __exit__(self, *exc: object) -> None:
        self._l.read_unlock()


class _WriteGuard:
    __slots__ = ("_l",)

    def __init__(self, lock: "RWLock") -> None:
        self._l = lock

    def __enter__(self) -> "RWLock":
        self._l.write_lock()
        return self._l

    def __exit__(self, *exc: object) -> None:
        self._l.write_unlock()


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

    __slots__ = ("_lock", "_cls", "_readers", "_writer", "_waiters", "_wwait", "_rwait", "_rgrant",
                 "_rcond", "_wcond", "_rg", "_wg", "_fast", "_wbusy", "_racq", "__weakref__")

    def __init__(self, lock_class: LockClass | None = None) -> None:
        cls = lock_class if lock_class is not None else _site_class(True)
        cls.rw = True
        self._lock = threading.Lock()
        self._cls = cls
        self._readers = 0          # readers holding the lock (including granted, not yet awake)
        self._writer = False       # a writer holds the lock
        self._waiters = 0          # threads queued in read_lock/write_lock (is_contended)
        self._wwait = 0            # queued writers (they block new readers)
        self._rwait = 0            # queued readers
        self._rgrant = 0           # queued readers already admitted by a write_unlock hand-off
        self._fast: list[None] = []  # one token per reader that came in by the fast path
        self._wbusy = _SLOW_READERS  # a writer holds or waits: readers must take the slow path
        self._racq = cls.read._acq     # lock_stat's acquisition counter (never replaced)
        self._rcond: threading.Condition | None = None
        self._wcond: threading.Condition | None = None
        self._rg: _ReadGuard | None = None
        self._wg: _WriteGuard | None = None

    @property
    def lock_class(self) -> LockClass:
        return self._cls

    # -- read side -------------------------------------------------------------------------

    def read_lock(self) -> None:
        if _lockdep:
            lockdep_before(self, self._cls, _READ)
        if not self._wbusy:
            fast = self._fast
            fast.append(None)          # publish the reader first ...
            if not self._wbusy:        # ... then look for a writer (see the class docstring)
                next(self._racq)
                if _lockdep:
                    lockdep_acquired(self, self._cls, _READ)
                return
            self._fast_backout()
        lk = self._lock
        lk.acquire()
        if self._writer or self._wwait:
            self._read_wait()
        self._readers += 1
        lk.release()
        next(self._racq)
        if _lockdep:
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
                next(self._racq)
                if _lockdep:
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
        next(self._racq)
        if _lockdep:
            lockdep_acquired(self, self._cls, _READ, True)
        return True

    def read_unlock(self) -> None:
        fast = self._fast
        if fast:
            try:
                fast.pop()
            except IndexError:         # another thread took the last token in between
                self._read_unlock_slow()
            else:
                if self._wbusy and not fast:
                    self._fast_drained()
        else:
            self._read_unlock_slow()
        if _lockdep:
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
            self._read_unlock_slow()    # wakes a waiting writer if that was the last reader
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
        if _lockdep:
            lockdep_before(self, self._cls, _WRITE)
        lk = self._lock
        lk.acquire()
        self._wbusy = True             # before counting _fast: see the class docstring
        if self._writer or self._readers or self._fast or self._wwait:
            self._write_wait()
        self._writer = True
        lk.release()
        next(self._cls.write._acq)
        if _lockdep:
            lockdep_acquired(self, self._cls, _WRITE)

    # write_lock_nested(lock, SINGLE_DEPTH_NESTING) is only a lockdep annotation in the kernel;
    # our lockdep already allows same-class nesting.
    write_lock_nested = write_lock

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
                        cond.notify()       # pass our turn on
                else:
                    self._wbusy = _SLOW_READERS
                    if self._rwait:
                        self._wake_readers()    # readers we were holding back may go on now
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
        next(self._cls.write._acq)
        if _lockdep:
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
        if _lockdep:
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
        if _lockdep:
            for h in _held():
                if h[0] is self and (mode is None or h[2] == mode):
                    return
            raise LockOrderViolation(f"{self._cls.name} is not held by this thread")
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

    def read(self) -> _ReadGuard:
        g = self._rg
        if g is None:
            g = self._rg = _ReadGuard(self)
        return g

    def write(self) -> _WriteGuard:
        g = self._wg
        if g is None:
            g = self._wg = _WriteGuard(self)
        return g

    def __repr__(self) -> str:
        n = self.readers
        state = "W" if self._writer else f"R{n}" if n else "unlocked"
        return f"<RWLock {self._cls.name} {state} waiters={self._waiters}>"


# ------------------------------------------------------------------------------------------
# lock_stat rendering
# ------------------------------------------------------------------------------------------


def _us(ns: int) -> str:
    return f"{ns / 1000:.2f}"


def _stat_rows() -> Iterator[tuple[str, LockStat]]:
    for cls in lock_classes():
        if cls.rw:
            yield cls.name + "-W", cls.write
            yield cls.name + "-R", cls.read
        else:
            yield cls.name, cls.write


def lock_stat_text() -> str:
    """The MNT/proc/lock_stat file, laid out like the kernel's /proc/lock_stat (version 0.4):
    times in microseconds; hold times and bounce counts are not tracked and not shown. Under each
    contended class, up to four contention points (the callers that had to wait) are listed."""
    cols = ("class name", "contentions", "waittime-min", "waittime-max", "waittime-total",
            "waittime-avg", "acquisitions")
    header = f"{cols[0]:>40} " + " ".join(f"{c:>14}" for c in cols[1:])
    rule = "-" * len(header)
    out = ["lock_stat version 0.4", rule, header, rule]
    for name, st in _stat_rows():
        acq = st.acquisitions
        con = st.contentions
        if not acq and not con:
            continue
        avg = st.wait_total_ns // con if con else 0
        out.append("")
        out.append(f"{name + ':':>40} {con:>14} {_us(st.wait_min_ns):>14} {_us(st.wait_max_ns):>14} "
                   f"{_us(st.wait_total_ns):>14} {_us(avg):>14} {acq:>14}")
        if con:
            with st._lock:
                points = st.points.most_common(4)
            out.append(f"{'':>40} " + "-" * 14)
            for where, n in points:
                out.append(f"{name:>40} {n:>14}          [{where}]")
    out.append("")
    return "\n".join(out) + "\n"


def lock_stat_reset() -> None:
    """Like ``echo 0 > /proc/lock_stat``: zero every class's counters."""
    for cls in lock_classes():
        cls.reset()
