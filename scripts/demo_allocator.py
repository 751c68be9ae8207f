#!/usr/bin/env python3
"""Demo of the zsmalloc port: fill, fragment, compact, migrate.

    python scripts/demo_allocator.py [--pages N] [--free-frac F] [--seed S] [--all-rows]

1. Compresses N synthetic 4 KiB pages (text, sparse, binary-like, random) with zlib and stores
   each compressed image in the pool, as zram would.
2. Frees a random fragmenting subset.
3. Prints the debugfs ``classes`` table, runs ``pool.compact()`` (zs_compact) and memory
   compaction (``memory.compact()``: page migration towards low PFNs), prints the table again
   and the pages freed / migrated, and checks that every surviving object is intact.
"""

from __future__ import annotations

import argparse
import random
import re
import time
import zlib

from allocator import Pool
from allocator.memory import PhysicalMemory

_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "kernel page memory swap compress zram object class"
)
WORDS = _TEXT.split()


def synthetic_page(rnd: random.Random, page_size: int) -> bytes:
    kind = rnd.random()
    if kind < 0.35:  # text
        out = " ".join(rnd.choice(WORDS) for _ in range(page_size // 4)).encode()
    elif kind < 0.55:  # sparse: mostly zeros with a few records
        b = bytearray(page_size)
        for _ in range(rnd.randint(1, 40)):
            off = rnd.randrange(page_size - 64)
            b[off : off + 64] = rnd.randbytes(64)
        out = bytes(b)
    elif kind < 0.85:  # binary-like: small integers, pointers
        out = b"".join(
            rnd.randint(0, 1 << rnd.choice((8, 16, 40))).to_bytes(8, "little")
            for _ in range(page_size // 8)
        )
    else:  # incompressible
        out = rnd.randbytes(page_size)
    return out[:page_size].ljust(page_size, b"\0")


def summary_rows(table: str, all_rows: bool) -> str:
    """The table as the kernel prints it; by default only classes that hold objects."""
    if all_rows:
        return table
    lines = table.split("\n")
    keep = [lines[0]]
    for line in lines[1:]:
        f = line.split()
        if not f or f[0] == "Total" or int(f[4]) > 0:
            keep.append(line)
    return "\n".join(keep)


def vmstat(memory: PhysicalMemory) -> dict[str, int]:
    out = {}
    for line in memory.vmstat_text().splitlines():
        m = re.match(r"(\S+)\s+(-?\d+)$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=20_000, help="pages to store (default 20000)")
    ap.add_argument("--free-frac", type=float, default=0.6, help="fraction freed (default 0.6)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--all-rows", action="store_true", help="print every class row, even empty ones"
    )
    args = ap.parse_args(argv)

    rnd = random.Random(args.seed)
    memory = PhysicalMemory(max_pages=1 << 18)
    pool = Pool("zram0", memory=memory)
    ps = memory.page_size

    t0 = time.perf_counter()
    # A few hundred distinct page images, reused: compressing is not what this demo measures.
    images = []
    for _ in range(300):
        raw = synthetic_page(rnd, ps)
        comp = zlib.compress(raw, 1)
        # zram stores a page uncompressed (in the huge class) when compression does not pay.
        images.append(comp if len(comp) < pool.huge_class_size else raw)
    live: dict[int, bytes] = {}
    stored_raw = 0
    for _ in range(args.pages):
        img = rnd.choice(images)
        h = pool.malloc(len(img))
        pool.write_object(h, img)
        live[h] = img
        stored_raw += ps
    filled_pages = pool.total_pages
    for h in rnd.sample(list(live), int(len(live) * args.free_frac)):
        pool.free(h)
        del live[h]
    t_fill = time.perf_counter() - t0

    print(
        f"stored {args.pages} pages ({stored_raw / 2**20:.1f} MiB raw) in {filled_pages} pool pages; "
        f"freed {args.free_frac:.0%} at random ({t_fill:.2f} s)"
    )
    print(
        f"\n== classes before compaction (total_pages {pool.total_pages}, "
        f"high_water PFN {memory.high_water}, freeable {pool.freeable_pages()})"
    )
    print(summary_rows(pool.classes_table(), args.all_rows))

    before_pages = pool.total_pages
    before_hw = memory.high_water
    vm0 = vmstat(memory)
    t1 = time.perf_counter()
    freed = pool.compact()
    t_compact = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = memory.compact()
    t_migrate = time.perf_counter() - t2
    vm1 = vmstat(memory)
    migrated = vm1.get("pgmigrate_success", 0) - vm0.get("pgmigrate_success", 0)
    failed = vm1.get("pgmigrate_fail", 0) - vm0.get("pgmigrate_fail", 0)

    print(
        f"\n== classes after pool.compact() and memory.compact() (total_pages {pool.total_pages}, "
        f"high_water PFN {memory.high_water}, freeable {pool.freeable_pages()})"
    )
    print(summary_rows(pool.classes_table(), args.all_rows))
    print(
        f"\npool.compact(): {freed} pages freed ({before_pages} -> {pool.total_pages}) in "
        f"{t_compact * 1e3:.0f} ms; pages_compacted {pool.stats.pages_compacted}"
    )
    print(
        f"memory.compact(): {migrated} pages migrated, {failed} failed, high water "
        f"{before_hw} -> {memory.high_water} in {t_migrate * 1e3:.0f} ms  ({result})"
    )

    bad = [h for h, img in live.items() if pool.read_object(h, len(img)) != img]
    print(
        f"verified {len(live)} surviving objects: {'all intact' if not bad else f'{len(bad)} CORRUPTED'}"
    )
    for h in live:
        pool.free(h)
    pool.destroy()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
