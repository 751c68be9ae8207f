"""``--micro``: what each layer below the FUSE binding costs per 4 KiB call, in this process
(no FUSE, no kernel): codec, allocator, device, the fs callbacks over a zram device and over
the null backend's image, and device.write from 1 and 4 threads."""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from .common import MiB, log


def micro(args: argparse.Namespace) -> int:
    """Per-call cost of each layer a 4 KiB FUSE request goes through below the binding, measured
    in this process (no FUSE, no kernel): codec, allocator, device, the fs callbacks, and the
    null backend's work (its image alone and under the same fs callbacks); plus device.write
    from 1 and 4 threads."""
    from zramfs.cli import build_mount
    from zramfs.cli import make_parser as zramfs_parser
    from zramfs.codecs import get_codec

    rng = random.Random(1234)
    npages = 2048
    # like fio's buffer_compress_percentage=50 with a 4 KiB chunk: half random, half zeros
    pages = [rng.randbytes(2048) + bytes(2048) for _ in range(npages)]
    size = max(args.size, 64 * MiB)
    nblocks = size // 4096
    offsets = [rng.randrange(nblocks) * 4096 for _ in range(npages)]
    results: dict[str, dict[str, float]] = {}

    def best(fn: Callable[[int], object], reps: int = 5, n: int = npages) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            for i in range(n):
                fn(i)
            times.append((time.perf_counter_ns() - t0) / n / 1000)
        return min(times)

    for alg in ("lz4", "zstd"):
        r: dict[str, float] = {}
        codec = get_codec(alg)
        comp = [codec.compress(p) for p in pages]
        r["codec.compress"] = best(lambda i: codec.compress(pages[i]))
        r["codec.decompress"] = best(lambda i: codec.decompress(comp[i], 4096))
        ns = zramfs_parser().parse_args(
            ["mount", "/nonexistent", "--size", str(size), "--algorithm", alg, "--no-compact"]
        )
        tree, _daemon, ops_cls, registry = build_mount(ns)
        dev = registry.devices[0]
        pool = dev.pool
        assert pool is not None

        def malloc_write_free(i: int) -> None:
            h = pool.malloc(len(comp[i]))
            pool.write_object(h, comp[i])
            pool.free(h)

        handles = [pool.malloc(len(c)) for c in comp]  # a populated pool: no zspage churn
        for h, c in zip(handles, comp):
            pool.write_object(h, c)
        r["pool.malloc+write_object+free"] = best(malloc_write_free)
        r["pool.read_object"] = best(lambda i: pool.read_object(handles[i], len(comp[i])))
        for h in handles:
            pool.free(h)
        for off in range(0, size, 128 * 1024):  # prefill: every block holds an object
            dev.write(off, b"".join(pages[(off // 4096 + k) % npages] for k in range(32)))
        r["device.write 4K"] = best(lambda i: dev.write(offsets[i], pages[i]))
        r["device.read 4K"] = best(lambda i: dev.read(offsets[i], 4096))
        ops = ops_cls(tree)
        fi = SimpleNamespace(flags=os.O_RDWR, fh=0, direct_io=0, keep_cache=0)
        ops.open("/dev/zram0", fi)
        r["ZramFS.write 4K (fs+device)"] = best(
            lambda i: ops.write("/dev/zram0", pages[i], offsets[i], fi)
        )
        r["ZramFS.read 4K (fs+device)"] = best(
            lambda i: ops.read("/dev/zram0", 4096, offsets[i], fi)
        )
        r["ZramFS.getattr image"] = best(lambda i: ops.getattr("/dev/zram0", None), n=500)

        def threaded(nthreads: int) -> float:
            per = npages // nthreads

            def work(k: int) -> None:
                for i in range(k * per, (k + 1) * per):
                    dev.write(offsets[i], pages[i])

            ths = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
            t0 = time.perf_counter_ns()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            return (time.perf_counter_ns() - t0) / (per * nthreads) / 1000

        r["device.write 4K, 1 thread (wall µs/op)"] = min(threaded(1) for _ in range(3))
        r["device.write 4K, 4 threads (wall µs/op)"] = min(threaded(4) for _ in range(3))
        ops.release("/dev/zram0", fi)
        dev.reset()
        results[alg] = r
    # The null backend (the benchmark's nullfs system): the same ZramFS over a MemoryImage.
    ns = zramfs_parser().parse_args(
        ["mount", "/nonexistent", "--backend", "null", "--size", str(size)]
    )
    tree, _daemon, ops_cls, _registry = build_mount(ns)
    image = tree.device(0)
    ops = ops_cls(tree)
    fi = SimpleNamespace(flags=os.O_RDWR, fh=0, direct_io=0, keep_cache=0)
    ops.open("/dev/zram0", fi)
    results["null backend"] = {
        "MemoryImage.write 4K": best(lambda i: image.write(offsets[i], pages[i])),
        "MemoryImage.read 4K": best(lambda i: image.read(offsets[i], 4096)),
        "ZramFS.write 4K (fs+null image)": best(
            lambda i: ops.write("/dev/zram0", pages[i], offsets[i], fi)
        ),
        "ZramFS.read 4K (fs+null image)": best(
            lambda i: ops.read("/dev/zram0", 4096, offsets[i], fi)
        ),
    }
    ops.release("/dev/zram0", fi)
    lines = [
        "## In-process cost per call (µs, best of 5 × 2048 calls; no FUSE)",
        "",
        "| call | lz4 | zstd |",
        "|---|---|---|",
    ]
    for key in results["lz4"]:
        lines.append(f"| {key} | {results['lz4'][key]:.1f} | {results['zstd'][key]:.1f} |")
    for key, v in results["null backend"].items():
        lines.append(f"| null backend: {key} | {v:.2f} | |")
    md = "\n".join(lines) + "\n"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.json").write_text(json.dumps(results, indent=1))
    (out / "micro.md").write_text(md)
    log(md)
    return 0
