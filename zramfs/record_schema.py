"""The record file of ``zramfs record`` (schema ``zramfs-record``, version 1): its field names,
the parsers that turn attribute text into a sample, and the reader that validates a file.

One parser per attribute file, shared by the two producers of a per-device sample: the mount
sampler (`zramfs.record.MountSampler`, which reads ``MNT/sys/block/zram<N>/*``) and
`zramfs.record.device_sample` (which asks `zramfs.attrs` and the pool for the very text those
files serve).  Both go through `parse_device`, so their objects cannot drift apart.  The format
is documented key by key in docs/experiments.md ("The record file").

A record file is JSON Lines.  Line 1 is the header::

    {"schema": "zramfs-record", "version": 1, "source": "...", "config": {...}, ...}

every further line is an object with a ``type``: ``sample``, ``event``, ``config`` (a named
configuration of a file that carries several, see ``config_key``) or ``end`` (written last when
the recorder stops normally).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from allocator.stats import CLASS_COLUMNS
from zramfs.daemon import Reason
from zramfs.stat_fields import (
    BD_STAT_FIELDS,
    BLOCK_STAT_FIELDS,
    DEBUG_STAT_FIELDS,
    IO_STAT_FIELDS,
    MM_STAT_FIELDS,
)

SCHEMA = "zramfs-record"
VERSION = 1

# The stat files' fields are zramfs.stat_fields' (imported above, and exported from here too).
# zs_stats_size_show()'s columns (debugfs zsmalloc/<pool>/classes)
CLASS_FIELDS = CLASS_COLUMNS
#: the attribute files a device sample reads, each with its fields (a dict in the sample)
STAT_FILES: dict[str, tuple[str, ...]] = {
    "mm_stat": MM_STAT_FIELDS,
    "io_stat": IO_STAT_FIELDS,
    "bd_stat": BD_STAT_FIELDS,
    "debug_stat": DEBUG_STAT_FIELDS,
    "stat": BLOCK_STAT_FIELDS,
}
#: single-value attribute files a device sample reads
SCALAR_FILES = ("disksize", "initstate", "comp_algorithm")
#: every device attribute file a sample reads (the ``classes`` table comes from debugfs)
DEVICE_FILES = (*SCALAR_FILES, *STAT_FILES)
#: the compaction daemon's counters (module parameters under MNT/sys/module/zramfs/parameters)
DAEMON_PARAMS = (
    "compact_runs",
    "compact_pages_freed",
    *(f"compact_runs_{reason.value}" for reason in Reason),
    "compact_cpu_us",
)
#: module parameters copied into the header's ``config`` of a mount recording
CONFIG_PARAMS = ("chain_size", "chain_rule", "compact_policy", "num_devices", "lz4_path")
#: lock_stat counters a sample carries as deltas since the previous sample
LOCK_DELTA_FIELDS = ("contentions", "wait_total_us", "acquisitions")
#: line types after the header
LINE_TYPES = ("sample", "event", "config", "end")
#: ``event`` names
EVENTS = ("device_added", "device_removed", "device_initialised", "device_reset")


class BadAttribute(ValueError):
    """An attribute file whose text does not have the kernel's shape."""


def _ints(name: str, text: str, fields: tuple[str, ...]) -> dict[str, int]:
    words = text.split()
    if len(words) != len(fields):
        raise BadAttribute(f"{name}: {len(words)} fields, expected {len(fields)}: {text!r}")
    try:
        return dict(zip(fields, (int(w) for w in words), strict=True))
    except ValueError:
        raise BadAttribute(f"{name}: not numbers: {text!r}") from None


def parse_stat_file(name: str, text: str) -> dict[str, int]:
    """mm_stat, io_stat, bd_stat, debug_stat or stat as a dict of named fields.

    debug_stat's first line is ``version: N`` (format_debug_stat); its number is the first
    field."""
    if name == "debug_stat":
        text = text.replace("version:", "", 1)
    return _ints(name, text, STAT_FILES[name])


def parse_comp_algorithm(text: str) -> str | None:
    """The selected algorithm of comp_algorithm's list (``lzo [lz4] zstd``)."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else None


def parse_classes(text: str) -> list[dict[str, int]]:
    """The rows of the debugfs classes table that hold anything (the header, the blank line
    and the Total row are dropped, and so are classes with every count zero: a pool has 255
    classes and most of them are empty; ``class``, ``size`` and ``pages_per_zspage`` make each
    kept row self-describing)."""
    rows = []
    for line in text.splitlines():
        words = line.split()
        if not words or not words[0].isdigit():
            continue
        row = _ints("classes", line, CLASS_FIELDS)
        if any(
            row[k]
            for k in (
                "almost_full",
                "almost_empty",
                "obj_allocated",
                "obj_used",
                "pages_used",
                "freeable",
            )
        ):
            rows.append(row)
    return rows


def parse_device(texts: Mapping[str, str | None]) -> dict[str, Any]:
    """One device's sample from the text of its files (`DEVICE_FILES` and ``classes``; a file
    missing from ``texts`` or None was not there, as ``classes`` of an uninitialised device).

    Keys: ``disksize``, ``initstate`` (ints), ``comp_algorithm`` (str or None),
    ``mm_stat``/``io_stat``/``bd_stat``/``debug_stat``/``stat`` (dicts of named ints) and
    ``classes`` (list of row dicts, empty without a pool)."""

    def need(name: str) -> str:
        text = texts.get(name)
        if text is None:
            raise BadAttribute(f"{name}: missing")
        return text

    out: dict[str, Any] = {
        "disksize": _ints("disksize", need("disksize"), ("v",))["v"],
        "initstate": _ints("initstate", need("initstate"), ("v",))["v"],
        "comp_algorithm": parse_comp_algorithm(need("comp_algorithm")),
    }
    for name in STAT_FILES:
        out[name] = parse_stat_file(name, need(name))
    classes = texts.get("classes")
    out["classes"] = parse_classes(classes) if classes is not None else []
    return out


def parse_vmstat(text: str) -> dict[str, int]:
    """MNT/proc/vmstat: ``name value`` lines."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise BadAttribute(f"vmstat: {line!r}")
        try:
            out[words[0]] = int(words[1])
        except ValueError:
            raise BadAttribute(f"vmstat: {line!r}") from None
    return out


_LOCK_ROW = re.compile(
    r"^\s*(\S.*):\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$"
)


def parse_lock_stat(text: str) -> dict[str, dict[str, float]]:
    """MNT/proc/lock_stat (allocator.locks.lock_stat_text, kernel format 0.4): per lock class
    ``contentions``, ``wait_min_us``, ``wait_max_us``, ``wait_total_us``, ``wait_avg_us``,
    ``acquisitions``.  Contention-point lines and the headers are skipped."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _LOCK_ROW.match(line)
        if m is None:
            continue
        out[m.group(1)] = {
            "contentions": int(m.group(2)),
            "wait_min_us": float(m.group(3)),
            "wait_max_us": float(m.group(4)),
            "wait_total_us": float(m.group(5)),
            "wait_avg_us": float(m.group(6)),
            "acquisitions": int(m.group(7)),
        }
    return out


def lock_stat_delta(
    prev: Mapping[str, Mapping[str, float]], cur: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """What each lock class did between two readings: `LOCK_DELTA_FIELDS` as differences and
    ``wait_max_us`` as read (a maximum has no difference).  Classes that did nothing are left
    out.  A counter that went down was cleared (``echo 0 > lock_stat``): its delta is the new
    value."""
    out: dict[str, dict[str, float]] = {}
    for name, row in cur.items():
        before = prev.get(name)
        cleared = before is None or any(row[k] < before[k] for k in LOCK_DELTA_FIELDS)
        delta: dict[str, float] = {}
        for k in LOCK_DELTA_FIELDS:
            d = row[k] if cleared or before is None else row[k] - before[k]
            delta[k] = round(d, 2) if isinstance(d, float) else d
        if delta["contentions"] or delta["acquisitions"]:
            delta["wait_max_us"] = row["wait_max_us"]
            out[name] = delta
    return out


def parse_daemon(texts: Mapping[str, str | None]) -> dict[str, int]:
    """The compaction daemon's counters (`DAEMON_PARAMS`) from their module parameters' text;
    a parameter the mount does not serve is left out."""
    out = {}
    for name in DAEMON_PARAMS:
        text = texts.get(name)
        if text is not None:
            out[name] = _ints(name, text, ("v",))["v"]
    return out


# ---- reading a record file -------------------------------------------------------------------
class RecordError(ValueError):
    """not a valid zramfs record file"""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        super().__init__(f"{os.fspath(path)}: {why}")


@dataclass
class Series:
    """The lines of one configuration of a record file (the whole file when it carries one)."""

    key: str | None
    config: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Record:
    """A validated record file: its header and its lines grouped by configuration."""

    path: str
    header: dict[str, Any]
    series: dict[str | None, Series]
    ended: dict[str, Any] | None  # the ``end`` line, None if the recorder was killed


def _check_number(path: str, lineno: int, obj: Mapping[str, Any], key: str) -> None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(path, f"line {lineno}: {key!r} is not a number")


def _check_sample(path: str, lineno: int, obj: Mapping[str, Any]) -> None:
    _check_number(path, lineno, obj, "t")
    devices = obj.get("devices")
    if not isinstance(devices, dict):
        raise RecordError(path, f"line {lineno}: sample without a devices object")
    for name, dev in devices.items():
        if not isinstance(dev, dict) or not isinstance(dev.get("mm_stat"), dict):
            raise RecordError(path, f"line {lineno}: device {name!r} without mm_stat")
        missing = [f for f in MM_STAT_FIELDS if not isinstance(dev["mm_stat"].get(f), int)]
        if missing:
            raise RecordError(path, f"line {lineno}: {name} mm_stat lacks {missing[0]}")
        if not isinstance(dev.get("classes", []), list):
            raise RecordError(path, f"line {lineno}: {name} classes is not a list")


def read_record(path: str | os.PathLike[str]) -> Record:
    """Read and validate a record file; `RecordError` (one line: path and why) if it is
    missing, empty, not JSON Lines, of another schema or version, or has a line that does
    not fit the schema (a line cut short by a killed recorder included)."""
    spath = os.fspath(path)
    try:
        with open(spath, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise RecordError(spath, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(spath, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not lines:
        raise RecordError(spath, "empty file")
    objs = []
    for lineno, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError:
            raise RecordError(spath, f"line {lineno}: not a JSON object (truncated?)") from None
        if not isinstance(obj, dict):
            raise RecordError(spath, f"line {lineno}: not a JSON object")
        objs.append(obj)
    header = objs[0]
    if header.get("schema") != SCHEMA:
        raise RecordError(spath, f"not a {SCHEMA} file (schema {header.get('schema')!r})")
    if header.get("version") != VERSION:
        raise RecordError(
            spath,
            f"{SCHEMA} version {header.get('version')!r}; this zramfs reads version {VERSION}",
        )
    if not isinstance(header.get("config"), dict):
        raise RecordError(spath, "header without a config object")
    series: dict[str | None, Series] = {}
    ended = None
    for lineno, obj in enumerate(objs[1:], 2):
        kind = obj.get("type")
        if kind not in LINE_TYPES:
            raise RecordError(spath, f"line {lineno}: unknown line type {kind!r}")
        if ended is not None:
            raise RecordError(spath, f"line {lineno}: a line after the end line")
        key = obj.get("config_key")
        if key is not None and not isinstance(key, str):
            raise RecordError(spath, f"line {lineno}: config_key is not a string")
        if kind == "end":
            ended = obj
            continue
        if kind == "config":
            if key is None or not isinstance(obj.get("config"), dict):
                raise RecordError(spath, f"line {lineno}: config line needs config_key and config")
            if key in series:
                raise RecordError(spath, f"line {lineno}: configuration {key!r} declared twice")
            series[key] = Series(key, {**header["config"], **obj["config"]})
            continue
        s = series.get(key)
        if s is None:
            if key is not None:
                raise RecordError(spath, f"line {lineno}: undeclared config_key {key!r}")
            s = series[None] = Series(None, dict(header["config"]))
        if kind == "sample":
            _check_sample(spath, lineno, obj)
            s.samples.append(obj)
        else:
            _check_number(spath, lineno, obj, "t")
            if obj.get("event") not in EVENTS:
                raise RecordError(spath, f"line {lineno}: unknown event {obj.get('event')!r}")
            s.events.append(obj)
    if not any(s.samples for s in series.values()):
        raise RecordError(spath, "no sample")
    return Record(spath, header, series, ended)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted name, value) of every scalar of a nested dict (lists are not descended)."""
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, name + ".")
        elif not isinstance(v, list):
            yield name, v
