"""zram's sysfs attributes: parse, validate and format, with the kernel's errnos.

Owns the text side of `/sys/block/zram<N>/*` and `/sys/class/zram-control/*`
(docs/zram.md, "Parsing conventions" and "Attributes"): the kernel's parsing helpers
(memparse, kstrto*, kstrtobool, sysfs_streq, next_arg), one `Attr` per file with the
kernel's name, mode and order, and the exact output formats of mm_stat, io_stat, bd_stat,
debug_stat and the block layer's `stat`.  The device (`zramfs.device`) does the work; a store
here first parses the whole input, so bad input raises `ZramError` before anything changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import codecs, kparse
from .device import (
    RECOMP_HUGE,
    RECOMP_IDLE,
    U64,
    WB_HUGE,
    WB_IDLE,
    WB_INCOMPRESSIBLE,
    ZRAM_MAX_COMPS,
    CompParams,
    Registry,
    ZramDevice,
)
from .errors import DeviceBusy, InvalidInput, NameTooLong, NoSuchDevice, OutOfRange
from .kparse import (
    kstrtobool,
    kstrtoint,
    kstrtoll,
    kstrtou16,
    kstrtouint,
    kstrtoull,
    memparse,
    next_args,
    sysfs_streq,
)
from .slots import (
    FLUSH_IOS,
    PAGE_SHIFT,
    READ_IOS,
    READ_NS,
    READ_SECTORS,
    WRITE_IOS,
    WRITE_NS,
    WRITE_SECTORS,
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_WB,
)

RO = 0o444
WO = 0o200
RW = 0o644

ZRAM_MAX_ALGO_NAME_SZ = 128


# ---------------------------------------------------------------------------- kernel parsers
# One implementation for every control file of a mount: zramfs.kparse (re-exported here).
_strip_newline = kparse._strip_newline


def _require_value(key: str, val: str | None) -> str:
    if not val:  # "if (!val || !*val) return -EINVAL;"
        raise InvalidInput(f"{key}: missing value")
    return val


# ---------------------------------------------------------------------------- formats
def algorithm_list(selected: str | None) -> str:
    """zcomp_available_show(): every backend, the selected one bracketed, then a newline."""
    return (
        "".join(f"[{name}] " if name == selected else f"{name} " for name in codecs.AVAILABLE)
        + "\n"
    )


def format_mm_stat(dev: ZramDevice) -> str:
    s = dev.stats()
    return "%8d %8d %8d %8d %8d %8d %8d %8d %8d\n" % (
        s.pages_stored << PAGE_SHIFT,
        s.compr_data_size,
        s.mem_used_pages << PAGE_SHIFT,
        s.limit_pages << PAGE_SHIFT,
        s.max_used_pages << PAGE_SHIFT,
        s.same_pages,
        s.pages_compacted,
        s.huge_pages,
        s.huge_pages_since,
    )


def format_io_stat(dev: ZramDevice) -> str:
    s = dev.stats()
    # the invalid_io column is a literal, unpadded 0 since valid_io_request() went away
    return "%8d %8d 0 %8d\n" % (s.failed_reads, s.failed_writes, s.notify_free)


def format_bd_stat(dev: ZramDevice) -> str:
    s = dev.stats()
    return "%8d %8d %8d\n" % (s.bd_count, s.bd_reads, s.bd_writes)  # FOUR_K(): 1:1 on 4 KiB pages


def format_debug_stat(dev: ZramDevice) -> str:
    s = dev.stats()
    return "version: %d\n0 %8d\n" % (1, s.miss_free)  # writestall is gone: literal 0


def format_block_stat(dev: ZramDevice) -> str:
    """part_stat_show(): 17 fields.  Discards are not accounted by zram (handled before
    accounting); merges never happen; I/O is synchronous, so nothing is in flight when the
    file is read and io_ticks equals the time spent in requests."""
    c = dev.stats().counters
    rd_ms = c[READ_NS] // 1_000_000
    wr_ms = c[WRITE_NS] // 1_000_000
    fields = (
        c[READ_IOS],
        0,
        c[READ_SECTORS],
        rd_ms,
        c[WRITE_IOS],
        0,
        c[WRITE_SECTORS],
        wr_ms,
        0,
        rd_ms + wr_ms,
        rd_ms + wr_ms,
        0,
        0,
        0,
        0,
        c[FLUSH_IOS],
        0,
    )
    return " ".join("%8d" % v for v in fields) + "\n"


def format_block_state(dev: ZramDevice) -> str:
    """debugfs zram<N>/block_state (CONFIG_ZRAM_MEMORY_TRACKING, current format): one line per
    allocated slot — index, ac_time as seconds.micro (always .000000), and the flag letters
    s(ame) w(ritten back) h(uge) i(dle) r(ecompressed) n (incompressible), '.' when unset."""
    meta = dev._meta  # None until disksize (not initialized)
    if meta is None:
        return ""
    t = meta.table
    lines = []
    for index in np.flatnonzero(t.allocated_mask()).tolist():
        _, f, ac = dev.slot_state(index)
        lines.append(
            "%12d %12d.%06d %s%s%s%s%s%s\n"
            % (
                index,
                ac,
                0,
                "s" if f & ZRAM_SAME else ".",
                "w" if f & ZRAM_WB else ".",
                "h" if f & ZRAM_HUGE else ".",
                "i" if f & ZRAM_IDLE else ".",
                "r" if f & ZRAM_COMP_PRIORITY_MASK else ".",
                "n" if f & ZRAM_INCOMPRESSIBLE else ".",
            )
        )
    return "".join(lines)


# ---------------------------------------------------------------------------- stores
def _disksize_store(dev: ZramDevice, text: str) -> None:
    value, _ = memparse(text)
    if not value:
        raise InvalidInput(f"disksize: {text!r}")
    dev.set_disksize(value)


def _reset_store(dev: ZramDevice, text: str) -> None:
    if not kstrtou16(text, 10):
        raise InvalidInput("reset: write a positive value")
    dev.reset()


def _compact_store(dev: ZramDevice, text: str) -> None:
    dev.compact()


def _mem_limit_store(dev: ZramDevice, text: str) -> None:
    value, consumed = memparse(text)
    if consumed == 0:
        raise InvalidInput(f"mem_limit: {text!r}")
    dev.set_mem_limit(value)


def _mem_used_max_store(dev: ZramDevice, text: str) -> None:
    try:
        value = kstrtoull(text, 10)
    except (InvalidInput, OutOfRange):
        raise InvalidInput(f"mem_used_max: {text!r}") from None
    if value != 0:
        raise InvalidInput("mem_used_max: only 0 resets the peak")
    dev.reset_mem_used_max()


def _idle_store(dev: ZramDevice, text: str) -> None:
    if sysfs_streq(text, "all"):
        age = None
    else:
        try:
            age = kstrtouint(text, 0)
        except (InvalidInput, OutOfRange):
            raise InvalidInput(f"idle: {text!r}") from None
    dev.mark_idle(age)


def _max_comp_streams_show(dev: ZramDevice) -> str:
    return "%d\n" % (os.cpu_count() or 1)  # num_online_cpus(): one stream per CPU


def _max_comp_streams_store(dev: ZramDevice, text: str) -> None:
    return None  # 4.7 … 6.14: "writing to max_comp_stream will not take any effect"


def _parse_algorithm_name(text: str) -> str:
    size = len(text.encode("utf-8", "surrogateescape"))  # strlen() counts bytes
    if size >= ZRAM_MAX_ALGO_NAME_SZ:
        raise NameTooLong(f"algorithm name of {size} bytes")
    name = _strip_newline(text)
    if name not in codecs.AVAILABLE:
        raise InvalidInput(f"unknown compression algorithm {name!r}")
    return name


def _comp_algorithm_store(dev: ZramDevice, text: str) -> None:
    dev.set_comp_algorithm(_parse_algorithm_name(text), 0)


def _recomp_algorithm_show(dev: ZramDevice) -> str:
    return "".join(
        f"#{prio}: " + algorithm_list(dev.comp_algs[prio])
        for prio in range(1, ZRAM_MAX_COMPS)
        if dev.comp_algs[prio] is not None
    )


def _recomp_algorithm_store(dev: ZramDevice, text: str) -> None:
    algo = None
    prio = 1
    for key, val in next_args(text):
        val = _require_value(key, val)
        if key == "algo":
            algo = val
        elif key == "priority":
            prio = kstrtoint(val, 10)
    if algo is None:
        raise InvalidInput("recomp_algorithm: algo= is required")
    if not 1 <= prio < ZRAM_MAX_COMPS:
        raise InvalidInput(f"recomp_algorithm: priority {prio} not in 1..{ZRAM_MAX_COMPS - 1}")
    dev.set_comp_algorithm(_parse_algorithm_name(algo), prio)


def _algorithm_params_store(dev: ZramDevice, text: str) -> None:
    if dev.initialized:
        # 241f9005b1c8 "zram: do not permit params change after init": checked first
        raise DeviceBusy("Can't change algorithm params for initialized device")
    prio = 0
    params = CompParams()
    dict_path = None
    for key, val in next_args(text):
        val = _require_value(key, val)
        if key == "priority":
            prio = kstrtoint(val, 10)
        elif key == "algo":
            found = dev.find_priority(val)
            if found is None:
                raise InvalidInput(f"algorithm_params: {val!r} is not configured")
            prio = found
        elif key == "level":
            params.level = kstrtoint(val, 10)
        elif key == "dict":
            dict_path = val
        elif key == "deflate.winbits":
            params.winbits = kstrtoint(val, 10)
        # unknown keys are ignored, like the kernel's loop without an else branch
    if not 0 <= prio < ZRAM_MAX_COMPS:
        raise InvalidInput(f"algorithm_params: priority {prio} out of range")
    if dict_path is not None:
        try:
            with open(dict_path, "rb") as fh:
                params.dictionary = fh.read()
        except OSError:
            raise InvalidInput(f"algorithm_params: cannot read dictionary {dict_path!r}") from None
    dev.set_algorithm_params(prio, params)


def _backing_dev_show(dev: ZramDevice) -> str:
    return (dev.backing.path if dev.backing is not None else "none") + "\n"


def _backing_dev_store(dev: ZramDevice, text: str) -> None:
    dev.set_backing_dev(_strip_newline(text))


_WB_MODES = {
    "idle": WB_IDLE,
    "huge": WB_HUGE,
    "huge_idle": WB_IDLE | WB_HUGE,
    "incompressible": WB_INCOMPRESSIBLE,
}


def _wb_mode(word: str) -> int:
    try:
        return _WB_MODES[word]
    except KeyError:
        raise InvalidInput(f"writeback: unknown mode {word!r}") from None


def parse_writeback(dev: ZramDevice, text: str) -> list[tuple[int, int, int]]:
    """writeback_store's argument loop: a list of (mode, lo, hi) scans (docs/zram.md,
    "writeback")."""
    nr_pages = dev.nr_pages
    mode, lo, hi = 0, 0, nr_pages
    scans: list[tuple[int, int, int]] = []
    for key, val in next_args(text):
        if val is None:  # legacy valueless mode word: scan and stop parsing
            scans.append((_wb_mode(key), lo, hi))
            break
        if key == "type":
            scans.append((_wb_mode(_require_value(key, val)), lo, hi))
            break
        if key == "page_index":
            try:
                index = kstrtoull(_require_value(key, val), 10)
            except OutOfRange:
                raise OutOfRange(f"page_index {val} out of range") from None
            if index >= nr_pages:
                raise OutOfRange(f"page_index {index} >= {nr_pages}")
            lo, hi = index, index + 1
            scans.append((mode, lo, hi))
        elif key == "page_indexes":
            a, dash, b = _require_value(key, val).partition("-")
            if not dash:
                raise InvalidInput(f"page_indexes {val!r}: expected A-B")
            first, last = kstrtoull(a, 10), kstrtoull(b, 10)
            if first >= nr_pages or last >= nr_pages or first > last:
                raise OutOfRange(f"page_indexes {val!r} out of range")
            lo, hi = first, last + 1
            scans.append((mode, lo, hi))
    return scans


def _writeback_store(dev: ZramDevice, text: str) -> None:
    if not dev.initialized:
        raise InvalidInput(f"{dev.name} is not initialized")
    if dev.backing is None:
        raise NoSuchDevice(f"{dev.name} has no backing device")
    scans = parse_writeback(dev, text)
    if scans:
        dev.writeback(scans)


def _writeback_limit_store(dev: ZramDevice, text: str) -> None:
    try:
        value = kstrtoull(text, 10)
    except (InvalidInput, OutOfRange):
        raise InvalidInput(f"writeback_limit: {text!r}") from None
    dev.set_writeback_limit(value)


def _writeback_limit_enable_store(dev: ZramDevice, text: str) -> None:
    try:
        value = kstrtoull(text, 10)
    except (InvalidInput, OutOfRange):
        raise InvalidInput(f"writeback_limit_enable: {text!r}") from None
    dev.set_writeback_limit_enable(value != 0)


def _writeback_batch_size_store(dev: ZramDevice, text: str) -> None:
    # "if (kstrtouint(buf, 10, &val)) return -EINVAL;": overflow is EINVAL here, not ERANGE
    try:
        value = kstrtouint(text, 10)
    except (InvalidInput, OutOfRange):
        raise InvalidInput(f"writeback_batch_size: {text!r}") from None
    dev.set_writeback_batch_size(value)


def _compressed_writeback_store(dev: ZramDevice, text: str) -> None:
    dev.set_compressed_writeback(kstrtobool(text))


_RECOMP_TYPES = {"idle": RECOMP_IDLE, "huge": RECOMP_HUGE, "huge_idle": RECOMP_IDLE | RECOMP_HUGE}


def _recompress_store(dev: ZramDevice, text: str) -> None:
    mode, threshold, max_pages, algo, prio = 0, 0, U64, None, None
    for key, val in next_args(text):
        val = _require_value(key, val)
        if key == "type":
            mode = _RECOMP_TYPES.get(val, 0)  # an unrecognised type means "no filter"
        elif key == "max_pages":
            max_pages = kstrtoull(val, 10)
        elif key == "threshold":
            threshold = kstrtouint(val, 10)
        elif key == "algo":
            algo = val
        elif key == "priority":
            prio = kstrtoint(val, 10)
            if prio < 0:
                raise InvalidInput(f"recompress: priority {prio}")
    if not dev.initialized:
        raise InvalidInput(f"{dev.name} is not initialized")
    dev.recompress(mode=mode, threshold=threshold, max_pages=max_pages, algo=algo, prio=prio)


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Attr:
    name: str
    mode: int
    show: Callable[[ZramDevice], str] | None
    store: Callable[[ZramDevice, str], None] | None


def _attrs(*items: Attr) -> dict[str, Attr]:
    return {a.name: a for a in items}


#: sys/block/zram<N>/ in the order of zram_disk_attrs[] (max_comp_streams where 6.12 had
#: it), then the block layer's generic `size` and `stat`.
DEVICE_ATTRS: dict[str, Attr] = _attrs(
    Attr("disksize", RW, lambda d: "%d\n" % d.disksize, _disksize_store),
    Attr("initstate", RO, lambda d: "%d\n" % int(d.initialized), None),
    Attr("reset", WO, None, _reset_store),
    Attr("compact", WO, None, _compact_store),
    Attr("mem_limit", WO, None, _mem_limit_store),
    Attr("mem_used_max", WO, None, _mem_used_max_store),
    Attr("idle", WO, None, _idle_store),
    Attr("max_comp_streams", RW, _max_comp_streams_show, _max_comp_streams_store),
    Attr("comp_algorithm", RW, lambda d: algorithm_list(d.comp_algs[0]), _comp_algorithm_store),
    Attr("bd_stat", RO, format_bd_stat, None),
    Attr("backing_dev", RW, _backing_dev_show, _backing_dev_store),
    Attr("writeback", WO, None, _writeback_store),
    Attr("writeback_limit", RW, lambda d: "%d\n" % d.bd_wb_limit, _writeback_limit_store),
    Attr(
        "writeback_limit_enable",
        RW,
        lambda d: "%d\n" % int(d.wb_limit_enable),
        _writeback_limit_enable_store,
    ),
    Attr(
        "writeback_batch_size", RW, lambda d: "%d\n" % d.wb_batch_size, _writeback_batch_size_store
    ),
    Attr(
        "compressed_writeback",
        RW,
        lambda d: "%d\n" % int(d.compressed_writeback),
        _compressed_writeback_store,
    ),
    Attr("io_stat", RO, format_io_stat, None),
    Attr("mm_stat", RO, format_mm_stat, None),
    Attr("debug_stat", RO, format_debug_stat, None),
    Attr("recomp_algorithm", RW, _recomp_algorithm_show, _recomp_algorithm_store),
    Attr("recompress", WO, None, _recompress_store),
    Attr("algorithm_params", WO, None, _algorithm_params_store),
    Attr("size", RO, lambda d: "%d\n" % (d.disksize >> 9), None),
    Attr("stat", RO, format_block_stat, None),
)


def _lookup(name: str) -> Attr:
    try:
        return DEVICE_ATTRS[name]
    except KeyError:
        raise InvalidInput(f"no attribute {name!r}") from None


def show(dev: ZramDevice, name: str) -> str:
    """Read attribute `name` (EINVAL-free: write-only attributes raise PermissionError)."""
    attr = _lookup(name)
    if attr.show is None:
        raise PermissionError(f"{name} is write-only")
    return attr.show(dev)


def store(dev: ZramDevice, name: str, text: str | bytes) -> None:
    """Write attribute `name`; ZramError with the kernel's errno on bad input or state."""
    attr = _lookup(name)
    if attr.store is None:
        raise PermissionError(f"{name} is read-only")
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    attr.store(dev, text)


# ---------------------------------------------------------------------------- zram-control
def hot_add_show(registry: Registry) -> str:
    """Reading hot_add creates a device: "%d\\n" of its id."""
    return "%d\n" % registry.hot_add()


def hot_remove_store(registry: Registry, text: str | bytes) -> None:
    """Writing an id removes it: kstrtoint errors as is, EINVAL < 0, ENODEV, EBUSY."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    registry.hot_remove(kstrtoint(text, 10))


CONTROL_ATTRS: dict[str, int] = {"hot_add": 0o400, "hot_remove": WO}

__all__ = [
    "Attr",
    "DEVICE_ATTRS",
    "CONTROL_ATTRS",
    "show",
    "store",
    "hot_add_show",
    "hot_remove_store",
    "format_block_state",
    "memparse",
    "kstrtoull",
    "kstrtoll",
    "kstrtoint",
    "kstrtouint",
    "kstrtou16",
    "kstrtobool",
    "sysfs_streq",
    "next_args",
    "algorithm_list",
    "RO",
    "WO",
    "RW",
]
