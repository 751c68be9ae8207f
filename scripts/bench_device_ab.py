#!/usr/bin/env python3
"""CPU µs per request of the hot device paths, in process (no FUSE), for A/B between trees.

fio-like pages (each half random, half zeros, ≈ 2:1 with lz4) on a 16 MiB lz4 device filled by
128 KiB writes; then, best of 7 (process CPU time): 20,000 random 4 KiB overwrites, 20,000
random 4 KiB reads, and the whole device read in 128 KiB requests (µs per page).  The optional
argument is the root of the tree to measure; run two trees alternately and compare
(`git archive REV | tar -x -C /tmp/base`):

    python3 scripts/bench_device_ab.py /tmp/base; python3 scripts/bench_device_ab.py
"""
import gc
import os
import random
import sys
import time

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, root)
from allocator import PhysicalMemory  # noqa: E402
from zramfs import attrs  # noqa: E402
from zramfs.device import Registry  # noqa: E402

PAGE = 4096
NPAGES = 4096
rnd = random.Random(1)
pages = [rnd.randbytes(PAGE // 2) + bytes(PAGE // 2) for _ in range(NPAGES)]
reqs = [b"".join(pages[i:i + 32]) for i in range(0, NPAGES, 32)]
dev = Registry(memory=PhysicalMemory(max_pages=1 << 16)).devices[0]
attrs.store(dev, "comp_algorithm", "lz4")
attrs.store(dev, "disksize", str(NPAGES * PAGE))
for k, r in enumerate(reqs):
    dev.write(k * len(r), r)
idx = [rnd.randrange(NPAGES) for _ in range(20000)]
gc.freeze()   # as the serving process does (zramfs.cli._tune_gc)
w = r4 = r128 = float("inf")
for _ in range(7):
    t0 = time.process_time()
    for k, i in enumerate(idx):
        dev.write(i * PAGE, pages[k % NPAGES])
    t1 = time.process_time()
    for i in idx:
        dev.read(i * PAGE, PAGE)
    t2 = time.process_time()
    for k in range(len(reqs)):
        dev.read(k * 32 * PAGE, 32 * PAGE)
    t3 = time.process_time()
    w, r4, r128 = min(w, t1 - t0), min(r4, t2 - t1), min(r128, t3 - t2)
expect = {i: pages[i] for i in range(NPAGES)}
expect.update({i: pages[k % NPAGES] for k, i in enumerate(idx)})
assert all(dev.read(i * PAGE, PAGE) == expect[i] for i in range(NPAGES)), "data check failed"
print(f"{root}: 4 KiB write {w / len(idx) * 1e6:.2f} µs, 4 KiB read {r4 / len(idx) * 1e6:.2f} µs, "
      f"128 KiB read {r128 / NPAGES * 1e6:.2f} µs/page")
