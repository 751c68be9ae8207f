"""Background compaction for one mount (docs/design.md, "The compaction daemon"): its policies,
the memory-pressure sources, and the module-parameter type.

Owns:
- `ModuleParameter`: one file of ``MNT/sys/module/zramfs/parameters/`` (name, mode, get/set),
  the shape the tree serves; the kernel's ``kernel_param_ops`` in Python.
- The policy string, ``off`` | ``shrinker`` | ``threshold:PAGES`` | ``interval:MS``:
  `parse_policy` / `format_policy` (the only parser, shared by the ``compact_policy``
  module parameter, ``zramfs mount --compact-policy`` and in-process users with no FUSE).
- `PressureSource`: where the ``shrinker`` policy learns of memory pressure.  `PsiPressure`
  reads PSI (``/proc/pressure/memory`` and the daemon's own cgroup v2 ``memory.pressure``);
  `SimulatedPressure` is a value a test or a replay sets.
- `CompactionDaemon`: a thread per mount that wakes on a timer (``interval_ms``) and asks the
  policy which initialised devices to compact, then calls ``device.compact()`` for each
  (zs_compact: ``migrate_lock`` taken for writing per class, yielding when readers queue, so a
  background pass keeps I/O flowing).  ``scan_once()`` is one such wake-up, usable directly.

Why ``shrinker`` is the default: kernel zram never compacts on its own.  Its pool is compacted
when someone writes ``compact`` (compact_store -> zs_compact) or when memory reclaim calls the
zsmalloc shrinker registered for the pool (zs_shrinker_count / zs_shrinker_scan).  A daemon
that compacts whenever a few pages are freeable makes ``mm_stat`` differ from the kernel's for
the same data, and takes away the slack that the next writes would have filled.  Under
``shrinker`` the daemon acts only where reclaim would: when the host (or the daemon's cgroup)
reports memory pressure, or when a device is close to its ``mem_limit``.

Every compaction, explicit or background, goes through the pool's zs_compact, which adds its
result to ``pool.stats.pages_compacted`` (``mm_stat`` column 7), as the kernel's
``zs_pool_stats.pages_compacted`` counts both.  The daemon knows nothing of FUSE.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from zramfs.kparse import kstrtobool, kstrtouint

if TYPE_CHECKING:  # only for annotations: the daemon works on anything shaped like a Registry
    from zramfs.device import Registry

log = logging.getLogger(__name__)

# The daemon never sleeps less than this between scans, whatever interval_ms says: an
# interval of 0 means "as often as possible", not a busy loop that starves the I/O threads.
MIN_SLEEP_S = 0.005

#: The default timer of the daemon (``compact_interval_ms``): how often it samples memory
#: pressure (shrinker) or the freeable counts (threshold).
DEFAULT_INTERVAL_MS = 1000
#: What ``threshold`` used before a PAGES was ever given (the former default threshold).
DEFAULT_THRESHOLD_PAGES = 64

#: ``shrinker``: the host is under memory pressure when PSI ``some avg10`` (percent of the last
#: ~10 s during which at least one task stalled on memory) reaches this.  Direct reclaim and
#: refaults make tasks stall; 1 % (100 ms of stall in 10 s) means reclaim has been running,
#: repeatedly, which is when the kernel's shrinkers are called; isolated blips read 0.0x-0.5.
PSI_SOME_AVG10_THRESHOLD = 1.0
#: ``shrinker``: a device is "near its mem_limit" when the pages its pool uses plus this margin
#: reach the limit: 1/16 (6.25 %) of the limit ...
MEM_LIMIT_MARGIN_DIVISOR = 16
#: ... and never less than 16 pages (two 8-page zspages: what two allocations can add at once).
MEM_LIMIT_MARGIN_MIN_PAGES = 16

PSI_SYSTEM_FILE = "/proc/pressure/memory"


def parse_bool(text: str) -> bool:
    """``param_set_bool``: kstrtobool() of the raw buffer (first character; " 1" is EINVAL)."""
    return kstrtobool(text)


def parse_uint(text: str) -> int:
    """``param_set_uint``: kstrtouint(buf, 0) with its errors as is (EINVAL junk, ERANGE
    overflow): no leading space, one trailing newline at most, 0x/0 prefixes but no 0b/_."""
    return kstrtouint(text, 0)


@dataclass(frozen=True)
class ModuleParameter:
    """One module parameter file: ``get()`` gives the text without newline; ``set`` may raise
    OSError with the errno a write(2) should fail with; ``set`` is None for read-only (0444)."""

    name: str
    mode: int
    get: Callable[[], str]
    set: Callable[[str], None] | None = None


# ---- policies ------------------------------------------------------------------------------------
class PolicyKind(enum.Enum):
    """What makes the background daemon compact a device's pool (module docstring)."""

    OFF = "off"  # never; explicit ``compact`` writes still work
    SHRINKER = "shrinker"  # memory pressure, or a device near its mem_limit (default)
    THRESHOLD = "threshold"  # a pool with at least PAGES freeable pages, at each tick
    INTERVAL = "interval"  # every device, every MS milliseconds, whatever is freeable

    @property
    def takes_value(self) -> bool:
        return self in (PolicyKind.THRESHOLD, PolicyKind.INTERVAL)


class Reason(enum.Enum):
    """Why the daemon compacted a pool (one counter each, ``compact_runs_<reason>``)."""

    PRESSURE = "pressure"
    MEM_LIMIT = "mem_limit"
    THRESHOLD = "threshold"
    INTERVAL = "interval"


POLICY_SYNTAX = "off, shrinker, threshold:PAGES or interval:MS"


class BadPolicy(OSError):
    """A policy string that does not parse: EINVAL (what a write(2) of it fails with), with a
    message that says what is accepted."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(
            errno.EINVAL, f"bad compaction policy {text!r}: {why} (expected {POLICY_SYNTAX})"
        )


@dataclass(frozen=True)
class PolicySpec:
    """A parsed policy string: the kind, and its number for ``threshold`` (PAGES) and
    ``interval`` (MS)."""

    kind: PolicyKind
    value: int | None = None

    def __post_init__(self) -> None:
        if self.kind.takes_value != (self.value is not None):
            raise ValueError(f"{self.kind.value}: value {self.value!r}")

    def __str__(self) -> str:
        return format_policy(self)


DEFAULT_POLICY = PolicySpec(PolicyKind.SHRINKER)


def parse_policy(text: str) -> PolicySpec:
    """The policy string as a module parameter store sees it: ``off``, ``shrinker``,
    ``threshold:PAGES`` or ``interval:MS``, lower case, one trailing newline allowed (as
    sysfs_streq and kstrto* allow), nothing else around it; PAGES and MS are kstrtouint
    base 0 (decimal, 0x hex, 0 octal; at most 2^32-1).  Every bad value raises `BadPolicy`
    (EINVAL, including a number out of range: one errno for a string-valued parameter, as
    comp_algorithm answers any unknown name)."""
    raw = text[:-1] if text.endswith("\n") else text
    if "\n" in raw:
        raise BadPolicy(text, "more than one trailing newline")
    name, colon, arg = raw.partition(":")
    try:
        kind = PolicyKind(name)
    except ValueError:
        raise BadPolicy(text, f"unknown policy {name!r}") from None
    if not kind.takes_value:
        if colon:
            raise BadPolicy(text, f"{kind.value} takes no value")
        return PolicySpec(kind)
    unit = "PAGES" if kind is PolicyKind.THRESHOLD else "MS"
    if not colon:
        raise BadPolicy(text, f"{kind.value} needs a value: {kind.value}:{unit}")
    try:
        value = kstrtouint(arg, 0)
    except OSError:
        raise BadPolicy(text, f"{unit} must be an unsigned 32-bit integer") from None
    return PolicySpec(kind, value)


def format_policy(spec: PolicySpec) -> str:
    """The inverse of `parse_policy` (what ``compact_policy`` reads back)."""
    return spec.kind.value if spec.value is None else f"{spec.kind.value}:{spec.value}"


@dataclass(frozen=True)
class CompactionPolicy:
    """The daemon's settings: the policy kind, the PAGES of ``threshold`` and the daemon's
    timer ``interval_ms`` (the MS of ``interval``; for ``shrinker`` and ``threshold`` how often
    they look).  Immutable: a knob change replaces the whole policy, so a scan always sees
    one consistent set."""

    kind: PolicyKind = PolicyKind.SHRINKER
    threshold_pages: int = DEFAULT_THRESHOLD_PAGES
    interval_ms: int = DEFAULT_INTERVAL_MS

    @property
    def enabled(self) -> bool:
        return self.kind is not PolicyKind.OFF

    @property
    def spec(self) -> PolicySpec:
        if self.kind is PolicyKind.THRESHOLD:
            return PolicySpec(self.kind, self.threshold_pages)
        if self.kind is PolicyKind.INTERVAL:
            return PolicySpec(self.kind, self.interval_ms)
        return PolicySpec(self.kind)

    def with_spec(self, spec: PolicySpec | str) -> CompactionPolicy:
        """This policy switched to ``spec`` (a string is parsed first); the number of
        ``threshold``/``interval`` replaces threshold_pages/interval_ms, the other stays."""
        if isinstance(spec, str):
            spec = parse_policy(spec)
        if spec.kind is PolicyKind.THRESHOLD:
            assert spec.value is not None  # PolicySpec checks kind.takes_value
            return replace(self, kind=spec.kind, threshold_pages=spec.value)
        if spec.kind is PolicyKind.INTERVAL:
            assert spec.value is not None
            return replace(self, kind=spec.kind, interval_ms=spec.value)
        return replace(self, kind=spec.kind)

    def __str__(self) -> str:
        return format_policy(self.spec)


def mem_limit_margin(limit_pages: int) -> int:
    """Pages of headroom under ``mem_limit`` inside which ``shrinker`` compacts."""
    return max(limit_pages // MEM_LIMIT_MARGIN_DIVISOR, MEM_LIMIT_MARGIN_MIN_PAGES)


def near_mem_limit(used_pages: int, limit_pages: int) -> bool:
    """Whether a pool of ``used_pages`` is within the margin of its limit (0: no limit).
    zram_write_page fails a write when, right after zs_malloc, the pool holds more than
    limit_pages; reclaim would have run the shrinker before allocations got that far."""
    return bool(limit_pages) and used_pages + mem_limit_margin(limit_pages) >= limit_pages


# ---- memory pressure -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PressureReading:
    """One look at memory pressure: the highest PSI ``some avg10`` found (percent) and the file
    it came from; ``some_avg10`` None when no source could be read (``error`` says why)."""

    some_avg10: float | None
    source: str = ""
    error: str = ""

    def exceeds(self, threshold: float = PSI_SOME_AVG10_THRESHOLD) -> bool:
        return self.some_avg10 is not None and self.some_avg10 >= threshold

    def describe(self) -> str:
        """The ``compact_pressure`` text: ``some avg10=0.12 /proc/pressure/memory``."""
        if self.some_avg10 is None:
            return "unavailable" + (f": {self.error}" if self.error else "")
        return f"some avg10={self.some_avg10:.2f} {self.source}".rstrip()


class PressureSource(Protocol):
    """Where the ``shrinker`` policy learns of memory pressure.  ``read`` is called once per
    daemon tick, from the daemon's thread; it must not block for long and should report a
    failure in the reading rather than raise (an exception counts as "no reading")."""

    def read(self) -> PressureReading: ...


@dataclass
class SimulatedPressure:
    """A pressure source whose value the caller sets: tests, trace replay, and any run that
    must not depend on the host (0.0, the default, is "no pressure")."""

    some_avg10: float = 0.0
    source: str = "simulated"

    def read(self) -> PressureReading:
        return PressureReading(self.some_avg10, self.source)


def parse_psi_some_avg10(text: str) -> float:
    """``some avg10`` of a PSI file (``some avg10=1.23 avg60=... total=...``); ValueError if
    the file has no such field."""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["some"]:
            for word in words[1:]:
                key, _, value = word.partition("=")
                if key == "avg10":
                    return float(value)
    raise ValueError("no 'some avg10' field")


def own_cgroup_pressure_file(
    proc_cgroup: str = "/proc/self/cgroup", proc_mounts: str = "/proc/self/mounts"
) -> str | None:
    """``memory.pressure`` of this process's cgroup v2, or None: no unified hierarchy, the
    root cgroup (it has none: /proc/pressure/memory is its figure), or no such file.

    The cgroup comes from the ``0::/path`` line of /proc/self/cgroup, the place of the
    hierarchy from the first cgroup2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid host).  Looked up at each read: the daemon can be moved to another cgroup."""
    try:
        with open(proc_cgroup) as f:
            rel = next((ln.rstrip("\n")[3:] for ln in f if ln.startswith("0::")), None)
        if not rel or rel == "/":
            return None
        with open(proc_mounts) as f:
            root = next(
                (p[1] for p in (ln.split() for ln in f) if len(p) >= 3 and p[2] == "cgroup2"), None
            )
    except OSError:
        return None
    if root is None:
        return None
    path = os.path.join(root, rel.lstrip("/"), "memory.pressure")
    return path if os.path.exists(path) else None


class PsiPressure:
    """The host's memory pressure: PSI ``some avg10`` of /proc/pressure/memory and of the
    daemon's own cgroup v2 ``memory.pressure`` (the pool is charged to that cgroup: its own
    limit is pressure on the daemon even when the host has memory to spare); the higher one
    counts.

    Known overstatement: the system-wide figure also counts tasks stalled inside some other
    memory-limited cgroup, whose reclaim would not call zsmalloc's shrinker (it is not
    SHRINKER_MEMCG_AWARE, so shrink_slab runs it only for global reclaim); the daemon then
    compacts where the kernel would not.

    ``paths`` fixes the files to read (tests); by default they are found at each read."""

    def __init__(self, paths: Sequence[str] | None = None) -> None:
        self._paths = tuple(paths) if paths is not None else None

    def paths(self) -> tuple[str, ...]:
        if self._paths is not None:
            return self._paths
        cgroup = own_cgroup_pressure_file()
        return (PSI_SYSTEM_FILE,) if cgroup is None else (PSI_SYSTEM_FILE, cgroup)

    def read(self) -> PressureReading:
        best: PressureReading | None = None
        errors: list[str] = []
        for path in self.paths():
            try:
                with open(path) as f:
                    value = parse_psi_some_avg10(f.read())
            except (OSError, ValueError) as exc:
                # A kernel without CONFIG_PSI, or booted with psi=0 (EOPNOTSUPP on read).
                errors.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
                continue
            if best is None or value > (best.some_avg10 or 0.0):
                best = PressureReading(value, path)
        if best is None:
            return PressureReading(None, "", "; ".join(errors) or "no PSI file")
        return best


# ---- the daemon ----------------------------------------------------------------------------------
@dataclass
class CompactionStats:
    runs: int = 0  # compactions done by the daemon (device.compact() calls)
    pages_freed: int = 0  # their total result (pool.compact() return values)
    last_error: str = ""  # the latest exception text, for the status file
    scans: int = 0  # timer ticks that looked at the devices
    runs_by_reason: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(Reason, 0))
    last_pressure: PressureReading | None = None  # what the pressure source last read
    # CPU time of the scans (the scanning thread's clock: PSI reads, freeable counts and the
    # compactions), so the daemon's cost is read, not inferred from noisy I/O rates
    cpu_ns: int = 0


@dataclass
class CompactionDaemon:
    """The background compactor of one mount.

    ``start()`` launches the thread (call it after any fork: threads do not survive one);
    ``stop()`` wakes it and joins.  ``scan_once()`` is the unit of work, also usable directly
    (tests call it instead of sleeping).  ``pressure`` and ``clock`` are injectable: a
    `SimulatedPressure` makes ``shrinker`` deterministic, a fake clock drives ``interval``.
    Under ``off`` the thread sleeps until a knob changes and scans nothing.
    """

    registry: Registry
    policy: CompactionPolicy = field(default_factory=CompactionPolicy)
    stats: CompactionStats = field(default_factory=CompactionStats)
    pressure: PressureSource = field(default_factory=PsiPressure)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Single flight: a scan that finds another one running skips rather than queueing.
        self._flight = threading.Lock()
        # Knob writes come from FUSE worker threads: read-modify-write of the policy.
        self._knobs = threading.Lock()
        # What compact_enabled=Y brings back after off.
        self._resume = self.policy.kind if self.policy.enabled else PolicyKind.SHRINKER
        self._last_interval_run: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        if self.policy.kind is PolicyKind.SHRINKER and self.stats.last_pressure is None:
            # A first reading before the thread runs: a live shrinker mount's compact_pressure
            # shows a reading from the start, never "not read" for its first moments.
            self._read_pressure()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="zramfs-compactd", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kick(self) -> None:
        """Re-evaluate now (after a knob changed)."""
        self._wake.set()

    # ---- knobs -------------------------------------------------------------------------------
    def set_policy(self, policy: PolicySpec | str) -> CompactionPolicy:
        """Switch to ``policy`` (a string goes through `parse_policy`; BadPolicy/EINVAL and
        nothing changed when it does not parse).  Returns the policy now in force."""
        spec = parse_policy(policy) if isinstance(policy, str) else policy
        return self._update(lambda p: p.with_spec(spec))

    def _update(self, change: Callable[[CompactionPolicy], CompactionPolicy]) -> CompactionPolicy:
        with self._knobs:
            old = self.policy
            new = change(old)
            if old.enabled and not new.enabled:
                self._resume = old.kind
            if new.kind is PolicyKind.INTERVAL and old.kind is not PolicyKind.INTERVAL:
                self._last_interval_run = None  # a new interval policy starts now
            self.policy = new
        self.kick()
        return new

    def _set_enabled(self, on: bool) -> None:
        def change(p: CompactionPolicy) -> CompactionPolicy:
            if on:
                return p if p.enabled else replace(p, kind=self._resume)
            return replace(p, kind=PolicyKind.OFF)

        self._update(change)

    def _set_threshold(self, pages: int) -> None:
        # The deprecated knob selects threshold:PAGES, as it did; while compaction is off it
        # becomes what compact_enabled=Y brings back.
        def change(p: CompactionPolicy) -> CompactionPolicy:
            if not p.enabled:
                self._resume = PolicyKind.THRESHOLD
                return replace(p, threshold_pages=pages)
            return replace(p, kind=PolicyKind.THRESHOLD, threshold_pages=pages)

        self._update(change)

    # ---- work ------------------------------------------------------------------------------
    def scan_once(self, *, wait: bool = False) -> int:
        """One tick: compact what the policy selects; returns the pages freed, 0 at once
        under ``off``.  When another scan is in flight it returns 0 without waiting, or with
        ``wait`` lets that scan finish first and then scans (a caller that reads mm_stat
        next then sees no compaction half done)."""
        policy = self.policy
        if not policy.enabled:
            return 0
        if not self._flight.acquire(blocking=wait):
            return 0
        policy = self.policy  # it may have changed while we waited
        if not policy.enabled:
            self._flight.release()
            return 0
        cpu0 = time.thread_time_ns()
        try:
            self.stats.scans += 1
            if policy.kind is PolicyKind.SHRINKER:
                return self._scan_shrinker()
            if policy.kind is PolicyKind.THRESHOLD:
                return self._scan_threshold(max(policy.threshold_pages, 1))
            return self._scan_interval(policy.interval_ms)
        finally:
            self.stats.cpu_ns += time.thread_time_ns() - cpu0
            self._flight.release()

    def _pools(self) -> Iterable[tuple[object, object]]:
        """(device, pool) of every initialised device, at this moment."""
        for dev in list(self.registry.devices.values()):
            pool = getattr(dev, "pool", None)
            if pool is not None:  # uninitialised device: nothing to compact
                yield dev, pool

    def _read_pressure(self) -> PressureReading:
        try:
            reading = self.pressure.read()
        except Exception as exc:  # noqa: BLE001 - a broken source is "no reading", not a crash
            reading = PressureReading(None, "", f"{type(exc).__name__}: {exc}")
        self.stats.last_pressure = reading
        return reading

    def _scan_shrinker(self) -> int:
        """What reclaim would do: for each pool zs_shrinker_count reports freeable pages in,
        zs_shrinker_scan (a whole-pool compaction) — when the host or the daemon's cgroup is
        under memory pressure, or when that device is near its mem_limit.  The kernel's
        batching of shrinker work (do_shrink_slab scans freeable >> priority per call) is
        not modelled: one tick under pressure compacts each such pool once."""
        pressured = self._read_pressure().exceeds()
        freed = 0
        for dev, pool in self._pools():
            freeable = self._freeable(dev, pool)
            if freeable <= 0:  # SHRINK_EMPTY: nothing a scan could give back
                continue
            if pressured:
                freed += self._compact(dev, Reason.PRESSURE)
            elif near_mem_limit(self._used_pages(pool), getattr(dev, "limit_pages", 0)):
                freed += self._compact(dev, Reason.MEM_LIMIT)
        return freed

    def _scan_threshold(self, pages: int) -> int:
        freed = 0
        for dev, pool in self._pools():
            if self._freeable(dev, pool) >= pages:
                freed += self._compact(dev, Reason.THRESHOLD)
        return freed

    def _scan_interval(self, interval_ms: int) -> int:
        """Every initialised device, once MS have passed since the previous round (a kick
        between two rounds does not bring the next one forward)."""
        now = self.clock()
        last = self._last_interval_run
        if last is not None and (now - last) * 1000.0 < interval_ms:
            return 0
        self._last_interval_run = now
        return sum(self._compact(dev, Reason.INTERVAL) for dev, _ in self._pools())

    @staticmethod
    def _freeable(dev, pool) -> int:
        try:
            return int(pool.freeable_pages())  # zs_shrinker_count: Σ zs_can_compact
        except Exception as exc:  # noqa: BLE001 - the pool went away under us (reset): skip it
            log.debug("freeable_pages on %s failed: %s", getattr(dev, "name", dev), exc)
            return 0

    @staticmethod
    def _used_pages(pool) -> int:
        try:
            return int(pool.total_pages)  # zs_get_total_pages, what mem_limit is checked on
        except Exception:  # noqa: BLE001 - as in _freeable: a pool torn down by a reset
            return 0

    def _compact(self, dev, reason: Reason) -> int:
        try:
            # Through the device, not the pool: the device serialises compaction against reset.
            got = int(dev.compact() or 0)
        except Exception as exc:  # noqa: BLE001 - recorded and logged; the daemon goes on
            self.stats.last_error = f"{getattr(dev, 'name', '?')}: {exc}"
            log.warning("background compaction of %s failed: %s", getattr(dev, "name", dev), exc)
            return 0
        self.stats.runs += 1
        self.stats.runs_by_reason[reason] += 1
        self.stats.pages_freed += got
        return got

    def _sleep_s(self, policy: CompactionPolicy, started: float) -> float:
        period = policy.interval_ms / 1000.0
        last = self._last_interval_run
        if policy.kind is PolicyKind.INTERVAL and last is not None:
            left = last + period - self.clock()
        else:
            left = period - (time.monotonic() - started)
        return max(left, MIN_SLEEP_S)

    def _run(self) -> None:
        while not self._stopping:
            policy = self.policy
            if not policy.enabled:
                self._wake.wait()  # until a knob changes or stop()
                self._wake.clear()
                continue
            started = time.monotonic()
            try:
                self.scan_once()
            except Exception:  # never let the thread die silently: log and keep going
                log.exception("compaction scan failed")
            self._wake.wait(self._sleep_s(policy, started))
            self._wake.clear()

    # ---- knobs as module parameters ----------------------------------------------------------
    def parameters(self) -> Iterable[ModuleParameter]:
        """``compact_policy`` (the policy string), the deprecated numeric knobs kept working
        (``compact_enabled``, ``compact_threshold_pages``, ``compact_interval_ms``), and the
        read-only record of what the daemon did (runs, pages freed, runs per reason, the CPU
        time its scans took, the last pressure reading).  Each getter reads the policy in
        force at the time."""
        stats = self.stats

        def set_policy(text: str) -> None:
            self.set_policy(text)

        def set_interval(text: str) -> None:
            ms = parse_uint(text)
            self._update(lambda p: replace(p, interval_ms=ms))

        def pressure_text() -> str:
            reading = stats.last_pressure
            return "not read" if reading is None else reading.describe()

        def runs_for(reason: Reason) -> Callable[[], str]:
            return lambda: str(stats.runs_by_reason[reason])

        return (
            ModuleParameter("compact_policy", 0o644, lambda: str(self.policy), set_policy),
            ModuleParameter(
                "compact_enabled",
                0o644,
                lambda: "Y" if self.policy.enabled else "N",
                lambda text: self._set_enabled(parse_bool(text)),
            ),
            ModuleParameter(
                "compact_threshold_pages",
                0o644,
                lambda: str(self.policy.threshold_pages),
                lambda text: self._set_threshold(parse_uint(text)),
            ),
            ModuleParameter(
                "compact_interval_ms", 0o644, lambda: str(self.policy.interval_ms), set_interval
            ),
            ModuleParameter("compact_runs", 0o444, lambda: str(stats.runs)),
            ModuleParameter("compact_pages_freed", 0o444, lambda: str(stats.pages_freed)),
            ModuleParameter("compact_cpu_us", 0o444, lambda: str(stats.cpu_ns // 1000)),
            *(ModuleParameter(f"compact_runs_{r.value}", 0o444, runs_for(r)) for r in Reason),
            ModuleParameter("compact_pressure", 0o444, pressure_text),
        )
