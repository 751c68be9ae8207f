"""A CHESS/loom-style systematic interleaving explorer for ``allocator/locks.py``.

**What it does.**  A *scenario* is 2-3 threads, each running a short *program* of operations on
one ``RWLock`` or ``Mutex``.  The explorer runs the scenario's threads as real threads, but only
one at a time: a thread runs until its next *preemption point* and there the scheduler decides
which thread runs next.  Preemption points are every ``line`` event in a frame of
``allocator/locks.py`` or of ``allocator/lockdep.py`` (the lock_stat bookkeeping of the slow
path; ``sys.settrace`` in each controlled thread; other code runs untraced)
and the boundaries between a program's operations.  A thread that would block (on the lock's
internal ``threading.Lock`` or in a ``Condition.wait``) yields instead and is not scheduled again
until it can go on.

**Stateless model checking by re-execution.**  A run of the scenario is fully determined by the
scheduler's choices, so an interleaving is a list of choices, and exploring means re-running
the scenario from scratch with another list:

* ``explore``: depth-first over every choice point, all interleavings with at most
  ``preemption_bound`` preemptions (CHESS: switching away from a thread that could have gone
  on is a preemption; a switch forced by a thread blocking or finishing is free, and so is the
  choice of who runs next then).  Most concurrency bugs need only one or two preemptions, and
  for a fixed bound the number of interleavings grows polynomially with the length of the
  run, not exponentially.
* ``explore_random``: a seeded random choice at every point, no bound: a large sample of the
  deeper interleavings.
* ``replay``: one run following a schedule printed by a failure.

**Checks** (any failure stops the exploration with ``InterleavingFailure``, whose message shows
the schedule step by step, thread and file:line, and the ``replay`` call that reproduces it):
mutual exclusion after every step, judged from which threads' lock operations have returned (a
lock counts as held from the return of its acquisition until its release is called, so an
overlap is real); the lock's internal counters whenever no thread is inside a lock method; a
deadlock (every unfinished thread blocked); an exception escaping a lock operation; the answers
of ``is_contended``/``locked`` against what the threads are doing; at the end, a free lock with
every counter back to zero and lock_stat agreeing with the successful acquisitions.

**How blocking is made cooperative.**  For the duration of an exploration, the ``threading``
name in ``allocator.locks`` and ``allocator.lockdep`` is replaced by ``SIM_THREADING``, whose
``Lock`` and ``Condition`` cooperate with the scheduler (everything else passes through), and
``perf_counter_ns`` by a logical clock (the step number), so that lock_stat's wait-time
bookkeeping runs the same lines on every re-execution.  Each run creates its lock class and
lock afterwards, so all their internal locks are simulated ones.  The scheduler itself
synchronises with the real ``threading`` module.

**Limits.**  The granularity is one source line: a line runs atomically.  That matches the
code it is meant for: each line of the RWLock fast path is one GIL-atomic list or attribute
operation (``fast.append(None)``, ``if not self._wbusy``, ``fast.pop()``), but a line doing two
shared accesses would hide the interleavings between them.  Not modelled: memory-model effects
beyond sequential consistency (CPython with a GIL is sequentially consistent), spurious
wake-ups and timeouts of ``Condition.wait`` (CPython has neither without a timeout; the sim
refuses timeouts), interruption of a wait by an exception (the ``except BaseException``
branches of ``_read_wait``/``_write_wait`` are not explored), lockdep (it must be off), and
C-level lock fairness (any runnable thread may be chosen; only the FIFO order of
``Condition.notify`` is kept, as CPython's).  The exploration is exhaustive only up to the bound
and for the given programs.
"""

from __future__ import annotations

import linecache
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from allocator import lockdep

from .pure_locks import PURE_LOCKS as locks  # the interpreted sources: their lines are traced
from .pure_locks import PURE_RWLOCK as rwlock

if TYPE_CHECKING:
    from _typeshed import TraceFunction

# The lock primitives and the lock_stat counters they update on the slow path.
LOCKS_FILES: tuple[str, ...] = (locks.__file__, rwlock.__file__, lockdep.__file__)

# ------------------------------------------------------------------------------------------
# Scenarios: programs of lock operations
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One lock operation: ``method`` of the lock, called without arguments."""

    method: str

    def __str__(self) -> str:
        return f"{self.method}()"


@dataclass(frozen=True)
class Try:
    """A try-lock and what depends on it: ``then`` runs if it succeeded (the thread holds the
    lock, so ``then`` ends with the unlock), ``orelse`` if it failed (nothing to unlock)."""

    method: str
    then: tuple[Op, ...] = ()
    orelse: tuple[Op, ...] = ()

    def __str__(self) -> str:
        return f"{self.method}()"


Op = Call | Try


@dataclass(frozen=True)
class Program:
    """The operations one thread performs, in order."""

    thread: str
    ops: tuple[Op, ...]


def program(thread: str, *ops: str | Op) -> Program:
    """``program("R", "read_lock", "read_unlock")``: strings are plain ``Call``s."""
    return Program(thread, tuple(Call(op) if isinstance(op, str) else op for op in ops))


Side = Literal["read", "write"]


@dataclass(frozen=True)
class Method:
    """What a lock method does to the calling thread's holdings."""

    kind: Literal["lock", "unlock", "try", "query"]
    side: Side = "write"


METHODS: dict[str, dict[str, Method]] = {
    "rwlock": {
        "read_lock": Method("lock", "read"),
        "read_unlock": Method("unlock", "read"),
        "write_lock": Method("lock"),
        "write_unlock": Method("unlock"),
        "try_read_lock": Method("try", "read"),
        "try_write_lock": Method("try"),
        "is_contended": Method("query"),
    },
    "mutex": {
        "acquire": Method("lock"),
        "release": Method("unlock"),
        "trylock": Method("try"),
        "locked": Method("query"),
    },
}


@dataclass(frozen=True)
class Scenario:
    """Threads running programs on one fresh lock of kind ``lock``.

    ``traced_files`` adds source files whose lines are preemption points too (besides
    ``LOCKS_FILES``), for a lock method replaced by a test (bug injection)."""

    name: str
    lock: Literal["rwlock", "mutex"]
    programs: tuple[Program, ...]
    traced_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [p.thread for p in self.programs]
        if len(set(names)) != len(names) or any(
            not n or "*" in n or n.split() != [n] for n in names
        ):
            raise ValueError(f"{self.name}: thread names must be unique words without '*': {names}")
        for p in self.programs:
            held = _validate(METHODS[self.lock], p.ops, {"read": 0, "write": 0}, p.thread)
            if any(held.values()):
                raise ValueError(f"{self.name}: thread {p.thread} ends holding the lock")


def _validate(
    methods: dict[str, Method], ops: tuple[Op, ...], held: dict[str, int], thread: str
) -> dict[str, int]:
    """Check a program path by path: every unlock releases something held, no blocking
    acquisition while holding the lock (writer preference makes that a deadlock by design), a
    ``Try`` exactly for try-locks and both of its branches ending with the same holdings."""
    held = dict(held)
    for op in ops:
        m = methods.get(op.method)
        if m is None:
            raise ValueError(f"{thread}: unknown operation {op.method!r}")
        if (m.kind == "try") != isinstance(op, Try):
            raise ValueError(
                f"{thread}: {op.method} must be {'a Try' if m.kind == 'try' else 'a Call'}"
            )
        if m.kind == "lock" and any(held.values()):
            raise ValueError(f"{thread}: blocking {op.method} while holding the lock")
        if m.kind == "unlock":
            if not held[m.side]:
                raise ValueError(f"{thread}: {op.method} without holding the {m.side} side")
            held[m.side] -= 1
        elif m.kind == "lock":
            held[m.side] += 1
        elif isinstance(op, Try):
            won = _validate(methods, op.then, {**held, m.side: held[m.side] + 1}, thread)
            lost = _validate(methods, op.orelse, held, thread)
            if won != lost:
                raise ValueError(
                    f"{thread}: the branches of {op.method} end holding different locks"
                )
            held = won
    return held


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------

# Where a thread resumes: (file, line, function) for a traced line; ("", 0, label) otherwise.
Where = tuple[str, int, str]


@dataclass(frozen=True)
class Step:
    """One scheduling decision: ``thread`` runs next, from ``where``."""

    thread: str
    where: Where
    how: Literal["start", "run", "preempt", "switch"]

    def __str__(self) -> str:
        return f"{self.thread:>4} {self.how:<8} {_fmt_where(self.where)}"


def _fmt_where(where: Where) -> str:
    file, line, what = where
    if not file:
        return what
    return f"{file.rsplit('/', 1)[-1]}:{line} {what}: {linecache.getline(file, line).strip()}"


class ChoicePoint(NamedTuple):
    """A decision with more than one runnable thread (what the depth-first search varies).
    A named tuple, not a dataclass: one is made at most steps, and this is cheaper."""

    options: tuple[int, ...]  # thread indices; the current thread first if it can go on
    chosen: int
    preemptions: int  # preemptions made before this point
    current_runnable: bool  # choosing another than options[0] is a preemption


class InterleavingFailure(AssertionError):
    """A check failed in some interleaving; the message shows how to get there."""

    def __init__(self, message: str, scenario: Scenario, schedule: tuple[str, ...]) -> None:
        super().__init__(message)
        self.scenario = scenario
        self.schedule = schedule


@dataclass(frozen=True)
class Explored:
    """What an exploration covered."""

    scenario: str
    executions: int  # complete runs, each a distinct interleaving
    complete: bool  # False if max_executions cut the search short
    longest: int  # most steps in one run
    most_choices: int  # most choice points in one run
    seconds: float

    def __str__(self) -> str:
        cut = "" if self.complete else " (cut short)"
        return (
            f"{self.scenario}: {self.executions} interleavings{cut}, up to {self.longest} "
            f"steps / {self.most_choices} choice points each, {self.seconds:.2f} s"
        )


# ------------------------------------------------------------------------------------------
# Cooperative stand-ins for threading.Lock and threading.Condition
# ------------------------------------------------------------------------------------------

_tls = threading.local()  # .thread: the _Thread record of a controlled thread
_OUTSIDE = object()  # owner of a SimLock taken by a thread the explorer does not run


def _controlled() -> _Thread | None:
    return getattr(_tls, "thread", None)


def _caller_where(t: _Thread, label: str) -> Where:
    """The innermost traced frame of the calling thread: where it blocks."""
    f: object = sys._getframe(2)
    while f is not None:
        code = f.f_code  # type: ignore[attr-defined]
        if code.co_filename in t.run.traced:
            return (code.co_filename, f.f_lineno, f"{code.co_name}, {label}")  # type: ignore[attr-defined]
        f = f.f_back  # type: ignore[attr-defined]
    return ("", 0, label)


class _Aborted(BaseException):
    """Unwinds a controlled thread once its run has failed (not an Exception: lock code that
    catches exceptions must not swallow it)."""


class SimLock:
    """``threading.Lock`` for explored code: a blocking acquire of a held lock yields to the
    scheduler, which resumes the thread once the lock is free.  Outside a controlled thread (a
    lock_stat reader after the run) it is a plain non-blocking lock."""

    __slots__ = ("_owner",)

    def __init__(self) -> None:
        self._owner: object = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._owner is None:
            self._owner = _controlled() or _OUTSIDE
            return True
        if not blocking:
            return False
        if timeout != -1:
            raise NotImplementedError("timeouts are not modelled")
        t = _controlled()
        if t is None:
            raise RuntimeError("an outside thread would block on a lock of an explored thread")
        if not t.run.failed:  # while unwinding a failed run nothing blocks
            t.run.block(t, lambda: self._owner is None, _caller_where(t, "blocked on a lock"))
        self._owner = t
        return True

    def release(self) -> None:
        if self._owner is None:
            raise RuntimeError("release unlocked lock")
        self._owner = None

    def locked(self) -> bool:
        return self._owner is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Waiter:
    __slots__ = ("notified",)

    def __init__(self) -> None:
        self.notified = False


class SimCondition:
    """``threading.Condition`` over a ``SimLock``: ``wait`` releases the lock and makes the
    thread unschedulable until it is notified and the lock is free again, then retakes the
    lock; ``notify`` wakes waiters in FIFO order, as CPython's does."""

    def __init__(self, lock: SimLock | None = None) -> None:
        self._lock = lock if lock is not None else SimLock()
        self._waiters: deque[_Waiter] = deque()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            raise NotImplementedError("timeouts are not modelled")
        t = _controlled()
        if t is None:
            raise RuntimeError("Condition.wait outside an explored thread")
        if self._lock._owner is not t:
            raise RuntimeError("cannot wait on un-acquired lock")
        if t.run.failed:
            raise _Aborted
        w = _Waiter()
        self._waiters.append(w)
        self._lock._owner = None
        t.in_wait = True
        try:
            t.run.block(
                t,
                lambda: w.notified and self._lock._owner is None,
                _caller_where(t, "blocked in Condition.wait"),
            )
        finally:
            t.in_wait = False
            self._lock._owner = t  # retaken, also when unwinding (as CPython's wait does)
        return True

    def notify(self, n: int = 1) -> None:
        if self._lock._owner is not (_controlled() or _OUTSIDE):
            raise RuntimeError("cannot notify on un-acquired lock")
        for _ in range(min(n, len(self._waiters))):
            self._waiters.popleft().notified = True

    def notify_all(self) -> None:
        self.notify(len(self._waiters))


class _SimThreading:
    """What ``allocator.locks`` and ``allocator.lockdep`` see as ``threading`` during an
    exploration."""

    Lock = SimLock
    Condition = SimCondition

    def __getattr__(self, name: str) -> object:
        return getattr(threading, name)  # get_ident, local, ...: the real ones


SIM_THREADING = _SimThreading()


def _logical_clock() -> int:
    """perf_counter_ns for explored code: the step number (in "ns"), the same on every
    re-execution of a schedule, unlike real time (lock_stat runs different lines for a new
    minimum or maximum wait)."""
    t = _controlled()
    return len(t.run.trace) * 1000 if t is not None else time.perf_counter_ns()


@contextmanager
def simulated() -> Iterator[None]:
    """Make ``allocator.locks`` and ``allocator.rwlock`` (and the lock_stat counters of
    ``allocator.lockdep``) use the cooperative primitives and the logical clock."""
    if locks.lockdep_enabled():
        raise RuntimeError("the explorer does not model lockdep: switch it off")
    saved = (locks.threading, rwlock.threading, lockdep.threading)
    saved_clocks = (locks.perf_counter_ns, rwlock.perf_counter_ns)
    locks.threading = rwlock.threading = lockdep.threading = SIM_THREADING  # type: ignore[assignment]
    locks.perf_counter_ns = rwlock.perf_counter_ns = _logical_clock
    try:
        yield
    finally:
        locks.threading, rwlock.threading, lockdep.threading = saved
        locks.perf_counter_ns, rwlock.perf_counter_ns = saved_clocks


# ------------------------------------------------------------------------------------------
# One run of a scenario
# ------------------------------------------------------------------------------------------

Chooser = Callable[[tuple[int, ...], int], int]  # (options, choice point number) -> thread


def _parked() -> threading.Lock:
    lk = threading.Lock()
    lk.acquire()
    return lk


@dataclass(eq=False)
class _Thread:
    """A controlled thread of one run."""

    index: int
    program: Program
    run: _Run
    go: threading.Lock  # its worker's baton: locked while it must not run
    where: Where = ("", 0, "start")
    blocked: Callable[[], bool] | None = None  # set while blocked: runnable once it is true
    in_wait: bool = False  # inside Condition.wait (counted in the lock's _waiters)
    inside: str | None = None  # the lock method it is executing
    ops_started: int = 0
    held: dict[str, int] = field(default_factory=lambda: {"read": 0, "write": 0})
    finished: bool = False

    @property
    def name(self) -> str:
        return self.program.thread


class _Worker:
    """A real thread that plays one controlled thread in each run, run after run (starting
    three threads costs more than a whole run of a small scenario).  It sleeps on ``go``
    between runs too: the first baton of a run starts its ``job``."""

    def __init__(self, i: int) -> None:
        self.go = _parked()
        self.job: _Thread | None = None
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"explorer-{i}")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            self.go.acquire()
            if self.closing:
                return
            t, self.job = self.job, None
            if t is not None:
                t.run._body(t)


@contextmanager
def _session(scenario: Scenario) -> Iterator[list[_Worker]]:
    """The simulated threading module and the worker threads for runs of ``scenario``."""
    with simulated():
        workers = [_Worker(i) for i in range(len(scenario.programs))]
        try:
            yield workers
        finally:
            for w in workers:
                w.closing = True
                w.go.release()
                w.thread.join(5)


_run_ids = count()
_STEP_LIMIT = 20_000


class _Run:
    """One execution of a scenario under one scheduler (``choose``).

    Exactly one thread runs at a time: the one holding the baton.  At a preemption point, a
    block or its end, that thread itself picks the next one (``_next``) and passes the baton
    (releases the other's ``go``, then waits on its own), so the scheduler state is only ever
    touched by one thread."""

    def __init__(
        self,
        scenario: Scenario,
        choose: Chooser,
        workers: list[_Worker],
        max_steps: int = _STEP_LIMIT,
    ) -> None:
        self.scenario = scenario
        self.choose = choose
        self.max_steps = max_steps
        self.methods = METHODS[scenario.lock]
        self.traced = frozenset((*LOCKS_FILES, *scenario.traced_files))
        rw = scenario.lock == "rwlock"
        self.lock_class = locks.LockClass(f"interleave.{scenario.name}.{next(_run_ids)}", rw=rw)
        self.lock: locks.RWLock | locks.Mutex = (locks.RWLock if rw else locks.Mutex)(
            self.lock_class
        )
        self.workers = workers
        self.threads = [
            _Thread(i, p, self, w.go)
            for i, (p, w) in enumerate(zip(scenario.programs, workers, strict=True))
        ]
        self.trace: list[tuple[int, Where, str]] = []  # (thread, where, how) per step
        self.points: list[ChoicePoint] = []
        self.preemptions = 0
        self.holding = {"read": 0, "write": 0}  # returned acquisitions not yet released
        self.inside = 0  # threads inside a lock method
        self.acquired = {"read": 0, "write": 0}  # successful acquisitions (lock_stat's count)
        self.failure: str | None = None
        self._ended = 0
        self._end_lock = threading.Lock()
        self._all_ended = _parked()

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def schedule(self) -> tuple[str, ...]:
        return tuple(self.threads[p.chosen].name for p in self.points)

    @property
    def steps(self) -> list[Step]:
        return [Step(self.threads[i].name, where, how) for i, where, how in self.trace]  # type: ignore[arg-type]

    def execute(self, timeout: float = 60.0) -> _Run:
        if not all(w.go.locked() and w.job is None for w in self.workers):
            raise RuntimeError("explorer workers out of step with the runs")
        try:
            for w, t in zip(self.workers, self.threads):
                w.job = t
            first = self._next(None)
            assert first is not None
            first.go.release()
            if not self._all_ended.acquire(timeout=timeout):
                self._fail(f"no progress within {timeout} s (a scheduler bug?)")
                if not self._all_ended.acquire(timeout=timeout):
                    raise RuntimeError(f"explored threads do not end: {self.failure}")
            if not self.failed:
                self._final_checks()
        finally:
            with locks.LockClass._registry_lock:  # one class per run: do not pile them up
                locks.LockClass._registry.pop(self.lock_class.name, None)
        return self

    # -- inside the controlled threads ---------------------------------------------------------

    def _body(self, t: _Thread) -> None:
        """What a worker runs for ``t``, from its first baton on."""
        _tls.thread = t
        try:
            if not self.failed:
                sys.settrace(self._tracer(t))
                try:
                    self._run_ops(t, t.program.ops)
                finally:
                    sys.settrace(None)
                self._finish(t)
        except _Aborted:
            pass
        except BaseException:  # noqa: BLE001 - a bug of the explorer itself: report it
            self._fail(f"explorer error in {t.name}:\n{traceback.format_exc()}")
        finally:
            _tls.thread = None
            with self._end_lock:  # threads unwinding a failed run end concurrently
                self._ended += 1
                last = self._ended == len(self.threads)
            if last:
                self._all_ended.release()

    def _tracer(self, t: _Thread) -> TraceFunction:
        traced = self.traced

        def local(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
            if event == "line":
                code = frame.f_code
                self.yield_point(t, (code.co_filename, frame.f_lineno, code.co_name))
            return local

        def global_(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
            return local if frame.f_code.co_filename in traced else None

        return global_

    def _run_ops(self, t: _Thread, ops: tuple[Op, ...]) -> None:
        for op in ops:
            if t.ops_started:  # a boundary between two operations
                self.yield_point(t, ("", 0, f"before {op}"))
            t.ops_started += 1
            m = self.methods[op.method]
            if m.kind == "unlock":  # no longer counted as held once the release starts
                t.held[m.side] -= 1
                self.holding[m.side] -= 1
            t.inside = op.method
            self.inside += 1
            try:
                result = getattr(self.lock, op.method)()
            except _Aborted:
                raise
            except BaseException as e:  # noqa: BLE001 - that is the finding
                tb = "".join(traceback.format_exception(e)[-4:])
                self._fail(f"{type(e).__name__} escaped {t.name}'s {op}: {e}\n{tb}")
                raise _Aborted from None
            t.inside = None
            self.inside -= 1
            if m.kind == "lock" or (m.kind == "try" and result):
                t.held[m.side] += 1  # held from the moment the acquisition returned
                self.holding[m.side] += 1
                self.acquired[m.side] += 1
            if isinstance(op, Try):
                self._run_ops(t, op.then if result else op.orelse)
            elif m.kind == "query":
                self._check_query(t, op.method, result)

    def yield_point(self, t: _Thread, where: Where) -> None:
        if self.failed:
            raise _Aborted
        t.where = where
        nxt = self._next(t)
        if nxt is None:
            raise _Aborted
        self._pass(t, nxt)

    def block(self, t: _Thread, until: Callable[[], bool], where: Where) -> None:
        """Called by a sim primitive: ``t`` cannot go on until ``until()``."""
        if self.failed:
            raise _Aborted
        t.blocked, t.where = until, where
        try:
            nxt = self._next(t)
            if nxt is None:
                raise _Aborted
            self._pass(t, nxt)
        finally:
            t.blocked = None

    def _pass(self, t: _Thread, nxt: _Thread) -> None:
        if nxt is not t:
            nxt.go.release()
            t.go.acquire()
            if self.failed:
                raise _Aborted

    def _finish(self, t: _Thread) -> None:
        t.finished = True
        nxt = self._next(t)
        if nxt is not None:
            nxt.go.release()

    # -- scheduling --------------------------------------------------------------------------------

    def _next(self, cur: _Thread | None) -> _Thread | None:
        """Check the state, then pick the thread to run next (None: the run is over)."""
        self._check_step()
        if self.failed:
            return None
        runnable = [
            t for t in self.threads if not t.finished and (t.blocked is None or t.blocked())
        ]
        if not runnable:
            if not all(t.finished for t in self.threads):
                self._fail(
                    "deadlock: every unfinished thread is blocked\n" + self._blocked_report()
                )
            return None
        cur_runnable = cur is not None and cur in runnable
        if len(runnable) == 1:
            nxt = runnable[0]
        else:
            if cur_runnable:
                runnable.remove(cur)  # type: ignore[arg-type]
                runnable.insert(0, cur)  # type: ignore[arg-type]
            options = tuple(o.index for o in runnable)
            nxt = self.threads[self.choose(options, len(self.points))]
            self.points.append(ChoicePoint(options, nxt.index, self.preemptions, cur_runnable))
        if nxt is cur:
            how = "run"
        elif cur_runnable:
            how = "preempt"
            self.preemptions += 1
        else:
            how = "start" if nxt.where == ("", 0, "start") else "switch"
        self.trace.append((nxt.index, nxt.where, how))
        if len(self.trace) > self.max_steps:
            self._fail(f"no end after {self.max_steps} steps (livelock?)")
            return None
        return nxt

    def _fail(self, reason: str) -> None:
        if self.failed:
            return
        self.failure = self._report(reason)
        for t in self.threads:  # unwind every other thread (sim locks stop blocking)
            if t is not _controlled() and not t.finished:
                try:
                    t.go.release()
                except RuntimeError:  # its baton was passed already
                    pass

    # -- checks -------------------------------------------------------------------------------------

    def _check_step(self) -> None:
        readers, writers = self.holding["read"], self.holding["write"]
        if writers > 1 or (writers and readers):
            holders = {t.name: dict(t.held) for t in self.threads if any(t.held.values())}
            self._fail(f"mutual exclusion violated: {holders}")
        elif not self.inside:
            errors = _state_errors(self.lock, readers, writers)
            if errors:
                self._fail(
                    "inconsistent lock state with no thread inside the lock: " + "; ".join(errors)
                )

    def _check_query(self, t: _Thread, method: str, result: object) -> None:
        others = [o for o in self.threads if o is not t]
        if method == "is_contended":
            # _waiters counts the threads between entering the wait and leaving it.
            if result and not any(o.inside in ("read_lock", "write_lock") for o in others):
                self._fail("is_contended() is true with no thread in read_lock/write_lock")
            elif not result and any(o.in_wait for o in others):
                self._fail("is_contended() is false while a thread waits on the lock")
        elif method == "locked":
            if not result and any(o.held["write"] for o in self.threads):
                self._fail("locked() is false while a thread holds the mutex")
            elif result and not (
                any(o.held["write"] for o in self.threads) or any(o.inside for o in others)
            ):
                self._fail("locked() is true with nobody holding or taking the mutex")
        if self.failed:
            raise _Aborted

    def _final_checks(self) -> None:
        readers, writers = self.holding["read"], self.holding["write"]
        errors = _state_errors(self.lock, readers, writers)
        held = self.lock.locked() if isinstance(self.lock, locks.Mutex) else self.lock.is_locked()
        if readers or writers or held:
            errors.append("the lock is not free at the end")
        sides: tuple[Side, ...] = (
            ("read", "write") if self.scenario.lock == "rwlock" else ("write",)
        )
        for side in ("read", "write"):
            stat = self.lock_class.stat(
                locks.LockMode.READ if side == "read" else locks.LockMode.WRITE
            )
            want = self.acquired[side] if side in sides else 0
            if stat.acquisitions != want:
                errors.append(
                    f"lock_stat {side} acquisitions {stat.acquisitions}, the programs made {want}"
                )
            if stat.contentions > stat.acquisitions:
                errors.append(
                    f"lock_stat {side}: {stat.contentions} contentions > "
                    f"{stat.acquisitions} acquisitions"
                )
            if not stat.wait_min_ns <= stat.wait_max_ns <= stat.wait_total_ns:
                errors.append(
                    f"lock_stat {side} wait times min {stat.wait_min_ns} max "
                    f"{stat.wait_max_ns} total {stat.wait_total_ns}"
                )
            if not stat.contentions and stat.wait_total_ns:
                errors.append(f"lock_stat {side}: wait time without contentions")
        if errors:
            self._fail("at the end: " + "; ".join(errors))

    # -- reporting -----------------------------------------------------------------------------------

    def _blocked_report(self) -> str:
        return "\n".join(
            f"  {t.name}: {_fmt_where(t.where)}" for t in self.threads if not t.finished
        )

    def _report(self, reason: str) -> str:
        names = tuple(t.name for t in self.threads)
        lines = [
            f"scenario {self.scenario.name!r}: {reason.rstrip()}",
            f"lock state: {_describe(self.lock)}",
            "threads: "
            + "; ".join(f"{p.thread}: {_fmt_ops(p.ops)}" for p in self.scenario.programs),
            f"preemptions: {self.preemptions}; replay with",
            f"  replay(scenario, {compress(self.schedule)!r})",
            "schedule (per step: the thread that runs next and the line it runs next, or where "
            "it was blocked; "
            f"threads {', '.join(names)}):",
        ]
        lines += [f"  {i:4} {s}" for i, s in enumerate(self.steps)]
        return "\n".join(lines)


def _fmt_ops(ops: tuple[Op, ...]) -> str:
    out = []
    for op in ops:
        if isinstance(op, Try):
            out.append(f"{op.method}? [{_fmt_ops(op.then)}] else [{_fmt_ops(op.orelse)}]")
        else:
            out.append(op.method)
    return ", ".join(out)


def _describe(lock: locks.RWLock | locks.Mutex) -> str:
    if isinstance(lock, locks.Mutex):
        return f"Mutex tokens={len(lock._tok)} _waiters={lock._waiters}"
    return (
        f"RWLock _readers={lock._readers} _fast={len(lock._fast)} _writer={lock._writer} "
        f"_wbusy={lock._wbusy} _waiters={lock._waiters} _wwait={lock._wwait} "
        f"_rwait={lock._rwait} _rgrant={lock._rgrant}"
    )


def _state_errors(lock: locks.RWLock | locks.Mutex, readers: int, writers: int) -> list[str]:
    """How the lock's internals disagree with ``readers``/``writers`` holding it (to be called
    when no thread is inside a lock method)."""
    errors: list[str] = []
    if isinstance(lock, locks.Mutex):
        tokens = len(lock._tok)
        if tokens != (0 if writers else 1) or writers > 1:
            errors.append(f"mutex tokens={tokens} with {writers} holder(s)")
        if lock._waiters != 0:
            errors.append(f"mutex _waiters={lock._waiters} with no thread inside the lock")
        return errors
    if lock._readers + len(lock._fast) != readers or lock._readers < 0:
        errors.append(
            f"_readers {lock._readers} + {len(lock._fast)} fast tokens for "
            f"{readers} reader(s) holding"
        )
    if lock._writer != bool(writers):
        errors.append(f"_writer={lock._writer} with {writers} writer(s) holding")
    for name in ("_waiters", "_wwait", "_rwait", "_rgrant"):
        if getattr(lock, name):
            errors.append(f"{name}={getattr(lock, name)} with nobody waiting")
    if lock._wbusy != (lock._writer or rwlock._SLOW_READERS):
        errors.append(
            f"_wbusy={lock._wbusy} with _writer={lock._writer}: the reader fast path "
            "is shut (or open) for nothing"
        )
    for cond in (lock._rcond, lock._wcond):
        if cond is not None and cond._waiters:  # type: ignore[attr-defined]
            errors.append("a condition still has waiters")
    return errors


# ------------------------------------------------------------------------------------------
# Exploration
# ------------------------------------------------------------------------------------------


class Nondeterminism(AssertionError):
    """A re-execution did not offer the choices the same prefix offered before."""


class _Replay:
    """Chooser that follows ``prefix`` (thread indices, with the options seen when it was
    recorded, if known), then lets the current thread go on (no preemption)."""

    def __init__(self, prefix: Sequence[tuple[int, tuple[int, ...] | None]]) -> None:
        self.prefix = prefix

    def __call__(self, options: tuple[int, ...], i: int) -> int:
        if i >= len(self.prefix):
            return options[0]
        chosen, seen = self.prefix[i]
        if (seen is not None and seen != options) or chosen not in options:
            raise Nondeterminism(
                f"choice point {i}: options {options}, expected {seen} (choosing {chosen})"
            )
        return chosen


def _next_prefix(
    points: list[ChoicePoint], bound: int
) -> list[tuple[int, tuple[int, ...] | None]] | None:
    """The depth-first successor of the run that made ``points``: vary the deepest choice point
    that has an untried option within the preemption bound (options are tried in order, the
    non-preempting one first)."""
    for i in range(len(points) - 1, -1, -1):
        p = points[i]
        for alt in p.options[p.options.index(p.chosen) + 1 :]:
            cost = p.preemptions + (p.current_runnable and alt != p.options[0])
            if cost <= bound:
                prefix: list[tuple[int, tuple[int, ...] | None]] = [
                    (q.chosen, q.options) for q in points[:i]
                ]
                return prefix + [(alt, p.options)]
    return None


def _run_once(scenario: Scenario, choose: Chooser, workers: list[_Worker]) -> _Run:
    run = _Run(scenario, choose, workers).execute()
    if run.failure is not None:
        raise InterleavingFailure(run.failure, scenario, run.schedule)
    return run


def explore(
    scenario: Scenario, *, preemption_bound: int = 2, max_executions: int | None = None
) -> Explored:
    """Run ``scenario`` in every interleaving with at most ``preemption_bound`` preemptions
    (depth first); raise ``InterleavingFailure`` at the first failing one."""
    t0 = time.perf_counter()
    n = longest = most = 0
    prefix: list[tuple[int, tuple[int, ...] | None]] | None = []
    with _session(scenario) as workers:
        while prefix is not None and (max_executions is None or n < max_executions):
            run = _run_once(scenario, _Replay(prefix), workers)
            n += 1
            longest, most = max(longest, len(run.trace)), max(most, len(run.points))
            prefix = _next_prefix(run.points, preemption_bound)
    return Explored(scenario.name, n, prefix is None, longest, most, time.perf_counter() - t0)


def explore_random(scenario: Scenario, *, executions: int, seed: int = 0) -> Explored:
    """Run ``scenario`` ``executions`` times, choosing uniformly among the runnable threads at
    every point (seeded: the same seed explores the same interleavings)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    longest = most = 0
    with _session(scenario) as workers:
        for _ in range(executions):
            run = _run_once(scenario, lambda options, i: rng.choice(options), workers)
            longest, most = max(longest, len(run.trace)), max(most, len(run.points))
    return Explored(scenario.name, executions, True, longest, most, time.perf_counter() - t0)


def compress(schedule: Sequence[str]) -> str:
    """``("B", "B", "S")`` -> ``"B*2 S"``: a schedule as a failure message prints it."""
    runs: list[list[Any]] = []  # [name, count]
    for name in schedule:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return " ".join(f"{name}*{n}" if n > 1 else str(name) for name, n in runs)


def expand(schedule: str) -> list[str]:
    """The inverse of ``compress``."""
    out: list[str] = []
    for word in schedule.split():
        name, _, n = word.partition("*")
        out += [name] * int(n or 1)
    return out


def replay(scenario: Scenario, schedule: str | Sequence[str]) -> list[Step]:
    """Run ``scenario`` once, following ``schedule`` (the thread chosen at each choice point,
    as a failure prints it: ``"B*16 S*5 ..."`` or a sequence of names; after it, no more
    preemptions); return the steps taken or raise ``InterleavingFailure``."""
    names = expand(schedule) if isinstance(schedule, str) else list(schedule)
    index = {p.thread: i for i, p in enumerate(scenario.programs)}
    with _session(scenario) as workers:
        return _run_once(scenario, _Replay([(index[name], None) for name in names]), workers).steps
