"""The real-data image: real files of this machine concatenated into an image-sized file
(cached between runs), and writing it onto a device with timed 128 KiB O_DIRECT writes."""

from __future__ import annotations

import collections
import json
import mmap
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REALDATA_ROOTS = (
    os.path.join(sys.base_prefix, "lib", "python%d.%d" % sys.version_info[:2]),
    "/usr/lib/python3",
    "/usr/bin",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/include",
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/share/locale",
    "/etc",
)


def _walk(root: str) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_file() and not p.is_symlink():
                yield p


def build_realdata(path: Path, size: int) -> dict[str, Any]:
    """Concatenate real files of this machine, taking the next file from whichever root has given
    the fewest bytes so far (Python sources, binaries, shared libraries, headers, documentation),
    until ``size`` bytes; deterministic for a given machine. Returns a summary."""
    meta_path = path.with_suffix(".json")
    roots = [r for r in REALDATA_ROOTS if os.path.isdir(r)]
    if path.exists() and path.stat().st_size == size and meta_path.exists():
        cached: dict[str, Any] = json.loads(meta_path.read_text())
        if cached.get("roots") == roots:
            return cached
    walkers = [(r, _walk(r)) for r in roots]
    per_root: collections.Counter[str] = collections.Counter()
    files = 0
    written = 0
    seen: set[tuple[int, int]] = set()
    with open(path, "wb") as out:
        while written < size and walkers:
            # the root with the fewest bytes so far gives the next file: a balanced mix of
            # text, binaries, libraries and documentation rather than mostly big libraries
            root, it = min(walkers, key=lambda w: per_root[w[0]])
            try:
                p = next(it)
            except StopIteration:
                walkers.remove((root, it))
                continue
            try:
                st = p.stat()
                if (st.st_dev, st.st_ino) in seen or st.st_size == 0:
                    continue
                seen.add((st.st_dev, st.st_ino))
                data = p.read_bytes()[: size - written]
            except OSError:
                continue
            out.write(data)
            written += len(data)
            per_root[root] += len(data)
            files += 1
        if written < size:  # not enough files: repeat what we have (unlikely on a real system)
            out.flush()
            with open(path, "rb") as src:
                while written < size:
                    chunk = src.read(min(size - written, 1 << 20))
                    out.write(chunk)
                    written += len(chunk)
    zero_pages = 0
    with open(path, "rb") as f:
        while page := f.read(4096):
            if page.count(0) == len(page):
                zero_pages += 1
    meta: dict[str, Any] = {
        "roots": roots,
        "bytes": size,
        "files": files,
        "bytes_per_root": dict(per_root),
        "zero_pages": zero_pages,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def write_image(src: Path, dst: Path, size: int, shift: int = 0) -> dict[str, float]:
    """Copy ``src`` onto the device with 128 KiB O_DIRECT writes; per-write latencies timed.
    With ``shift`` the device's byte 0 gets the source's byte ``shift`` and the source wraps
    around at its end: every block gets other contents than an unshifted copy gave it (objects
    of other sizes, so the pool fragments; ``bench.py daemon-ab``'s real-rewrite-128k)."""
    bs = 128 * 1024
    buf = mmap.mmap(-1, bs)  # page-aligned, as O_DIRECT wants
    lat: list[int] = []
    fd = os.open(dst, os.O_WRONLY | os.O_DIRECT)
    try:
        with open(src, "rb", buffering=0) as f:
            f.seek(shift)
            t0 = time.perf_counter_ns()
            done = 0
            while done < size:
                n = f.readinto(buf)
                if shift and n < bs and done + n < size:  # wrap around to the source's start
                    f.seek(0)
                    n += f.readinto(memoryview(buf)[n : min(bs, size - done)])
                if not n:
                    break
                view = memoryview(buf)[:n]
                s = time.perf_counter_ns()
                off = 0
                while off < n:
                    off += os.pwrite(fd, view[off:], done + off)
                lat.append(time.perf_counter_ns() - s)
                view.release()
                done += n
            elapsed = (time.perf_counter_ns() - t0) / 1e9
    finally:
        os.close(fd)
        buf.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else 0.0
    return {
        "iops": len(lat) / elapsed,
        "mbps": done / elapsed / 1e6,
        "p99_us": p99,
        "bytes": done,
        "seconds": elapsed,
        "ios": float(len(lat)),
    }
