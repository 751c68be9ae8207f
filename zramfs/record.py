"""``zramfs record MNT --out FILE``: a time series of a live mount, and the two
pieces other experiment tools build on: `device_sample` and `RecordWriter`.

- `device_sample(dev)`: one device's object of a sample, in process, from a live `ZramDevice`.
  It asks `zramfs.attrs` and the pool for the text the mount's files serve
  (``sys/block/zram<N>/*``, ``sys/kernel/debug/zsmalloc/zram<N>/classes``) and parses it with
  `zramfs.record_schema.parse_device`, the parser `MountSampler` uses on the files themselves:
  the two give the same object for the same device state.
- `RecordWriter`: writes the header and one JSON line per sample/event (schema in
  `zramfs.record_schema`, documented in docs/experiments.md); `zramfs replay --record` uses it.
- `MountSampler`: reads every device of a mount, ``proc/vmstat``, ``proc/lock_stat`` (as
  deltas) and the compaction daemon's counters, and notices devices that come, go, are
  initialised or reset between two samples (``event`` lines).
- `record_mount`: the sampling loop (fixed rate, SIGINT/SIGTERM or ``--duration`` end it, the
  file always ends with a complete line); `write_csv`: the ``--csv`` companion.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from zramfs.cmdline import one_line_errors
from zramfs.record_schema import (
    CONFIG_PARAMS,
    DAEMON_PARAMS,
    DEVICE_FILES,
    MM_STAT_FIELDS,
    SCHEMA,
    VERSION,
    BadAttribute,
    RecordError,
    flatten,
    lock_stat_delta,
    parse_daemon,
    parse_device,
    parse_lock_stat,
    parse_vmstat,
    read_record,
)

if TYPE_CHECKING:
    from zramfs.daemon import ModuleParameter
    from zramfs.device import ZramDevice

DEFAULT_INTERVAL = 0.5
PARAMS_DIR = "sys/module/zramfs/parameters"


# ---- in process --------------------------------------------------------------------------------
def _has_classes(dev: ZramDevice) -> bool:
    """Whether the mount shows debugfs zsmalloc/zram<N>/classes: the pool exists only while the
    device is initialised (zramfs.tree.Tree._initialised)."""
    return dev.pool is not None and dev.disksize > 0


def device_sample(dev: ZramDevice) -> dict[str, Any]:
    """The per-device object of one sample for a live device (module docstring): the same keys
    and values `MountSampler` reads from the device's files in the same state."""
    from zramfs import attrs

    texts: dict[str, str | None] = {name: attrs.show(dev, name) for name in DEVICE_FILES}
    pool = dev.pool
    texts["classes"] = pool.classes_table() if pool is not None and _has_classes(dev) else None
    return parse_device(texts)


def daemon_sample(parameters: Iterable[ModuleParameter]) -> dict[str, int]:
    """The compaction daemon's counters from its module parameters (e.g.
    ``CompactionDaemon.parameters()``), as `MountSampler` reads them from the files."""
    return parse_daemon({p.name: p.get() for p in parameters if p.name in DAEMON_PARAMS})


class LockStatDeltas:
    """lock_stat deltas between successive readings of one source (a file or
    ``allocator.locks.lock_stat_text``); the first `delta` is against the reading made when
    the object was created."""

    def __init__(self, read: Callable[[], str | None]) -> None:
        self._read = read
        self._prev = self._reading()

    def _reading(self) -> dict[str, dict[str, float]]:
        text = self._read()
        return parse_lock_stat(text) if text is not None else {}

    def delta(self) -> dict[str, dict[str, float]]:
        cur = self._reading()
        out = lock_stat_delta(self._prev, cur)
        self._prev = cur
        return out


# ---- the file ----------------------------------------------------------------------------------
def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class RecordWriter:
    """Writes a record file (schema ``zramfs-record`` version 1, docs/experiments.md).

    ``RecordWriter(path, config=..., source=...)`` writes the header at once; each `sample`,
    `event`, `add_config` is one line, flushed, so a reader (or a recorder killed at any
    moment) sees whole lines only, bar at most the last.  Leaving the ``with`` block (or
    `close`) writes the ``end`` line.  A file carrying several configurations declares each
    with `add_config(key, config)` and passes ``config_key=key`` to its samples and events.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, config: Mapping[str, Any], source: str, **header: Any
    ) -> None:
        self.path = os.fspath(path)
        # the writer owns the file until close(): no with-block can span its lifetime
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self.samples = 0
        self.reason = "closed"
        self._write(
            {
                "schema": SCHEMA,
                "version": VERSION,
                "source": source,
                "config": dict(config),
                "created": time.time(),
                **header,
            }
        )

    def _write(self, obj: Mapping[str, Any]) -> None:
        line = _dumps(obj) + "\n"
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: record already closed")
            self._file.write(line)
            self._file.flush()

    def add_config(self, key: str, config: Mapping[str, Any]) -> None:
        """Declare configuration ``key`` (its settings over the header's ``config``)."""
        if key in self._keys:
            raise ValueError(f"configuration {key!r} already declared")
        self._keys.add(key)
        self._write({"type": "config", "config_key": key, "config": dict(config)})

    def _keyed(self, obj: dict[str, Any], config_key: str | None) -> dict[str, Any]:
        if config_key is not None:
            if config_key not in self._keys:
                raise ValueError(f"configuration {config_key!r} not declared (add_config)")
            obj["config_key"] = config_key
        return obj

    def sample(
        self,
        t: float,
        devices: Mapping[str, Mapping[str, Any]],
        extra: Mapping[str, Any] | None = None,
        *,
        config_key: str | None = None,
    ) -> None:
        """One sample at ``t`` seconds (since the recording started, or trace time in a
        replay): ``devices`` maps a device name (``zram0``) to its `device_sample` object;
        ``extra`` adds top-level keys (``time``, ``vmstat``, ``lock_stat``, ``daemon``)."""
        obj: dict[str, Any] = {"type": "sample", "t": round(float(t), 6)}
        obj.update(extra or {})
        obj["devices"] = {k: devices[k] for k in devices}
        self._write(self._keyed(obj, config_key))
        self.samples += 1

    def event(
        self, t: float, event: str, device: str, *, config_key: str | None = None, **detail: Any
    ) -> None:
        """A device came (``device_added``), went (``device_removed``), was initialised
        (``device_initialised``) or reset (``device_reset``)."""
        obj = {"type": "event", "t": round(float(t), 6), "event": event, "device": device, **detail}
        self._write(self._keyed(obj, config_key))

    def close(self, t: float | None = None) -> None:
        if self._file is None:
            return
        end: dict[str, Any] = {"type": "end", "samples": self.samples, "reason": self.reason}
        if t is not None:
            end["t"] = round(float(t), 6)
        self._write(end)
        with self._lock:
            self._file.close()
            self._file = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- a mount -----------------------------------------------------------------------------------
class NotAMount(Exception):
    """MNT is not a zramfs mount"""


class MountGone(Exception):
    """the mount went away"""


def _read(path: Path) -> str | None:
    """The whole text of a control file; None if it is gone (a device removed meanwhile).
    `MountGone` when the mount's daemon is gone (ENOTCONN: killed, its mount left stale)."""
    try:
        return path.read_text()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
            return None
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MountGone(f"{path}: {exc.strerror}") from None
        raise


class MountSampler:
    """Samples one zramfs mount (module docstring)."""

    def __init__(self, mnt: str | os.PathLike[str]) -> None:
        self.mnt = Path(mnt)
        if (
            not (self.mnt / "sys/block").is_dir()
            or not (self.mnt / "sys/class/zram-control").is_dir()
        ):
            raise NotAMount(f"{self.mnt} is not a zramfs mount")
        self._locks = LockStatDeltas(lambda: _read(self.mnt / "proc/lock_stat"))
        self._known: dict[str, dict[str, Any]] = {}
        self._first = True

    def device_names(self) -> list[str]:
        try:
            names = os.listdir(self.mnt / "sys/block")
        except OSError as exc:
            raise MountGone(f"{self.mnt}: {exc.strerror}") from None
        return sorted(names, key=lambda n: int(n.removeprefix("zram")))

    def read_device(self, name: str) -> dict[str, Any] | None:
        """The device's sample object, None if it vanished while being read."""
        sysdir = self.mnt / "sys/block" / name
        texts: dict[str, str | None] = {}
        for f in DEVICE_FILES:
            texts[f] = _read(sysdir / f)
            if texts[f] is None:
                return None
        texts["classes"] = _read(self.mnt / "sys/kernel/debug/zsmalloc" / name / "classes")
        return parse_device(texts)

    def _devices(self) -> dict[str, dict[str, Any]]:
        """Every device's sample object now; a device that vanished while being read (or was
        torn down between two of its files) is left out, as gone."""
        devices: dict[str, dict[str, Any]] = {}
        for name in self.device_names():
            try:
                d = self.read_device(name)
            except BadAttribute:
                d = None
            if d is not None:
                devices[name] = d
        return devices

    def params(self, names: Iterable[str]) -> dict[str, str | None]:
        out = {}
        for n in names:
            text = _read(self.mnt / PARAMS_DIR / n)
            out[n] = None if text is None else text.strip()
        return out

    def config(self) -> dict[str, Any]:
        """The header's ``config``: the mount's module parameters (`CONFIG_PARAMS`) and the
        algorithm, disksize and mem_limit of its first initialised device (zram0 if none
        is); every sample has each device's own."""
        cfg: dict[str, Any] = {k: v for k, v in self.params(CONFIG_PARAMS).items() if v is not None}
        devices = self._devices()
        first = next((d for d in devices.values() if d["initstate"]), None)
        first = first or next(iter(devices.values()), None)
        if first is not None:
            cfg["algorithm"] = first["comp_algorithm"]
            cfg["disksize"] = first["disksize"]
            cfg["mem_limit"] = first["mm_stat"]["mem_limit"]
        return cfg

    def sample(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[tuple[str, str]]]:
        """(devices, extra, events) now; events are (event, device) since the last call."""
        wall = time.time()
        devices = self._devices()
        if not (self.mnt / "sys/block").is_dir():
            raise MountGone(f"{self.mnt} is no longer mounted")
        extra: dict[str, Any] = {"time": round(wall, 6)}
        vm = _read(self.mnt / "proc/vmstat")
        if vm is not None:
            extra["vmstat"] = parse_vmstat(vm)
        extra["lock_stat"] = self._locks.delta()
        extra["daemon"] = parse_daemon(self.params(DAEMON_PARAMS))
        events = self._events(devices)
        return devices, extra, events

    def _events(self, devices: Mapping[str, dict[str, Any]]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        if self._first:
            self._first = False
        else:
            for name in self._known.keys() - devices.keys():
                events.append(("device_removed", name))
            for name, d in devices.items():
                before = self._known.get(name)
                if before is None:
                    events.append(("device_added", name))
                    if d["initstate"]:
                        events.append(("device_initialised", name))
                elif _was_reset(before, d):
                    events.append(("device_reset", name))
                    if d["initstate"]:
                        events.append(("device_initialised", name))
                elif d["initstate"] and not before["initstate"]:
                    events.append(("device_initialised", name))
        self._known = dict(devices)
        return sorted(events, key=lambda e: (int(e[1].removeprefix("zram")), e[0]))


# counters that only a reset (zram_reset_device's memset of the stats) makes go down
_MONOTONIC = (
    ("mm_stat", "pages_compacted"),
    ("mm_stat", "huge_pages_since"),
    ("io_stat", "failed_reads"),
    ("io_stat", "failed_writes"),
    ("io_stat", "notify_free"),
    ("debug_stat", "miss_free"),
    ("stat", "read_ios"),
    ("stat", "write_ios"),
    ("stat", "flush_ios"),
)


def _was_reset(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """A reset between two samples: initialised → uninitialised, or a counter went down (a
    reset and a new disksize in between)."""
    if before["initstate"] and not now["initstate"]:
        return True
    return any(now[f][k] < before[f][k] for f, k in _MONOTONIC)


# ---- the loop ----------------------------------------------------------------------------------
def record_mount(
    mnt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    interval: float = DEFAULT_INTERVAL,
    duration: float | None = None,
    stop: threading.Event | None = None,
) -> RecordWriter:
    """Sample ``mnt`` into ``out`` every ``interval`` seconds until ``duration`` has passed,
    ``stop`` is set or the mount goes away; the last sample is taken at the stop.  Returns the
    closed writer (``samples``, ``reason``).  Raises `NotAMount` before creating ``out``."""
    stop = stop or threading.Event()
    sampler = MountSampler(mnt)
    config = sampler.config()
    start = time.monotonic()
    writer = RecordWriter(
        out,
        config=config,
        source=f"mount:{os.path.abspath(mnt)}",
        interval=interval,
        started=round(time.time(), 6),
    )
    t = 0.0
    try:
        k = 0
        while True:
            t = time.monotonic() - start
            try:
                devices, extra, events = sampler.sample()
            except MountGone:
                writer.reason = "mount gone"
                break
            t = time.monotonic() - start
            for event, name in events:
                writer.event(t, event, name)
            writer.sample(t, devices, extra)
            if stop.is_set():
                writer.reason = "signal"
                break
            if duration is not None and t >= duration:
                writer.reason = "duration"
                break
            # fixed rate: the next slot after now (a slow sample skips slots, never bursts)
            k = max(k + 1, math.floor((time.monotonic() - start) / interval) + 1)
            wake = k * interval
            if duration is not None:
                wake = min(wake, duration)
            stop.wait(max(0.0, wake - (time.monotonic() - start)))
    finally:
        writer.close(t)
    return writer


# ---- CSV ---------------------------------------------------------------------------------------
def _class_totals(classes: list[dict[str, int]]) -> dict[str, int]:
    keys = ("obj_allocated", "obj_used", "pages_used", "freeable")
    return {k: sum(row[k] for row in classes) for k in keys}


def csv_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of the CSV export: one row per sample per device (docs/experiments.md,
    "CSV columns")."""
    rec = read_record(path)
    rows: list[dict[str, Any]] = []
    for s in rec.series.values():
        for sample in s.samples:
            top = {"config_key": s.key or "", "t": sample["t"], "time": sample.get("time", "")}
            mount = dict(flatten({k: sample[k] for k in ("vmstat", "daemon") if k in sample}))
            lock = sample.get("lock_stat") or {}
            mount["lock_stat.contentions"] = sum(v["contentions"] for v in lock.values())
            mount["lock_stat.wait_total_us"] = round(
                sum(v["wait_total_us"] for v in lock.values()), 2
            )
            mount["lock_stat.migrate_lock_contentions"] = sum(
                v["contentions"] for k, v in lock.items() if "migrate_lock" in k
            )
            for name, dev in sample["devices"].items():
                row = {**top, "device": name}
                row.update(flatten({k: v for k, v in dev.items() if k != "classes"}))
                row.update(
                    {f"classes.{k}": v for k, v in _class_totals(dev.get("classes", [])).items()}
                )
                row.update(mount)
                rows.append(row)
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    return columns, rows


def csv_path(out: str | os.PathLike[str]) -> str:
    """FILE.jsonl → FILE.csv; any other name gets .csv appended."""
    s = os.fspath(out)
    return s[: -len(".jsonl")] + ".csv" if s.endswith(".jsonl") else s + ".csv"


def write_csv(record_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """Write the CSV export of a record file; returns the number of rows."""
    columns, rows = csv_rows(record_path)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)
    return len(rows)


# ---- the command -------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    r = subparsers.add_parser("record", help="record a time series of a mount (JSON Lines)")
    r.add_argument("mountpoint", metavar="MNT")
    r.add_argument("--out", required=True, metavar="FILE", help="the record file (JSON Lines)")
    r.add_argument(
        "--interval",
        default=str(DEFAULT_INTERVAL),
        metavar="SECONDS",
        help=f"time between samples (default {DEFAULT_INTERVAL})",
    )
    r.add_argument(
        "--duration",
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: at SIGINT/SIGTERM)",
    )
    r.add_argument(
        "--csv",
        action="store_true",
        help="also write FILE's CSV companion (FILE.csv), one row per sample per device",
    )
    r.set_defaults(func=run)
    one_line_errors(r, "zramfs record")


def _seconds(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{option}: not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option}: must be a positive number of seconds, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    prog = "zramfs record"
    try:
        interval = _seconds("--interval", args.interval)
        duration = _seconds("--duration", args.duration)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    assert interval is not None
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"{prog}: {out.parent}: no such directory", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {
        s: signal.signal(s, lambda *_: stop.set())
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        writer = record_mount(args.mountpoint, out, interval=interval, duration=duration, stop=stop)
    except (NotAMount, MountGone) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {exc.filename or out}: {exc.strerror}", file=sys.stderr)
        return 2
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    note = f"{prog}: {writer.samples} samples in {out} (stopped: {writer.reason})"
    if args.csv:
        try:
            n = write_csv(out, csv_path(out))
        except RecordError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        note += f"; {n} CSV rows in {csv_path(out)}"
    print(note, file=sys.stderr)
    return 0


__all__ = [
    "device_sample",
    "daemon_sample",
    "LockStatDeltas",
    "RecordWriter",
    "MountSampler",
    "record_mount",
    "write_csv",
    "csv_rows",
    "csv_path",
    "add_parser",
    "run",
    "MM_STAT_FIELDS",
]
