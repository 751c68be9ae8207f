"""Replay a trace on a fresh device, in process, under one configuration.

Owns `replay_trace` and `ReplayResult` (docs/trace-format.md, "Replay"; the settings are
`zramfs.replay_settings`).  A replay builds a new `ZramDevice` on its own `PhysicalMemory`
(no FUSE, no mount) and applies the trace's records to it in order: writes with their data,
reads, discards, flushes, control-file writes through the same `zramfs.attrs.store` a
mount's tree calls (disksize, comp_algorithm, mem_limit, reset, compact, idle, ...).  The
settings of the configuration replace what the trace recorded:

* `algorithm` / `level` / `mem_limit`: the device gets them when it is created and after
  every reset, and the trace's own comp_algorithm / algorithm_params / mem_limit stores
  are skipped;
* `chain_size` / `chain_rule`: the pool is built with them;
* `compact_policy` / `compact_interval`: a `CompactionDaemon` on the replay device, driven
  by trace time instead of a thread: before a record at trace time t, the daemon's scan
  runs for every tick of its timer (its interval_ms, at least daemon.MIN_SLEEP_S) up to t,
  with its clock set to the tick.  `shrinker` sees no host pressure (SimulatedPressure 0),
  so it compacts only near mem_limit; a knob write the trace has (compact_policy, ...) is
  applied unless the configuration sets that knob.  `recorded` instead replays the live
  daemon's own compactions where the trace has them.

Control writes that failed on the live mount (errno recorded) are skipped: they changed
nothing there (a reset refused while the image was open would succeed here).  Data writes
are replayed whatever their live outcome; those failing here (mem_limit, pool full) are
counted in `write_failures`.  Replaying a trace under the configuration it was recorded
with gives the live device's final mm_stat, exactly, when the trace has no record flagged
as overlapping (`ReplayResult.overlapping == 0`; see zramfs.trace_hook) and the compaction
policy was off or did not act.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from allocator import PhysicalMemory, Pool

from . import attrs, codecs
from .daemon import CompactionDaemon, CompactionPolicy, SimulatedPressure, parse_policy
from .device import ZramDevice
from .errors import InvalidSetting, ZramError
from .kparse import proc_dointvec
from .replay_settings import (
    RECORDED_POLICY,
    SETTINGS,
    parse_config,
    recorded_config,
    validate_setting,
)
from .slots import PAGE_SHIFT, PAGE_SIZE
from .stat_fields import MM_STAT_FIELDS
from .trace import (
    CTRL_READ,
    F_OVERLAP,
    OP_DISCARD,
    OP_PUNCH_HOLE,
    T_BGCOMPACT,
    T_CONTROL,
    T_DISCARD,
    T_FLUSH,
    T_READ,
    T_WRITE,
    Control,
    TraceReader,
)

if TYPE_CHECKING:
    from .device import Registry

__all__ = [
    "MM_STAT_FIELDS",
    "SETTINGS",
    "ReplayResult",
    "mm_stat_of",
    "replay_trace",
    "validate_setting",
]

_DAEMON_KNOBS = {
    "compact_policy": "compact_policy",
    "compact_enabled": "compact_policy",
    "compact_threshold_pages": "compact_policy",
    "compact_interval_ms": "compact_interval",
}
_MIN_TICK_NS = 5_000_000  # zramfs.daemon.MIN_SLEEP_S


@dataclass
class ReplayResult:
    """What one configuration did with the trace (docs/trace-format.md, "Replay")."""

    config: dict[str, str]
    mm_stat: dict[str, int]
    peak_mem_used: int
    mean_mem_used: float
    pages_compacted: int
    write_failures: int
    seconds: float
    #: operation records applied; those flagged as overlapping another (see trace_hook)
    records: int = 0
    overlapping: int = 0
    #: trace time covered (seconds) and whether the trace ended with its END record
    trace_seconds: float = 0.0
    trace_complete: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON object (config, mm_stat, peak_mem_used, seconds) and the rest."""
        return {
            "config": dict(self.config),
            "mm_stat": dict(self.mm_stat),
            "peak_mem_used": self.peak_mem_used,
            "mean_mem_used": self.mean_mem_used,
            "pages_compacted": self.pages_compacted,
            "write_failures": self.write_failures,
            "seconds": self.seconds,
            "records": self.records,
            "overlapping": self.overlapping,
            "trace_seconds": self.trace_seconds,
            "trace_complete": self.trace_complete,
        }


def mm_stat_of(dev: ZramDevice | None) -> dict[str, int]:
    """mm_stat as named fields, from the text a mount serves (zramfs.attrs.format_mm_stat)."""
    if dev is None:
        return dict.fromkeys(MM_STAT_FIELDS, 0)
    return dict(zip(MM_STAT_FIELDS, map(int, attrs.format_mm_stat(dev).split())))


def _device_id(device: str | None) -> int:
    if device is None:
        return 0
    text = device[4:] if device.startswith("zram") else device
    if not text.isdigit():
        raise InvalidSetting(f"device {device!r}: expected zramN or N")
    return int(text)


class _Calls(NamedTuple):
    """What the replay loop calls on its device, bound once (all None without a device)."""

    pool: Pool | None
    write: Callable[[int, bytes], int] | None
    read: Callable[[int, int], bytes] | None
    #: a DISCARD record's call, indexed by its op (OP_DISCARD, OP_PUNCH_HOLE, OP_ZERO_RANGE)
    trims: tuple[Callable[[int, int], None], ...] | None


def _device_calls(dev: ZramDevice | None) -> _Calls:
    if dev is None:
        return _Calls(None, None, None, None)
    return _Calls(dev.pool, dev.write, dev.read, (dev.discard, dev.punch_hole, dev.zero_range))


class _Replay:
    """The state of one replay (see the module docstring)."""

    def __init__(
        self, reader: TraceReader, settings: dict[str, Any], dev_id: int, config: Mapping[str, str]
    ) -> None:
        self.reader = reader
        self.settings = settings
        self.dev_id = dev_id
        rec = recorded_config(reader.mount)
        self.effective: dict[str, str] = {**rec}
        self.effective.update(config)  # as typed: "64M" stays "64M"
        self.chain_size = int(settings.get("chain_size", rec["chain_size"]))
        self.chain_rule = str(settings.get("chain_rule", rec["chain_rule"]))
        self.memory = PhysicalMemory()
        self.boottime0 = float(reader.header.get("boottime_start", 0.0))
        self.t_ns = 0
        self.now_s = self.boottime0
        self.dev: ZramDevice | None = None
        if dev_id < int(reader.mount.get("devices", 1)):
            self.dev = self._new_device()
        policy_text = str(settings.get("compact_policy", rec["compact_policy"]))
        self.recorded_policy = policy_text == RECORDED_POLICY
        interval = int(settings.get("compact_interval", rec["compact_interval"]))
        policy = CompactionPolicy(interval_ms=interval)
        if not self.recorded_policy:
            policy = policy.with_spec(parse_policy(policy_text))
        else:
            policy = policy.with_spec(parse_policy("off"))
        # The daemon asks its registry for `.devices` only: this replay is one (the replayed
        # device), and its clock is trace time.
        self.daemon = CompactionDaemon(
            cast("Registry", self),
            policy,
            pressure=SimulatedPressure(0.0),
            clock=lambda: self.t_ns / 1e9,
        )
        self.knobs = {p.name: p for p in self.daemon.parameters()}
        self.next_tick = 0
        self.ticking = self.daemon.policy.enabled
        self.write_failures = 0
        self.records = 0
        self.overlapping = 0
        self.peak = 0
        self.area = 0.0  # ∫ mem_used dt, bytes × ns
        self.last_used = 0

    # CompactionDaemon's view of a registry: the replayed device only
    @property
    def devices(self) -> dict[int, ZramDevice]:
        return {} if self.dev is None else {self.dev_id: self.dev}

    def _new_device(self) -> ZramDevice:
        dev = ZramDevice(
            self.dev_id, memory=self.memory, chain_size=self.chain_size, chain_rule=self.chain_rule
        )
        # the device's clock (ac_time) is trace time: a C-level call, as the live one is
        dev.clock = functools.partial(getattr, self, "now_s")
        self._apply_overrides(dev)
        return dev

    def _apply_overrides(self, dev: ZramDevice) -> None:
        s = self.settings
        if "algorithm" in s:
            dev.set_comp_algorithm(s["algorithm"])
        if "level" in s:
            attrs.store(dev, "algorithm_params", f"priority=0 level={s['level']}")
        if "mem_limit" in s:
            dev.set_mem_limit(s["mem_limit"])

    # ---- trace time ---------------------------------------------------------------------
    def advance(self, t_ns: int) -> None:
        """Move trace time to t_ns: account memory, run the daemon's ticks up to it."""
        if t_ns < self.t_ns:
            t_ns = self.t_ns  # never backwards (a clock step between two threads)
        daemon = self.daemon
        while self.ticking and self.next_tick <= t_ns:
            self._account(self.next_tick)
            daemon.scan_once()
            self._measure()
            self.next_tick += max(daemon.policy.interval_ms * 1_000_000, _MIN_TICK_NS)
        self._account(t_ns)

    def _policy_changed(self) -> None:
        """After a knob write: a policy switched on scans at once, as the daemon's kick does."""
        on = self.daemon.policy.enabled
        if on and not self.ticking:
            self.next_tick = self.t_ns
        self.ticking = on

    def _account(self, t_ns: int) -> None:
        if t_ns > self.t_ns:
            self.area += self.last_used * (t_ns - self.t_ns)
            self.t_ns = t_ns
            self.now_s = self.boottime0 + t_ns * 1e-9

    def _measure(self) -> None:
        dev = self.dev
        pool = dev.pool if dev is not None else None
        used = pool.total_pages << PAGE_SHIFT if pool is not None else 0
        self.last_used = used
        if used > self.peak:
            self.peak = used

    # ---- records ------------------------------------------------------------------------
    def run(
        self,
        records: Iterator[tuple[Any, ...]],
        on_sample: Callable[[float, ZramDevice], None] | None,
        sample_ns: int,
    ) -> None:
        """Apply every record (TraceReader.raw_records tuples) in order.

        The loop is a replay's own cost per record, so the write, `_account` and `_measure`
        (the references, which `advance` calls) are inline, and the state they keep — trace
        time, the memory integral, the last and peak memory, the device and its pool — is in
        locals, stored back before anything else reads it (`advance`, `apply`, `on_sample`)
        and reloaded after, and stored back when the loop ends, however it ends
        (tests/test_replay_engine.py checks the peak, the mean and the counts).  Trace time
        in seconds (`now_s`, the device's clock) is stored as it moves, before the write.
        """
        dev_id = self.dev_id
        boottime0 = self.boottime0
        next_sample = 0
        n = overlapping = failures = 0
        t_ns, area, last_used, peak = self.t_ns, self.area, self.last_used, self.peak
        ticking, next_tick = self.ticking, self.next_tick
        pool, write, read, trims = _device_calls(self.dev)
        try:
            for rec in records:
                t = rec[1]
                if (on_sample is not None and next_sample <= t) or (ticking and next_tick <= t):
                    self.t_ns, self.area, self.last_used, self.peak = t_ns, area, last_used, peak
                    if on_sample is not None:
                        while next_sample <= t:
                            self.advance(next_sample)
                            if self.dev is not None:
                                on_sample(next_sample / 1e9, self.dev)
                            next_sample += sample_ns
                    if self.ticking and self.next_tick <= t:
                        self.advance(t)
                    t_ns, area, last_used, peak = self.t_ns, self.area, self.last_used, self.peak
                    ticking, next_tick = self.ticking, self.next_tick
                    # a scan does not replace the device; rebound all the same
                    pool, write, read, trims = _device_calls(self.dev)
                if t > t_ns:  # `_account`, inline
                    area += last_used * (t - t_ns)
                    t_ns = t
                    self.now_s = boottime0 + t * 1e-9
                kind = rec[0]
                if kind == T_WRITE:  # the common case, inline
                    if rec[2] == dev_id and write is not None:
                        try:
                            write(rec[4], rec[5])
                        except ZramError:
                            failures += 1
                elif kind == T_DISCARD:  # the next commonest: `apply`'s branches, inline
                    if rec[2] == dev_id and trims is not None:
                        try:
                            trims[min(rec[4], 2)](rec[5], rec[6])  # 2 and up: as `apply`
                        except ZramError:
                            pass
                elif kind == T_READ:
                    if rec[2] == dev_id and read is not None:
                        try:
                            read(rec[4], rec[5])
                        except ZramError:
                            pass
                else:
                    self.t_ns, self.area, self.last_used, self.peak = t_ns, area, last_used, peak
                    self.apply(rec)
                    t_ns, area, last_used, peak = self.t_ns, self.area, self.last_used, self.peak
                    ticking, next_tick = self.ticking, self.next_tick
                    # a control record may have replaced the device (or set its disksize)
                    pool, write, read, trims = _device_calls(self.dev)
                # `_measure`, inline (pool.total_pages is pages_allocated)
                used = pool.pages_allocated << PAGE_SHIFT if pool is not None else 0
                last_used = used
                if used > peak:
                    peak = used
                n += 1
                overlapping += rec[3] & F_OVERLAP
        finally:
            self.t_ns, self.area, self.last_used, self.peak = t_ns, area, last_used, peak
            self.records += n
            self.overlapping += overlapping
            self.write_failures += failures

    def apply(self, rec: tuple[Any, ...]) -> None:
        """One record other than a write (see `run`)."""
        kind = rec[0]
        dev = self.dev
        if kind == T_CONTROL:
            if rec[8] == 0:
                self._control(Control(rec[1], rec[3], rec[4], rec[5], rec[6], rec[7], rec[8]))
            return
        if rec[2] != self.dev_id or dev is None:
            return
        try:
            if kind == T_READ:
                dev.read(rec[4], rec[5])
            elif kind == T_DISCARD:
                op = rec[4]
                (
                    dev.discard
                    if op == OP_DISCARD
                    else dev.punch_hole
                    if op == OP_PUNCH_HOLE
                    else dev.zero_range
                )(rec[5], rec[6])
            elif kind == T_FLUSH:
                dev.flush()
            elif kind == T_BGCOMPACT and self.recorded_policy:
                dev.compact()
        except ZramError:
            pass

    def _control(self, rec: Control) -> None:
        path = rec.path
        text = rec.text[:PAGE_SIZE].decode("utf-8", "surrogateescape")
        parent, _, name = path.rpartition("/")
        if parent.startswith("/sys/block/zram"):
            if parent != f"/sys/block/zram{self.dev_id}" or self.dev is None:
                return
            s = self.settings
            if (
                (name == "comp_algorithm" and "algorithm" in s)
                or (name == "algorithm_params" and "level" in s)
                or (name == "mem_limit" and "mem_limit" in s)
            ):
                return
            try:
                attrs.store(self.dev, name, text)
            except (ZramError, PermissionError):
                return
            if name == "reset":
                self._apply_overrides(self.dev)
        elif path == "/sys/class/zram-control/hot_add" and rec.direction == CTRL_READ:
            if text.strip() == str(self.dev_id) and self.dev is None:
                self.dev = self._new_device()
        elif path == "/sys/class/zram-control/hot_remove":
            if text.strip() == str(self.dev_id) and self.dev is not None:
                try:
                    self.dev.reset()
                except ZramError:
                    return
                self.dev = None
        elif parent == "/sys/module/zramfs/parameters":
            knob = self.knobs.get(name)
            setting = _DAEMON_KNOBS.get(name)
            if knob is None or knob.set is None or setting is None or setting in self.settings:
                return
            if self.recorded_policy:
                return
            try:
                knob.set(text)
            except OSError:
                return
            self._policy_changed()
        elif path == "/proc/sys/vm/compact_memory" and rec.offset == 0:
            try:
                value, _ = proc_dointvec(rec.text)
            except OSError:
                return
            if value == 1:
                self.memory.compact()


def replay_trace(
    trace_path: str | os.PathLike[str],
    config: Mapping[str, str],
    *,
    device: str | None = None,
    on_sample: Callable[[float, ZramDevice], None] | None = None,
    sample_interval: float = 0.5,
) -> ReplayResult:
    """Replay `trace_path` under `config` (setting NAME -> value text; unset names keep the
    recorded value) on device `device` ("zram0" or "0"; None: zram0).  `on_sample(t, dev)`
    is called every `sample_interval` seconds of trace time and once at the end.

    Raises `InvalidSetting` for a bad name or value and `TraceError` for a missing, foreign
    or damaged trace, before anything is replayed; a trace cut short replays up to its last
    complete record.
    """
    settings = parse_config(config)
    dev_id = _device_id(device)
    if not sample_interval > 0:
        raise InvalidSetting(f"sample_interval must be positive, not {sample_interval!r}")
    sample_ns = int(sample_interval * 1e9)
    started = time.perf_counter()
    # The cyclic collector's thresholds the mount uses (zramfs.cli._tune_gc: a full
    # collection walks the pool's zspages), for the replay's duration only: 5 % faster.
    thresholds = gc.get_threshold()
    gc.set_threshold(10_000, 20, 20)
    try:
        with TraceReader(trace_path) as reader:
            r = _Replay(reader, settings, dev_id, config)
            r.run(reader.raw_records(), on_sample, sample_ns)
            complete = reader.complete
    finally:
        gc.set_threshold(*thresholds)
    if on_sample is not None and r.dev is not None:
        on_sample(r.t_ns / 1e9, r.dev)
    duration = r.t_ns
    mean = r.area / duration if duration > 0 else float(r.last_used)
    mm = mm_stat_of(r.dev)
    eff = dict(r.effective)
    eff.setdefault("algorithm", _in_force_algorithm(r.dev))
    eff.setdefault("mem_limit", str(mm["mem_limit"]))
    result = ReplayResult(
        config=eff,
        mm_stat=mm,
        peak_mem_used=r.peak,
        mean_mem_used=mean,
        pages_compacted=mm["pages_compacted"],
        write_failures=r.write_failures,
        seconds=time.perf_counter() - started,
        records=r.records,
        overlapping=r.overlapping,
        trace_seconds=duration / 1e9,
        trace_complete=complete,
    )
    # The replayed device is garbage now, and only the cyclic collector can free it (a
    # listed zspage sits in a circular fullness list): collect it here, after `seconds`, as
    # the live run's time ends before its unmount.  Left to the thresholds, the next replay
    # in this process paid for it (a generation-1 collection of ~35 ms inside a 0.18 s replay).
    del r
    gc.collect()
    return result


def _in_force_algorithm(dev: ZramDevice | None) -> str:
    if dev is None:
        return codecs.DEFAULT_ALGORITHM
    return dev.comp_algs[0] or codecs.DEFAULT_ALGORITHM
