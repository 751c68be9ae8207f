"""Background compaction for one mount (DESIGN §6), and the module-parameter type.

Owns:
- `ModuleParameter`: one file of ``MNT/sys/module/zramfs/parameters/`` (name, mode, get/set),
  the shape the tree serves; the kernel's ``kernel_param_ops`` in Python.
- `CompactionPolicy`: the knobs (enabled, threshold in freeable pages, interval).
- `CompactionDaemon`: a thread per mount that watches each initialised device's pool
  (``pool.freeable_pages()``, the zsmalloc shrinker count) and calls ``device.compact()`` when
  the count reaches the threshold, at most once per interval, one compaction at a time.

Compaction itself (``zs_compact``) is the allocator's; it takes ``migrate_lock`` for writing per
class and yields when readers queue, so running it from a background thread keeps I/O flowing.
What the daemon frees shows in ``mm_stat`` column 7 (pages_compacted) because it goes through
the pool's own compaction.  The daemon knows nothing of FUSE.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from zramfs.kparse import kstrtobool, kstrtouint

if TYPE_CHECKING:  # only for annotations: the daemon works on anything shaped like a Registry
    from zramfs.device import Registry

log = logging.getLogger(__name__)

# The daemon never sleeps less than this between scans, whatever interval_ms says: an
# interval of 0 means "as often as possible", not a busy loop that starves the I/O threads.
MIN_SLEEP_S = 0.005


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


@dataclass
class CompactionPolicy:
    enabled: bool = True
    # Compact when a pool could give back at least this many pages (Σ zs_can_compact).
    threshold_pages: int = 64
    # Minimum time between two scans that compact (and between scans in general).
    interval_ms: int = 1000


@dataclass
class CompactionStats:
    runs: int = 0            # compactions started by the daemon
    pages_freed: int = 0     # their total result (pool.compact() return values)
    last_error: str = ""     # the latest exception text, for the status file
    scans: int = 0


@dataclass
class CompactionDaemon:
    """The background compactor of one mount.

    ``start()`` launches the thread (call it after any fork: threads do not survive one);
    ``stop()`` wakes it and joins.  ``scan_once()`` is the unit of work, also usable directly.
    """

    registry: "Registry"
    policy: CompactionPolicy = field(default_factory=CompactionPolicy)
    stats: CompactionStats = field(default_factory=CompactionStats)

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Single flight: a scan that finds another one running skips rather than queueing.
        self._flight = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
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

    # ---- work ------------------------------------------------------------------------------
    def scan_once(self, *, force: bool = False) -> int:
        """Compact every pool whose freeable count passes the threshold; returns pages freed.

        ``force`` ignores ``enabled`` (the threshold still applies).  Returns 0 without
        waiting when another scan is in flight.
        """
        if not force and not self.policy.enabled:
            return 0
        if not self._flight.acquire(blocking=False):
            return 0
        freed = 0
        try:
            self.stats.scans += 1
            for dev in list(self.registry.devices.values()):
                freed += self._maybe_compact(dev)
        finally:
            self._flight.release()
        return freed

    def _maybe_compact(self, dev) -> int:
        pool = getattr(dev, "pool", None)
        if pool is None:             # uninitialised device: nothing to compact
            return 0
        try:
            freeable = pool.freeable_pages()
        except Exception as exc:     # the pool went away under us (reset): skip this round
            log.debug("freeable_pages on %s failed: %s", getattr(dev, "name", dev), exc)
            return 0
        if freeable <= 0 or freeable < self.policy.threshold_pages:
            return 0
        try:
            # Through the device, not the pool: the device serialises compaction against reset.
            got = dev.compact()
        except Exception as exc:
            self.stats.last_error = f"{getattr(dev, 'name', '?')}: {exc}"
            log.warning("background compaction of %s failed: %s", getattr(dev, "name", dev), exc)
            return 0
        self.stats.runs += 1
        self.stats.pages_freed += int(got or 0)
        return int(got or 0)

    def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                self.scan_once()
            except Exception:        # never let the thread die silently: log and keep going
                log.exception("compaction scan failed")
            elapsed = time.monotonic() - started
            wait = max(self.policy.interval_ms / 1000.0 - elapsed, MIN_SLEEP_S)
            self._wake.wait(wait)
            self._wake.clear()

    # ---- knobs as module parameters ----------------------------------------------------------
    def parameters(self) -> Iterable[ModuleParameter]:
        policy, stats = self.policy, self.stats

        def set_enabled(text: str) -> None:
            policy.enabled = parse_bool(text)
            self.kick()

        def set_threshold(text: str) -> None:
            policy.threshold_pages = parse_uint(text)
            self.kick()

        def set_interval(text: str) -> None:
            policy.interval_ms = parse_uint(text)
            self.kick()

        return (
            ModuleParameter("compact_enabled", 0o644, lambda: "Y" if policy.enabled else "N",
                            set_enabled),
            ModuleParameter("compact_threshold_pages", 0o644,
                            lambda: str(policy.threshold_pages), set_threshold),
            ModuleParameter("compact_interval_ms", 0o644, lambda: str(policy.interval_ms),
                            set_interval),
            ModuleParameter("compact_runs", 0o444, lambda: str(stats.runs)),
            ModuleParameter("compact_pages_freed", 0o444, lambda: str(stats.pages_freed)),
        )
