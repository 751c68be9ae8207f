"""``zramfs replay TRACE``: one trace replayed under every configuration of a sweep.

Owns the sweep around the replay engine (`zramfs.replay.replay_trace`, which replays one
trace under one configuration in process, without FUSE):
- the configurations: the cross product of the ``--set NAME=V1,V2,...`` values, in the order
  the options were given (the first ``--set`` varies slowest, as nested loops would), every
  NAME and VALUE validated up front by the engine's settings validation, so a typo costs one
  line on stderr and exit code 2 before anything runs;
- the executors (`InProcess`, `LocalProcesses` for ``--jobs N``, `DaskCluster` for
  ``--scheduler tcp://HOST:PORT``), which all run the same task (`replay_one`) and return
  the outcomes in cross-product order whatever order they complete in, so the results are
  the same whichever executor ran them (only the wall time, ``seconds``, differs);
- the ``zramfs replay`` subcommand (`add_parser`, `run`); the table, the JSON and the
  ``--record`` file are written by `zramfs.sweep_output`.

Why processes and not threads for ``--jobs``: a replay is pure Python, CPU bound, so threads
would share one GIL.  The pool starts its processes with ``forkserver`` (or ``spawn``),
never ``fork``: a device starts threads, and a forked child of a threaded parent can inherit
a lock some other thread held.  See docs/replay.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import itertools
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zramfs.cmdline import one_line_errors

if TYPE_CHECKING:
    from zramfs.device import ZramDevice
    from zramfs.replay import ReplayResult

# How long --scheduler waits for the scheduler to answer and for a worker to be there.
CONNECT_TIMEOUT_S = 10.0
# Trace seconds between two samples of --record (as `zramfs record --interval`).
DEFAULT_SAMPLE_INTERVAL = 0.5
SCHEDULER_RE = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class SweepInputError(Exception):
    """bad input to zramfs replay"""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


Config = dict[str, str]
Sample = tuple[float, dict[str, dict[str, Any]]]


@dataclass
class Outcome:
    """What one replay hands back to the sweep: the engine's result and, with ``--record``,
    the samples taken every sample interval of trace time: (trace seconds, {device name:
    `zramfs.record.device_sample`})."""

    result: ReplayResult
    samples: list[Sample] = field(default_factory=list)


# ---- configurations -----------------------------------------------------------------------
def parse_sets(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["algorithm=lz4,zstd", "chain_size=4,8"]`` -> ``[("algorithm", ["lz4", "zstd"]),
    ("chain_size", ["4", "8"])]``, each name and value validated by the replay engine.
    Raises `SweepInputError` (one line) on a malformed item, an empty or repeated value, a
    repeated NAME, or a name or value the engine refuses."""
    from zramfs.replay_settings import validate_setting

    sets: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SweepInputError(f"--set {item!r}: expected NAME=V1,V2,...")
        if name in seen:
            raise SweepInputError(
                f"--set {name}: given twice (list every value in one --set {name}=V1,V2,...)"
            )
        values = [v.strip() for v in text.split(",")]
        if any(not v for v in values):
            raise SweepInputError(f"--set {item!r}: empty value")
        if len(set(values)) != len(values):
            raise SweepInputError(f"--set {item!r}: a value is listed twice")
        for value in values:
            try:
                validate_setting(name, value)
            except (OSError, ValueError) as exc:
                # the engine's message names the setting and the value
                raise SweepInputError(f"--set: {_reason(exc)}") from None
        seen.add(name)
        sets.append((name, values))
    return sets


def _reason(exc: BaseException) -> str:
    """The one-line message of an error (an OSError's strerror, not "[Errno 22] ...")."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def configurations(sets: Sequence[tuple[str, Sequence[str]]]) -> list[Config]:
    """The cross product of the values, first NAME slowest; ``[{}]`` (the trace's own
    configuration) when nothing is set."""
    names = [name for name, _ in sets]
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(values for _, values in sets))
    ]


# ---- the task every executor runs ---------------------------------------------------------
def replay_one(
    trace: str, config: Config, record: bool, interval: float = DEFAULT_SAMPLE_INTERVAL
) -> Outcome:
    """Replay ``trace`` under ``config``; with ``record``, sample the device as `zramfs
    record` would (`zramfs.record.device_sample`, the same per-device object the mount
    sampler produces from the attribute files) every ``interval`` seconds of trace time."""
    from zramfs.replay import replay_trace

    samples: list[Sample] = []
    if not record:
        return Outcome(replay_trace(trace, config), samples)
    from zramfs.record import device_sample

    def on_sample(t: float, dev: ZramDevice) -> None:
        samples.append((t, {dev.name: device_sample(dev)}))

    result = replay_trace(trace, config, on_sample=on_sample, sample_interval=interval)
    return Outcome(result, samples)


# A Dask worker keeps one copy of each trace it was sent, as a file (the engine replays
# files), for every task of the sweep; `forget_trace` removes it when the sweep ends.
_SHIPPED: dict[str, str] = {}
_SHIPPED_LOCK = threading.Lock()


def _local_copy(data: bytes, digest: str) -> str:
    with _SHIPPED_LOCK:
        path = _SHIPPED.get(digest)
        if path is None or not os.path.exists(path):
            fd, path = tempfile.mkstemp(prefix=f"zramfs-trace-{digest[:12]}-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            _SHIPPED[digest] = path
        return path


def replay_shipped(
    data: bytes, digest: str, config: Config, record: bool, interval: float
) -> Outcome:
    """`replay_one` on a Dask worker: ``data`` is the trace the client scattered to every
    worker once; the first task on a worker writes it to a temporary file, the others reuse
    it."""
    return replay_one(_local_copy(data, digest), config, record, interval)


def forget_trace(digest: str) -> bool:
    """Remove a worker's copy of a shipped trace (run on every worker when a sweep ends)."""
    with _SHIPPED_LOCK:
        path = _SHIPPED.pop(digest, None)
    if path is None:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


# ---- executors ----------------------------------------------------------------------------
class Executor(Protocol):
    def map(
        self, trace: Path, configs: list[Config], *, record: bool, interval: float
    ) -> list[Outcome]:
        """One `Outcome` per configuration, in the order of ``configs``."""
        ...


class InProcess:
    """``--jobs 1``: the replays one after the other in this process."""

    def map(
        self, trace: Path, configs: list[Config], *, record: bool, interval: float
    ) -> list[Outcome]:
        return [replay_one(str(trace), cfg, record, interval) for cfg in configs]


@dataclass
class LocalProcesses:
    """``--jobs N``: N processes of this machine, each replaying one configuration at a time."""

    jobs: int

    def map(
        self, trace: Path, configs: list[Config], *, record: bool, interval: float
    ) -> list[Outcome]:
        methods = multiprocessing.get_all_start_methods()
        # Never fork: the device's threads (and this process's) may hold locks at fork time.
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        workers = max(1, min(self.jobs, len(configs)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        try:
            futures = [
                pool.submit(replay_one, str(trace), cfg, record, interval) for cfg in configs
            ]
            return [f.result() for f in futures]
        finally:
            # a failed replay or ^C: the configurations not started yet are dropped
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class DaskCluster:
    """``--scheduler tcp://HOST:PORT``: an existing Dask distributed cluster.  The trace goes
    to every worker once (``scatter(broadcast=True)``); each task then names it by its
    future, and the worker replays its local copy.  The workers must import this very zramfs
    (install it on every worker, docs/replay.md)."""

    address: str
    timeout: float = CONNECT_TIMEOUT_S

    def map(
        self, trace: Path, configs: list[Config], *, record: bool, interval: float
    ) -> list[Outcome]:
        try:
            import distributed
        except ImportError:
            raise SweepInputError("--scheduler needs pip install 'zramfs[dask]'") from None
        client = self._connect(distributed)
        try:
            data = trace.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            shipped = client.scatter(data, broadcast=True, hash=False)
            futures = [
                client.submit(replay_shipped, shipped, digest, cfg, record, interval, pure=False)
                for cfg in configs
            ]
            try:
                return list(client.gather(futures))
            finally:
                with contextlib.suppress(Exception):
                    client.run(forget_trace, digest)
        finally:
            with _quiet_dask():
                client.close()

    def _connect(self, distributed: Any) -> Any:
        """A client with at least one worker behind it, or `SweepInputError` within about
        twice ``timeout`` (the scheduler, then a worker)."""
        with _quiet_dask():
            try:
                client = distributed.Client(
                    self.address, timeout=self.timeout, set_as_default=False
                )
            except (OSError, TimeoutError) as exc:
                raise SweepInputError(
                    f"--scheduler {self.address}: no Dask scheduler answered "
                    f"within {self.timeout:g} s ({_reason(exc)})"
                ) from None
        try:
            self._check_workers(client)
        except BaseException:
            with _quiet_dask():
                client.close()
            raise
        return client

    def _check_workers(self, client: Any) -> None:
        """At least one worker, and every worker can import this module.  A worker that
        cannot unpickle a task (zramfs not installed there) dies with the task and takes the
        scattered trace with it: ask first, with a function of the standard library."""
        try:
            client.wait_for_workers(1, timeout=self.timeout)
        except (OSError, TimeoutError):
            raise SweepInputError(
                f"--scheduler {self.address}: no worker joined the scheduler within "
                f"{self.timeout:g} s (start `dask worker {self.address}`)"
            ) from None
        try:
            specs = client.run(importlib.util.find_spec, __name__)
        except Exception as exc:  # noqa: BLE001 - whatever the import raised on the worker
            specs = {"a worker": None}
            why = _reason(exc)
        else:
            why = f"no module named {__name__!r}"
        missing = sorted(worker for worker, spec in specs.items() if spec is None)
        if missing:
            raise SweepInputError(
                f"--scheduler {self.address}: {missing[0]} cannot import zramfs ({why}); "
                "install zramfs on every worker (docs/replay.md)"
            )


@contextlib.contextmanager
def _quiet_dask() -> Any:
    """Keep distributed's own log lines (connection retries, "closing client") off stderr:
    the command says what went wrong in one line."""
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def make_executor(jobs: int, scheduler: str | None, timeout: float) -> Executor:
    if scheduler is not None:
        return DaskCluster(scheduler, timeout)
    return InProcess() if jobs == 1 else LocalProcesses(jobs)


# ---- the command --------------------------------------------------------------------------
def _check_options(args: argparse.Namespace) -> tuple[int, str | None]:
    """--jobs and --scheduler as the executor wants them, or `SweepInputError`."""
    try:
        jobs = int(args.jobs)
    except ValueError:
        raise SweepInputError(f"--jobs {args.jobs!r}: expected a whole number >= 1") from None
    if jobs < 1:
        raise SweepInputError(f"--jobs {args.jobs!r}: expected a whole number >= 1")
    scheduler = args.scheduler
    if scheduler is not None:
        match = SCHEDULER_RE.match(scheduler)
        if not match or not 0 < int(match.group(3)) < 65536:
            raise SweepInputError(f"--scheduler {scheduler!r}: expected tcp://HOST:PORT")
        if jobs != 1:
            raise SweepInputError(
                "--jobs and --scheduler exclude each other (the cluster's "
                "workers decide how many replays run at once)"
            )
    if not args.connect_timeout > 0:
        raise SweepInputError(f"--connect-timeout {args.connect_timeout:g}: must be > 0")
    if not args.interval > 0:
        raise SweepInputError(f"--interval {args.interval:g}: must be > 0")
    return jobs, scheduler


def sweep(
    trace: Path,
    configs: list[Config],
    executor: Executor,
    *,
    record: bool = False,
    interval: float = DEFAULT_SAMPLE_INTERVAL,
) -> list[Outcome]:
    """Replay ``trace`` under each configuration with ``executor``; outcomes in order."""
    outcomes = executor.map(trace, configs, record=record, interval=interval)
    if len(outcomes) != len(configs):  # an executor bug, not bad input
        raise RuntimeError(f"{len(outcomes)} results for {len(configs)} configurations")
    return outcomes


def run(args: argparse.Namespace) -> int:
    from zramfs import sweep_output
    from zramfs.errors import TraceError
    from zramfs.trace import TraceReader

    def fail(message: str, code: int = 2) -> int:
        print(f"zramfs replay: {message}", file=sys.stderr)
        return code

    trace = Path(args.trace)
    try:
        jobs, scheduler = _check_options(args)
        sets = parse_sets(args.set or [])
        if args.record is not None:
            _check_record_path(args.record, trace)
        with TraceReader(trace):  # a garbage or foreign file fails here, before any replay
            pass
        configs = configurations(sets)
        executor = make_executor(jobs, scheduler, args.connect_timeout)
        started = time.monotonic()
        outcomes = sweep(
            trace, configs, executor, record=args.record is not None, interval=args.interval
        )
        wall = time.monotonic() - started
    except SweepInputError as exc:
        return fail(str(exc))
    except TraceError as exc:
        return fail(_reason(exc))  # names the file
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - a replay that failed: one line, not a traceback
        return fail(f"a replay failed: {type(exc).__name__}: {_reason(exc)}", 1)
    names = [name for name, _ in sets]
    if args.record is not None:
        try:
            sweep_output.write_record(args.record, outcomes, source=str(trace), names=names)
        except OSError as exc:
            return fail(f"--record {args.record}: {_reason(exc)}", 1)
    if args.json:
        sys.stdout.write(sweep_output.to_json([o.result for o in outcomes]))
    else:
        sys.stdout.write(sweep_output.format_table([o.result for o in outcomes], names))
        print(
            f"{len(configs)} configuration(s) in {wall:.2f} s ({executor_name(jobs, scheduler)})",
            file=sys.stderr,
        )
    if args.record is not None:
        print(f"recorded {args.record}", file=sys.stderr)
    return 0


def _check_record_path(path: str, trace: Path) -> None:
    """Refuse a --record FILE that cannot be written, or is the trace, before any replay."""
    target = Path(path)
    if target.exists() and trace.exists() and os.path.samefile(target, trace):
        raise SweepInputError(f"--record {path}: is the trace itself")
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise SweepInputError(f"--record {path}: is a directory")
    if not parent.is_dir():
        raise SweepInputError(f"--record {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise SweepInputError(f"--record {path}: directory {parent} is not writable")


def executor_name(jobs: int, scheduler: str | None) -> str:
    if scheduler is not None:
        return f"dask cluster at {scheduler}"
    return "in process" if jobs == 1 else f"{jobs} local processes"


def add_parser(subparsers: Any) -> None:
    """Register ``zramfs replay`` on the ``zramfs`` command's subparsers."""
    r = subparsers.add_parser(
        "replay",
        help="replay a trace (mount --trace) under each configuration of a sweep",
        description="Replay TRACE in process (no FUSE) on a fresh device for each "
        "configuration in the cross product of the --set values; one row (or one "
        "JSON object) per configuration.  See docs/replay.md.",
    )
    r.add_argument("trace", metavar="TRACE", help="a trace written by zramfs mount --trace")
    r.add_argument(
        "--set",
        action="append",
        metavar="NAME=V1,V2,...",
        help="a setting and the values to sweep (repeatable; settings not given "
        "keep the value the trace was recorded with)",
    )
    r.add_argument(
        "--record",
        metavar="FILE",
        default=None,
        help="also write the time series zramfs record writes, every configuration "
        "in this one file (each sample carries its config_key)",
    )
    r.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_SAMPLE_INTERVAL,
        metavar="SECONDS",
        help="with --record: trace seconds between two samples (default 0.5)",
    )
    r.add_argument("--json", action="store_true", help="a JSON list, one object per configuration")
    r.add_argument(
        "--jobs",
        default="1",
        metavar="N",
        help="replay in N local processes (default 1: in this process)",
    )
    r.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="replay on the Dask distributed cluster at tcp://HOST:PORT (zramfs "
        "installed on its workers; pip install 'zramfs[dask]' here)",
    )
    r.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="with --scheduler: how long to wait for the scheduler, then for a worker (default 10)",
    )
    r.set_defaults(func=run)
    one_line_errors(r, "zramfs replay")
