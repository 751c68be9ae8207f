#!/usr/bin/env python3
"""Single-threaded micro-benchmarks of the zsmalloc port.

    python scripts/bench_allocator.py            # full run (tens of seconds)
    python scripts/bench_allocator.py --quick    # smoke run (a few seconds)

Prints, each as the median of several runs:
  * malloc+free pairs/s and µs/pair, mixed sizes, on a pool in steady state
  * map+unmap (RO) of an object inside one frame and of an object spanning two frames (µs)
  * read_object / write_object of 1500 bytes (zram's per-page fast paths, µs)
  * compaction of a fragmented pool: pages freed and pages freed/s
  * memory: pool bytes (total_pages * page size) and the process RSS delta, against the same
    objects kept as Python ``bytes`` in a dict (measured with tracemalloc)
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

from allocator import MapMode, Pool, build_mode, buildmode
from allocator.memory import PhysicalMemory

TARGET_PAIR_US = 8.0
TARGET_MAP_US = 4.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mixed_sizes(rnd: random.Random, n: int) -> list[int]:
    """Sizes shaped like zram's compressed pages: many small-to-medium, a tail of huge ones."""
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.10:
            out.append(rnd.randint(20, 200))  # highly compressible
        elif r < 0.75:
            out.append(rnd.randint(600, 2400))  # typical lz4/zstd output
        elif r < 0.92:
            out.append(rnd.randint(2400, 3400))  # poorly compressible
        else:
            out.append(4096)  # incompressible, stored huge
    return out


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def bench_malloc_free(n_pairs: int, live: int, seed: int) -> float:
    """µs per malloc+free pair with `live` objects resident (steady state)."""
    rnd = random.Random(seed)
    pool = Pool("bench-mf", memory=PhysicalMemory(max_pages=1 << 18))
    sizes = mixed_sizes(rnd, n_pairs + live)
    handles = [pool.malloc(s) for s in sizes[:live]]
    victims = [rnd.randrange(live) for _ in range(n_pairs)]
    malloc, free = pool.malloc, pool.free
    t0 = time.perf_counter()
    for i in range(n_pairs):
        h = malloc(sizes[live + i])
        j = victims[i]
        free(handles[j])
        handles[j] = h
    dt = time.perf_counter() - t0
    for h in handles:
        free(h)
    pool.destroy()
    return dt / n_pairs * 1e6


def _find_objects(pool: Pool) -> tuple[int, int]:
    """An in-frame object (class 112) and a spanning one (class 48, index 85; docs/zsmalloc.md,
    edge case "Objects that span two pages").

    A fresh zspage hands out indices 0, 1, 2, ... (edge case "The freelist is LIFO"), so the
    86th object of size 40 in a fresh pool is index 85 of the first class-48 zspage, which
    starts at byte 4080 and spans.
    """
    in_frame = pool.malloc(100)
    span = 0
    for _ in range(86):
        span = pool.malloc(40)
    loc = getattr(pool, "obj_location", None)
    if loc is not None:  # the pool's debug helper: (pfn, obj_idx, offset in the frame)
        _, _, off = loc(span)
        assert off + 48 > pool.memory.page_size, f"object at offset {off} does not span"
        _, _, off = loc(in_frame)
        assert off + 112 <= pool.memory.page_size
    return in_frame, span


def bench_map(n: int, spanning: bool) -> float:
    pool = Pool("bench-map", memory=PhysicalMemory(max_pages=1 << 12))
    in_frame, span = _find_objects(pool)
    h = span if spanning else in_frame
    pool.write_object(h, b"x" * 40)
    mo = pool.map_object
    ro = MapMode.RO
    t0 = time.perf_counter()
    for _ in range(n):
        with mo(h, ro) as buf:
            buf[0]
    dt = time.perf_counter() - t0
    pool.destroy()
    return dt / n * 1e6


def bench_read_write(n: int, write: bool) -> float:
    """µs per read_object (or write_object) of 1500 bytes, cycling over 64 live objects."""
    pool = Pool("bench-rw", memory=PhysicalMemory(max_pages=1 << 12))
    handles = [pool.malloc(1500) for _ in range(64)]
    data = (bytes(range(256)) * 6)[:1500]
    for h in handles:
        pool.write_object(h, data)
    seq = [handles[i % 64] for i in range(n)]
    t0 = time.perf_counter()
    if write:
        wr = pool.write_object
        for h in seq:
            wr(h, data)
    else:
        rd = pool.read_object
        for h in seq:
            rd(h, 1500)
    dt = time.perf_counter() - t0
    for h in handles:
        pool.free(h)
    pool.destroy()
    return dt / n * 1e6


def build_fragmented(
    n_objs: int, free_frac: float, seed: int
) -> tuple[Pool, PhysicalMemory, dict[int, int]]:
    rnd = random.Random(seed)
    mem = PhysicalMemory(max_pages=1 << 18)
    pool = Pool("bench-frag", memory=mem)
    live: dict[int, int] = {}
    for s in mixed_sizes(rnd, n_objs):
        live[pool.malloc(s)] = s
    for h in rnd.sample(list(live), int(n_objs * free_frac)):
        pool.free(h)
        del live[h]
    return pool, mem, live


def bench_compact(n_objs: int, seed: int) -> tuple[int, float]:
    pool, _mem, _live = build_fragmented(n_objs, 0.6, seed)
    t0 = time.perf_counter()
    freed = pool.compact()
    dt = time.perf_counter() - t0
    pool.destroy()
    return freed, dt


def bench_memory(n_objs: int, seed: int) -> dict[str, float]:
    rnd = random.Random(seed)
    sizes = mixed_sizes(rnd, n_objs)
    payload = bytes(rnd.getrandbits(8) for _ in range(4096))
    gc.collect()
    rss0 = rss_bytes()
    mem = PhysicalMemory(max_pages=1 << 18)
    pool = Pool("bench-mem", memory=mem)
    handles = []
    for s in sizes:
        h = pool.malloc(s)
        pool.write_object(h, payload[:s])
        handles.append(h)
    gc.collect()
    rss1 = rss_bytes()
    pool_bytes = pool.total_pages * mem.page_size
    payload_bytes = sum(sizes)

    tracemalloc.start()
    snap0 = tracemalloc.get_traced_memory()[0]
    mv = memoryview(payload)
    d = {i: bytes(mv[:s]) for i, s in enumerate(sizes)}  # a fresh bytes object per entry
    gc.collect()
    dict_bytes = tracemalloc.get_traced_memory()[0] - snap0
    tracemalloc.stop()
    del d
    for h in handles:
        pool.free(h)
    pool.destroy()
    return {
        "objects": n_objs,
        "payload": payload_bytes,
        "pool": pool_bytes,
        "rss_delta": rss1 - rss0,
        "dict": dict_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (median)")
    args = ap.parse_args(argv)
    q = args.quick
    runs = args.runs or (3 if q else 7)
    n_pairs = 3_000 if q else 100_000
    n_map = 5_000 if q else 200_000
    n_frag = 3_000 if q else 60_000
    n_mem = 3_000 if q else 50_000

    why = buildmode.why_pure("allocator")
    print(
        f"zsmalloc port benchmark ({'quick' if q else 'full'}; median of {runs} runs; "
        f"Python {sys.version.split()[0]}; allocator build {build_mode()}"
        f"{f' ({why})' if why else ''})"
    )
    # Memory first, while the process heap is fresh (later runs leave freed arenas behind
    # that would absorb the pool's Python-side metadata and hide it from the RSS delta).
    m = bench_memory(n_mem, seed=7)
    print(f"memory ({m['objects']:.0f} objects, {m['payload'] / 2**20:.1f} MiB payload):")
    print(
        f"  pool total_pages*page_size : {m['pool'] / 2**20:8.2f} MiB  "
        f"({m['pool'] / m['payload']:.3f} x payload)"
    )
    print(
        f"  process RSS delta          : {m['rss_delta'] / 2**20:8.2f} MiB  "
        f"(pool pages + allocator metadata)"
    )
    print(
        f"  dict of bytes (tracemalloc): {m['dict'] / 2**20:8.2f} MiB  "
        f"({m['dict'] / m['payload']:.3f} x payload)"
    )
    us = median_of(runs, lambda: bench_malloc_free(n_pairs, live=2_000, seed=1))
    flag = "ok" if us <= TARGET_PAIR_US else "ABOVE TARGET"
    print(
        f"malloc+free      : {1e6 / us:12,.0f} pairs/s  {us:8.2f} µs/pair   "
        f"(target <= {TARGET_PAIR_US:.0f} µs: {flag})"
    )
    for label, spanning in (("map+unmap RO in-frame ", False), ("map+unmap RO spanning ", True)):
        us = median_of(runs, lambda: bench_map(n_map, spanning))
        flag = "ok" if us <= TARGET_MAP_US else "ABOVE TARGET"
        print(f"{label}: {us:8.2f} µs   (target <= {TARGET_MAP_US:.0f} µs: {flag})")
    for label, write in (("read_object 1500 B  ", False), ("write_object 1500 B ", True)):
        us = median_of(runs, lambda: bench_read_write(n_map, write))
        print(f"{label}: {us:8.2f} µs")
    results = [bench_compact(n_frag, seed=s) for s in range(runs)]
    freed = statistics.median(r[0] for r in results)
    secs = statistics.median(r[1] for r in results)
    rate = statistics.median(r[0] / r[1] if r[1] else 0.0 for r in results)
    print(
        f"compaction       : {freed:8.0f} pages freed in {secs * 1e3:8.1f} ms  "
        f"({rate:,.0f} pages/s; {n_frag} objects, 60% freed at random)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
