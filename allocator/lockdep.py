"""Lock classes, lockdep and lock_stat: the kernel's lock debugging, for allocator.locks.

The lock primitives (``Mutex``, ``RWLock``, page locks) live in ``allocator.locks`` and
``allocator.memory``; this module owns what they report to:

* **Lock classes** (``LockClass``): like lockdep's ``struct lock_class_key``, every lock belongs
  to a class, and a class has a *rank*, its position in the lock order.  The ranks of
  zsmalloc's locks and the leaf locks are defined here (``PAGE_LOCK`` ... ``LEAF_RANK``); the
  order they encode, for the whole stack and with the reason for each row, is the table at the
  top of ``allocator/locks.py`` ("The lock order of the whole stack"), written there only.

* **lockdep** (switched by ``allocator.locks.set_lockdep``, off by default: the primitives read
  the switch as a global of their own module on every acquisition): a per-thread stack of held
  locks. A blocking acquisition of a lock whose class ranks *lower* than a held lock's class
  raises ``LockOrderViolation`` before blocking. Same-class nesting is allowed (several page
  locks of one zspage, ``write_lock_nested`` of src+dst zspages), trylocks are never checked
  (the kernel allows trylock inversions: free_zspage trylocks pages under class->lock).
  Unranked classes are checked the way real lockdep does it: every blocking acquisition
  records the dependency ``held class -> new class`` and a cycle in that graph is an
  inversion. Re-acquiring a lock instance the thread already holds (including a recursive read
  of a writer-preferring rwlock, which deadlocks as soon as a writer queues) is reported too.

* **lock_stat** (``lock_stat_text()``/``lock_stat_reset()``): per class, and for rw classes
  separately per read/write side (``&pool->migrate_lock-R`` / ``-W`` as in
  /proc/lock_stat): acquisitions (always counted, with an atomic C counter), contentions and
  wait times (counted only when a thread actually waited) and the call sites that contended.
  Hold times are not measured (that would put clock reads on the fast path).

The primitives call the hooks ``lockdep_before/lockdep_acquired/lockdep_released`` (lockdep on
only) and count into ``LockClass.stat``.  Two of the shortcuts that rely on the GIL are taken
here: the lock_stat acquisition counter and lockdep's unlocked known-edge check (items 2 and 3
of the numbered list "Shortcuts that rely on the GIL" at the top of ``allocator/locks.py``).
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from enum import IntEnum
from types import FrameType
from typing import Any

__all__ = [
    "LockClass",
    "LockMode",
    "LockStat",
    "LockOrderViolation",
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
    "lock_classes",
    "held_locks",
    "lockdep_before",
    "lockdep_acquired",
    "lockdep_released",
    "lockdep_holds",
    "contention_point",
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


def violation_stats() -> dict[str, int | str]:
    """How many violations lockdep reported since it was last switched, and the first of them
    (``debug_locks`` is 0 once one was reported, as in the kernel); ``lockdep_stats()`` in
    allocator.locks adds whether it is on."""
    return {
        "violations": _violations,
        "debug_locks": int(_violations == 0),
        "first_violation": _first_violation,
    }


class LockMode(IntEnum):
    """Which side of a lock an acquisition took (a Mutex or page lock is always WRITE)."""

    READ = 0
    WRITE = 1


_READ = LockMode.READ
_WRITE = LockMode.WRITE


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count has no public getter; its repr is "count(N)" where N is the next value.
    return int(repr(counter)[6:-1])


class LockStat:
    """lock_stat counters of one side (read or write) of one lock class.

    ``acquisitions`` is an ``itertools.count`` that the locks bump through ``count``, its bound
    ``__next__``: a single C call, so it is atomic under the GIL, and from compiled code it
    costs ~22 ns where ``next(counter)`` costs ~38 (mypyc looks ``next`` up in builtins on every
    call).  Everything else is updated only on the slow path, under a private leaf lock.
    """

    __slots__ = (
        "_acq",
        "count",
        "_acq_base",
        "contentions",
        "wait_total_ns",
        "wait_min_ns",
        "wait_max_ns",
        "points",
        "_lock",
    )

    def __init__(self) -> None:
        self._acq = itertools.count()
        #: count one acquisition (never replaced: the locks hold it)
        self.count: Callable[[], int] = self._acq.__next__
        self._acq_base = 0
        self.contentions = 0
        self.wait_total_ns = 0
        self.wait_min_ns = 0
        self.wait_max_ns = 0
        self.points: Counter[str] = Counter()  # contending call sites (kernel: "contention points")
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

    _registry: dict[str, LockClass] = {}
    _registry_lock = threading.Lock()

    name: str
    rank: int | None
    rw: bool
    read: LockStat
    write: LockStat

    def __new__(cls, name: str, rank: int | None = None, *, rw: bool = False) -> LockClass:
        with cls._registry_lock:
            existing = cls._registry.get(name)
            if existing is not None:
                if existing.rank != rank:
                    raise ValueError(
                        f"lock class {name!r} already registered with rank {existing.rank}"
                    )
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

    # Totals over both sides: the attribute names of docs/INTERFACES.md ("allocator.locks").
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
LOCK_ORDER: tuple[LockClass, ...] = (
    PAGE_LOCK,
    MIGRATE_LOCK,
    CLASS_LOCK,
    ZSPAGE_LOCK,
    MAP_AREA_LOCK,
)
# The page allocator's lock (allocator.memory's free-frame lists): a leaf under every zsmalloc
# lock, as the buddy allocator's zone->lock is. Not part of zsmalloc's documented order.
ZONE_LOCK = LockClass("&zone->lock", 60)
# Locks that guard a counter or a list for a few statements and are never held while another
# lock is taken (rank 70 in the table of allocator/locks.py).  Each has its own class, so
# lock_stat tells them apart and the dependency graph still sees an inversion between two of them.
LEAF_RANK = 70
PAGES_ALLOCATED_LOCK = LockClass("&pool->pages_allocated", LEAF_RANK)
HANDLE_CACHE_LOCK = LockClass("&pool->handle_cache", LEAF_RANK)
ZSPAGE_SET_LOCK = LockClass("&pool->zspages", LEAF_RANK)
FREE_WORK_LOCK = LockClass("&pool->free_work", LEAF_RANK)
PAGE_FLAGS_LOCK = LockClass("page->flags", LEAF_RANK)


def lock_classes() -> list[LockClass]:
    """All registered lock classes, ranked ones in order first, then by name."""
    with LockClass._registry_lock:
        classes = list(LockClass._registry.values())
    return sorted(classes, key=lambda c: (c.rank is None, c.rank or 0, c.name))


# ------------------------------------------------------------------------------------------
# lockdep
# ------------------------------------------------------------------------------------------

# Whether lockdep_acquired records the acquisition site (``set_lockdep(record_sites=...)``).
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


# Frames in these files are lock machinery, not acquisition sites (locks.py: Mutex and RWLock,
# memory.py: page locks).
_HERE = __file__.rsplit("/", 1)[0]
_LOCK_FILES = frozenset({__file__, _HERE + "/locks.py", _HERE + "/memory.py"})


def _caller_outside_locks() -> FrameType | None:
    """The innermost frame outside the lock machinery: the code a lock operation is for.

    The walk starts at this frame rather than a fixed depth: compiled modules (locks, memory:
    setup.py) have no frames of their own, so the depth of the caller depends on the build."""
    f: FrameType | None = sys._getframe(0)
    while f is not None and f.f_code.co_filename in _LOCK_FILES:
        f = f.f_back
    return f


def site_class(rw: bool) -> LockClass:
    """Default class of a lock created without one: one class per creation site, as lockdep keys
    a lock by the static key of its init call site (so unrelated locks never share a class)."""
    f = _caller_outside_locks()
    where = "?"
    if f is not None:
        where = "%s:%d" % ("/".join(f.f_code.co_filename.rsplit("/", 2)[-2:]), f.f_lineno)
    return LockClass(("rwlock@" if rw else "mutex@") + where, rw=rw)


_tls = threading.local()
_all_held: dict[int, list[_Held]] = {}  # thread ident -> its held stack (lockdep on)
_graph: dict[LockClass, set[LockClass]] = {}  # class dependency edges (held -> acquired)
_graph_lock = threading.Lock()


def _held() -> list[_Held]:
    try:
        return _tls.held
    except AttributeError:
        held: list[_Held] = []
        _tls.held = held
        _all_held[threading.get_ident()] = held
        return held


def reset(*, record_sites: bool = True) -> None:
    """Forget every held-lock stack, the dependency graph (locks taken while lockdep was off
    are unknown to it) and the violation count: ``set_lockdep`` calls it on every switch.
    ``record_sites`` remembers where each held lock was taken, for the violation reports
    (about half of lockdep's cost per acquisition)."""
    global _lockdep_sites, _violations, _first_violation
    _lockdep_sites = bool(record_sites)
    with _violations_lock:
        _violations = 0
        _first_violation = ""
    with _graph_lock:
        _graph.clear()
    for held in list(_all_held.values()):
        held.clear()


def held_locks() -> list[str]:
    """The current thread's held locks, outermost first (lockdep on; empty otherwise)."""
    return [_fmt_entry(h) for h in _held()]


def lockdep_holds(key: object, mode: LockMode | None = None) -> bool:
    """Whether the current thread holds ``key`` (on side ``mode``; either side if None), by its
    held-lock stack: ``lockdep_assert_held``'s question, lockdep on only."""
    return any(h[0] is key and (mode is None or h[2] == mode) for h in _held())


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
                f" (would deadlock); held: {_fmt_held(held)}"
            )
    if trylock:
        return
    rank = cls.rank
    if rank is not None:
        for h in held:
            r = h[1].rank
            if r is not None and r > rank:
                raise LockOrderViolation(
                    f"lock order inversion: acquiring {cls.name} (rank {rank}) while holding "
                    f"{h[1].name} (rank {r}); held: {_fmt_held(held)}"
                )
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
                    f"now after it; held: {_fmt_held(held)}"
                )
            _graph.setdefault(hc, set()).add(cls)


def lockdep_acquired(key: object, cls: LockClass, mode: LockMode, trylock: bool = False) -> None:
    site: tuple[Any, int] = (None, 0)
    if _lockdep_sites:
        f = _caller_outside_locks()  # the acquisition site
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
    f = _caller_outside_locks()
    if f is None:
        return "?"
    return "%s %s:%d" % (f.f_code.co_name, f.f_code.co_filename.rsplit("/", 1)[-1], f.f_lineno)


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
    cols = (
        "class name",
        "contentions",
        "waittime-min",
        "waittime-max",
        "waittime-total",
        "waittime-avg",
        "acquisitions",
    )
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
        out.append(
            f"{name + ':':>40} {con:>14} {_us(st.wait_min_ns):>14} {_us(st.wait_max_ns):>14} "
            f"{_us(st.wait_total_ns):>14} {_us(avg):>14} {acq:>14}"
        )
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
