#!/usr/bin/env python3
"""In-process benchmark of the zram device engine (no FUSE).

Times are process CPU time (time.process_time), so a busy shared machine skews them less
than wall-clock time would.  Measures, per codec, 4 KiB block writes and reads per second on
mixed data (text, incompressible, half-and-half, zero and same-filled pages:
``bench.pages.mixed_pages``), the time per block spent outside the codec (the device run again
with the codec replaced by a lookup of its own results) and how much of that is the allocator
(malloc + write_object + free, read_object for the same objects), the per-slot metadata cost,
and RSS against mem_used_total for a 1 GiB device holding 512 MiB of mixed data.  `--quick`
shrinks everything for a smoke test.  128 KiB requests and A/B runs of two trees are
``scripts/bench.py device-128k`` and ``device-ab``.

    python3 scripts/bench_device.py            # full run
    python3 scripts/bench_device.py --quick    # a few seconds
    python3 scripts/bench_device.py --profile  # cProfile of the lz4 write+read hot path
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import sys
import time
from typing import Any

import allocator
import zramfs
from allocator import PhysicalMemory, Pool, buildmode
from bench.pages import PAGE, MiB, mixed_pages  # scripts/bench/ (this script's directory)
from zramfs import attrs, codecs
from zramfs.device import Registry
from zramfs.slots import SLOT_BYTES, SlotTable


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class ReplayCodec(codecs.Codec):
    """Returns the real codec's precomputed output for each page (a dict lookup): running
    the device with it measures everything the device does *outside* the codec."""

    name = "replay"

    def __init__(self, real: codecs.Codec, pages: list[bytes]) -> None:
        super().__init__()
        # keyed by the page objects the bench writes (bytes cache their hash: O(1) lookups)
        self.comp = {p: real.compress(p) for p in pages}
        self.page = bytes(PAGE)

    def compress(self, page: bytes) -> bytes:
        return self.comp[page]

    def decompress(self, data: bytes, out_len: int = PAGE) -> bytes:
        # a fresh object from the pool would need hashing to look up; the content does not
        # matter for timing (correctness was checked with the real codec)
        return self.page


def run_device(dev, pages: list[bytes], rounds: int) -> tuple[float, float]:
    """Best write and read CPU seconds for all pages (each round overwrites: frees included)."""
    n = len(pages)
    best_w = best_r = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.process_time()
        for i, p in enumerate(pages):
            dev.write(i * PAGE, p)
        t1 = time.process_time()
        for i in range(n):
            dev.read(i * PAGE, PAGE)
        t2 = time.process_time()
        best_w = min(best_w, t1 - t0)
        best_r = min(best_r, t2 - t1)
    return best_w, best_r


def bench_codec(name: str, pages: list[bytes], rounds: int) -> dict:
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 18))
    dev = reg.devices[0]
    attrs.store(dev, "comp_algorithm", name)
    attrs.store(dev, "disksize", str(len(pages) * PAGE))
    n = len(pages)
    best_w, best_r = run_device(dev, pages, rounds)
    for i, p in enumerate(pages[:64]):
        assert dev.read(i * PAGE, PAGE) == p
    mm = attrs.show(dev, "mm_stat").split()
    # the same work with the codec replaced by a lookup of its own results (the device's
    # parts are swapped in place: `meta` is untyped so a stand-in may take a part's place)
    meta: Any = dev._meta
    real = meta.comps[0]
    meta.comps[0] = ReplayCodec(real, pages)
    out_w, out_r = run_device(dev, pages, rounds)
    hcs = meta.pool.huge_class_size
    dev.reset()
    # the allocator's share: the same objects through a bare pool (overwrite = malloc + free)
    sizes = []
    for p in pages:
        if p != p[:8] * (PAGE // 8):
            c = len(real.compress(p))
            sizes.append(PAGE if c >= hcs else c)
    pool = Pool("bench", memory=PhysicalMemory(max_pages=1 << 18))
    blob = bytes(PAGE)
    handles = [pool.malloc(sz) for sz in sizes]
    aw = ar = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        new = []
        for sz, h in zip(sizes, handles):
            nh = pool.malloc(sz)
            pool.write_object(nh, blob[:sz])
            pool.free(h)
            new.append(nh)
        t1 = time.process_time()
        for sz, h in zip(sizes, new):
            pool.read_object(h, sz)
        t2 = time.process_time()
        handles = new
        aw, ar = min(aw, t1 - t0), min(ar, t2 - t1)
    for h in handles:
        pool.free(h)
    pool.destroy()
    return {
        "codec": name,
        "write_bps": n / best_w,
        "read_bps": n / best_r,
        "write_outside_us": out_w / n * 1e6,
        "read_outside_us": out_r / n * 1e6,
        "alloc_write_us": aw / n * 1e6,
        "alloc_read_us": ar / n * 1e6,
        # the engine: what is outside both the codec and the allocator.  Derived, not run
        # with a stand-in allocator: the compiled device calls the compiled Pool natively,
        # and its slot for the pool takes nothing else.
        "engine_write_us": (out_w - aw) / n * 1e6,
        "engine_read_us": (out_r - ar) / n * 1e6,
        "ratio": int(mm[0]) / max(1, int(mm[2])),
    }


def bench_memory(disksize: int, data_bytes: int, pages: list[bytes]) -> dict:
    gc.collect()
    before = rss_kib()
    reg = Registry(memory=PhysicalMemory(max_pages=(disksize // PAGE) + 1024))
    dev = reg.devices[0]
    attrs.store(dev, "disksize", str(disksize))
    n = data_bytes // PAGE
    t0 = time.process_time()
    rng = random.Random(5)
    for i in range(n):
        p = pages[i % len(pages)]
        if i >= len(pages) and p != p[:8] * (PAGE // 8):
            # vary reused pages so the pool holds distinct objects (zram does not dedupe anyway)
            p = rng.randbytes(8) + p[8:]
        dev.write(i * PAGE, p)
    elapsed = time.process_time() - t0
    pool = dev.pool
    assert pool is not None  # set by disksize
    pool.flush_free_work()
    gc.collect()
    after = rss_kib()
    mm = attrs.show(dev, "mm_stat").split()
    res = {
        "disksize": disksize,
        "data": n * PAGE,
        "orig_data_size": int(mm[0]),
        "compr_data_size": int(mm[1]),
        "mem_used_total": int(mm[2]),
        "rss_growth": (after - before) * 1024,
        "write_s": elapsed,
    }
    dev.reset()
    return res


def slot_cost(n: int) -> dict:
    gc.collect()
    before = rss_kib()
    t = SlotTable(n)
    mid = rss_kib()
    for i in range(n):  # touch every slot like written blocks do
        t.handle[i] = i + 1
        t.flags[i] = 100
        t.ac_time[i] = 7
    after = rss_kib()
    return {
        "declared": SLOT_BYTES,
        "untouched_kib": mid - before,
        "touched_bytes_per_slot": (after - before) * 1024 / n,
    }


def profile(pages: list[bytes]) -> None:
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 18))
    dev = reg.devices[0]
    attrs.store(dev, "disksize", str(len(pages) * PAGE))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2):
        for i, p in enumerate(pages):
            dev.write(i * PAGE, p)
        for i in range(len(pages)):
            dev.read(i * PAGE, PAGE)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    dev.reset()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (smoke test)")
    ap.add_argument("--profile", action="store_true", help="cProfile the lz4 hot path and exit")
    # lzo/lzo-rle (pure Python, ~100x slower) only on request: --codecs lzo-rle,lz4
    ap.add_argument(
        "--codecs", default=",".join(a for a in codecs.AVAILABLE if not a.startswith("lzo"))
    )
    args = ap.parse_args()
    nblocks = 1000 if args.quick else 8192
    rounds = 2 if args.quick else 3
    pages = mixed_pages(nblocks)
    if args.profile:
        profile(pages)
        return
    print(
        f"# zramfs device bench: {nblocks} mixed 4 KiB blocks, best of {rounds} (CPU time), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, allocator build "
        f"{allocator.build_mode()} {buildmode.why_pure('allocator') or ''}".rstrip()
        + f", device build {zramfs.build_mode()} {buildmode.why_pure('zramfs') or ''}".rstrip()
    )
    print("outside = device time with the codec replaced by a replay of its results;")
    print("allocator = bare-pool malloc+write+free / read of the same objects; engine = outside")
    print("less allocator (locks, slot table, counters, checks, the calls into the pool)")
    print(
        f"{'codec':8} {'write blk/s':>12} {'read blk/s':>11} {'wr outside µs':>14} {'(alloc)':>8} "
        f"{'(engine)':>9} {'rd outside µs':>14} {'(alloc)':>8} {'(engine)':>9} {'orig/mem_used':>14}"
    )
    for name in args.codecs.split(","):
        r = bench_codec(name, pages, rounds)
        print(
            f"{name:8} {r['write_bps']:12.0f} {r['read_bps']:11.0f} {r['write_outside_us']:14.2f} "
            f"{r['alloc_write_us']:8.2f} {r['engine_write_us']:9.2f} {r['read_outside_us']:14.2f} "
            f"{r['alloc_read_us']:8.2f} {r['engine_read_us']:9.2f} {r['ratio']:14.3f}"
        )
    sc = slot_cost(1 << 16 if args.quick else 1 << 20)
    print(
        f"\nslot metadata: {sc['declared']} bytes declared per slot, "
        f"{sc['touched_bytes_per_slot']:.1f} bytes RSS per touched slot, "
        f"{sc['untouched_kib']} KiB RSS for an untouched table"
    )
    disksize, data = (64 * MiB, 32 * MiB) if args.quick else (1 << 30, 512 * MiB)
    m = bench_memory(disksize, data, pages)
    print(
        f"\nmemory: disksize {m['disksize'] >> 20} MiB, wrote {m['data'] >> 20} MiB mixed "
        f"in {m['write_s']:.1f} s ({m['data'] / PAGE / m['write_s']:.0f} blk/s)"
    )
    print(
        f"  mm_stat orig_data_size {m['orig_data_size'] >> 20} MiB, compr_data_size "
        f"{m['compr_data_size'] / MiB:.1f} MiB, mem_used_total {m['mem_used_total'] / MiB:.1f} MiB"
    )
    print(
        f"  process RSS growth {m['rss_growth'] / MiB:.1f} MiB = "
        f"{m['rss_growth'] / max(1, m['mem_used_total']):.2f} x mem_used_total"
    )


if __name__ == "__main__":
    main()
