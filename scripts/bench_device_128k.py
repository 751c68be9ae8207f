#!/usr/bin/env python3
"""CPU µs per 4 KiB page for 128 KiB ZramDevice.write/read requests (in process, no FUSE).

The 8192 mixed pages of bench_device.py as 256 requests of 128 KiB, best of 5 (process CPU
time), lz4 and zstd.  An optional argument is the root of another checkout to measure
(A/B against an older tree: `git archive REV | tar -x -C /tmp/base`).

    python3 scripts/bench_device_128k.py [ROOT]
"""
import gc
import os
import sys
import time

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, root); sys.path.insert(0, root + "/scripts")
from allocator import PhysicalMemory
from zramfs import attrs
from zramfs.device import Registry
from bench_device import mixed_pages  # noqa: E402
pages = mixed_pages(8192)
reqs = [b"".join(pages[i:i + 32]) for i in range(0, 8192, 32)]
for alg in ("lz4", "zstd"):
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 18))
    dev = reg.devices[0]
    attrs.store(dev, "comp_algorithm", alg)
    attrs.store(dev, "disksize", str(8192 * 4096))
    bw = br = float("inf")
    for _ in range(5):
        gc.collect()
        t0 = time.process_time()
        for k, r in enumerate(reqs):
            dev.write(k * 131072, r)
        t1 = time.process_time()
        for k in range(len(reqs)):
            dev.read(k * 131072, 131072)
        t2 = time.process_time()
        bw, br = min(bw, t1 - t0), min(br, t2 - t1)
    assert dev.read(0, 131072) == reqs[0] and dev.read(131072 * 100, 131072) == reqs[100]
    print(f"{alg}: 128K write {bw / 8192 * 1e6:.2f} µs/page ({8192 * 4096 / bw / 1e6:.0f} MB/s), "
          f"128K read {br / 8192 * 1e6:.2f} µs/page")
    dev.reset()
