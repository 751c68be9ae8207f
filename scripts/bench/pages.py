"""The page contents the in-process benchmarks write: `mixed_pages` (text, incompressible,
half-and-half, zero and same-filled pages; scripts/bench_device.py and ``device-128k``) and
`fio_like_pages` (half random, half zeros, like fio's ``buffer_compress_percentage=50``;
``device-ab``).  Seeded, so two trees or two runs write the same bytes."""

from __future__ import annotations

import os
import random
import sysconfig

PAGE = 4096
MiB = 1 << 20


def corpus(limit: int = 8 * MiB) -> bytes:
    """The standard library's top-level ``.py`` files concatenated, up to about `limit` bytes:
    real text for the text pages."""
    stdlib = sysconfig.get_path("stdlib")
    out: list[bytes] = []
    for name in sorted(os.listdir(stdlib)):
        if name.endswith(".py"):
            with open(os.path.join(stdlib, name), "rb") as fh:
                out.append(fh.read())
        if sum(map(len, out)) > limit:
            break
    return b"".join(out)


def mixed_pages(n: int, seed: int = 1) -> list[bytes]:
    """The mix: 50% text, 20% random, 10% half random/half text, 10% zero, 10% same-filled."""
    rng = random.Random(seed)
    text = corpus()
    pages = []
    for _ in range(n):
        k = rng.randrange(10)
        if k < 5:
            off = rng.randrange(0, len(text) - PAGE)
            pages.append(text[off : off + PAGE])
        elif k < 7:
            pages.append(rng.randbytes(PAGE))
        elif k < 8:
            off = rng.randrange(0, len(text) - PAGE)
            pages.append(rng.randbytes(PAGE // 2) + text[off : off + PAGE // 2])
        elif k < 9:
            pages.append(bytes(PAGE))
        else:
            pages.append(rng.getrandbits(64).to_bytes(8, "little") * (PAGE // 8))
    return pages


def fio_like_pages(n: int, rng: random.Random) -> list[bytes]:
    """`n` pages of 2 KiB random bytes then 2 KiB of zeros (≈ 2:1 with lz4, as fio's
    compressible buffers)."""
    return [rng.randbytes(PAGE // 2) + bytes(PAGE // 2) for _ in range(n)]
