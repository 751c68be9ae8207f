"""The mount's non-FUSE pieces on a real Registry (no /dev/fuse needed): the compaction daemon
(threshold, single flight, start/stop, knobs as module parameters, mm_stat pages_compacted),
and the tree (lookup, listing, open permission rule, control-file reads and writes, errnos).
The compaction policies themselves (shrinker, pressure sources, parsing) are in
tests/test_daemon_policy.py.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from typing import Any

import pytest

from zramfs import attrs
from zramfs.daemon import (
    CompactionDaemon,
    CompactionPolicy,
    ModuleParameter,
    PolicyKind,
    parse_bool,
    parse_uint,
)
from zramfs.device import Registry
from zramfs.tree import Kind, Tree

PAGE = 4096
THRESHOLD = PolicyKind.THRESHOLD


def threshold(pages: int, interval_ms: int = 1000) -> CompactionPolicy:
    return CompactionPolicy(THRESHOLD, threshold_pages=pages, interval_ms=interval_ms)


def fragmented_registry(pages: int = 512) -> Registry:
    """A device whose pool has sparse zspages: write pages of varied sizes, free every other."""
    reg = Registry(num_devices=1)
    dev = reg.devices[0]
    attrs.store(dev, "disksize", str(pages * PAGE))
    rng = random.Random(7)
    for i in range(pages):
        # Half random, half zeros in each page: compresses to ~half a page (a mid size class).
        page = rng.randbytes(rng.randrange(1200, 2400))
        dev.write(i * PAGE, page + bytes(PAGE - len(page)))
    for i in range(0, pages, 2):
        dev.discard(i * PAGE, PAGE)
    return reg


def test_parse_helpers():
    assert parse_bool("Y\n") and parse_bool("1") and not parse_bool("n") and not parse_bool("off")
    assert parse_uint("0x10") == 16 and parse_uint("12\n") == 12
    for bad in ("", "-1", "abc", "1 2"):
        with pytest.raises(OSError) as info:
            parse_uint(bad)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        parse_uint(str(1 << 40))
    assert info.value.errno == errno.ERANGE


def test_scan_compacts_past_threshold_and_counts_in_mm_stat():
    reg = fragmented_registry()
    dev = reg.devices[0]
    pool = dev.pool
    assert pool is not None
    freeable = pool.freeable_pages()
    assert freeable > 0
    daemon = CompactionDaemon(reg, threshold(freeable + 1))
    assert daemon.scan_once() == 0 and daemon.stats.runs == 0  # below the threshold
    daemon.set_policy("off")
    assert daemon.scan_once() == 0  # disabled
    daemon.set_policy(f"threshold:{freeable}")
    freed = daemon.scan_once()
    assert freed > 0 and daemon.stats.runs == 1 and daemon.stats.pages_freed == freed
    assert int(attrs.show(dev, "mm_stat").split()[6]) == freed  # pages_compacted
    assert pool.freeable_pages() < freeable


def test_single_flight():
    reg = fragmented_registry(64)
    daemon = CompactionDaemon(reg, threshold(1))
    with daemon._flight:  # a scan in progress elsewhere
        assert daemon.scan_once() == 0
    assert daemon.stats.scans == 0


def test_thread_runs_and_stops_promptly():
    reg = fragmented_registry()
    daemon = CompactionDaemon(reg, threshold(1, interval_ms=10))
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.stats.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert daemon.stats.runs >= 1
    finally:
        t0 = time.monotonic()
        daemon.stop()
    assert not daemon.running and time.monotonic() - t0 < 2


def test_uninitialised_and_reset_devices_are_skipped():
    reg = Registry(num_devices=2)
    daemon = CompactionDaemon(reg, threshold(0, interval_ms=0))
    assert daemon.scan_once() == 0  # no pools at all
    daemon.start()
    try:
        # Reset and re-initialise under the running daemon: it must neither crash nor hold up.
        for _ in range(20):
            attrs.store(reg.devices[1], "disksize", "1M")
            reg.devices[1].write(0, os.urandom(PAGE * 4))
            attrs.store(reg.devices[1], "reset", "1")
        assert daemon.running
    finally:
        daemon.stop()


def test_parameters_are_the_knobs():
    reg = Registry(num_devices=1)
    daemon = CompactionDaemon(reg)
    params: dict[str, Any] = {p.name: p for p in daemon.parameters()}  # .set: all writable
    assert params["compact_policy"].get() == "shrinker"
    assert params["compact_enabled"].get() == "Y"
    params["compact_enabled"].set("N\n")
    assert daemon.policy.enabled is False and params["compact_policy"].get() == "off"
    params["compact_interval_ms"].set("25")
    assert daemon.policy.interval_ms == 25
    params["compact_threshold_pages"].set("7")  # while off: what Y brings back
    assert daemon.policy.threshold_pages == 7 and params["compact_policy"].get() == "off"
    params["compact_enabled"].set("Y")
    assert params["compact_policy"].get() == "threshold:7"
    assert params["compact_runs"].set is None and params["compact_runs"].mode == 0o444


# ---- the tree, without FUSE --------------------------------------------------------------------
def make_tree() -> Tree:
    reg = Registry(num_devices=1)
    extra = ModuleParameter("chain_size", 0o444, lambda: "4")
    return Tree(reg, [extra, *CompactionDaemon(reg).parameters()])


def expect(code: int, fn, *args, **kwargs):
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, info.value


def test_tree_lookup_and_listing():
    t = make_tree()
    assert t.lookup("/").is_dir and t.lookup("//sys///block/").is_dir
    assert t.lookup("/dev/zram0").kind is Kind.IMAGE
    node = t.lookup("/sys/block/zram0/mm_stat")
    assert node.kind is Kind.ATTR and node.mode == 0o444 and node.dev_id == 0
    assert t.listdir("/dev") == ["zram0"]
    assert set(attrs.DEVICE_ATTRS) <= set(t.listdir("/sys/block/zram0"))
    assert t.listdir("/sys/kernel/debug/zsmalloc") == []
    expect(errno.ENOENT, t.lookup, "/dev/zram1")
    expect(errno.ENOENT, t.lookup, "/dev/zram00")  # no aliases
    expect(errno.ENOENT, t.lookup, "/sys/block/zram0/nope")
    expect(errno.ENOTDIR, t.lookup, "/proc/vmstat/x")
    expect(errno.ENOENT, t.lookup, "/sys/kernel/debug/zsmalloc/zram0/classes")
    attrs.store(t.registry.devices[0], "disksize", "1M")
    assert t.lookup("/sys/kernel/debug/zsmalloc/zram0/classes").kind is Kind.CLASSES
    assert t.image_size(0) == 1 << 20


def test_tree_open_rule_and_control_files():
    t = make_tree()
    wo = t.lookup("/sys/block/zram0/reset")
    ro = t.lookup("/sys/block/zram0/initstate")
    expect(errno.EACCES, t.check_open, wo, read=True, write=False)
    expect(errno.EACCES, t.check_open, ro, read=False, write=True)
    t.check_open(wo, read=False, write=True)
    t.check_open(ro, read=True, write=False)
    expect(errno.EISDIR, t.check_open, t.lookup("/dev"), read=False, write=True)
    assert t.read_file(t.lookup("/sys/class/zram-control/hot_add")) == b"1\n"
    assert t.listdir("/dev") == ["zram0", "zram1"]
    assert t.write_file(t.lookup("/sys/class/zram-control/hot_remove"), b"1\n") == 2
    expect(errno.ENODEV, t.write_file, t.lookup("/sys/class/zram-control/hot_remove"), b"5")
    expect(errno.EINVAL, t.write_file, t.lookup("/sys/block/zram0/disksize"), b"junk")
    expect(errno.EINVAL, t.write_file, t.lookup("/proc/sys/vm/compact_memory"), b"0")
    t.write_file(t.lookup("/proc/sys/vm/compact_memory"), b"1\n")
    assert b"pgmigrate_success" in t.read_file(t.lookup("/proc/vmstat"))
    assert t.read_file(t.lookup("/sys/module/zramfs/parameters/chain_size")) == b"4\n"
    expect(errno.EACCES, t.write_file, t.lookup("/sys/module/zramfs/parameters/chain_size"), b"8")
    t.write_file(t.lookup("/proc/lock_stat"), b"0\n")
    assert t.read_file(t.lookup("/proc/lock_stat"))


def test_tree_concurrent_hot_add_gives_distinct_ids():
    t = make_tree()
    node = t.lookup("/sys/class/zram-control/hot_add")
    ids: list[int] = []
    guard = threading.Lock()

    def add() -> None:
        for _ in range(10):
            value = int(t.read_file(node))
            with guard:
                ids.append(value)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(ids) == list(range(1, 41))
