"""Test data and helpers shared by the device-engine tests (test_codecs, test_device*, test_attrs)."""

from __future__ import annotations

import hashlib
import os
import random
import sysconfig

PAGE = 4096

_TEXT: bytes | None = None


def corpus() -> bytes:
    """Real text: CPython's own stdlib sources (compress ~2-3x, like the kernel's test loads)."""
    global _TEXT
    if _TEXT is None:
        stdlib = sysconfig.get_path("stdlib")
        chunks = []
        for name in ("os.py", "typing.py", "argparse.py", "inspect.py", "subprocess.py"):
            try:
                with open(os.path.join(stdlib, name), "rb") as fh:
                    chunks.append(fh.read())
            except OSError:
                pass
        text = b"".join(chunks) or (b"zram test corpus line %d\n" * 1) * 10000
        _TEXT = text * max(1, (1 << 20) // len(text) + 1)
    return _TEXT


def text_page(rng: random.Random) -> bytes:
    t = corpus()
    off = rng.randrange(0, len(t) - PAGE)
    return t[off : off + PAGE]


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def same_page(word: int) -> bytes:
    return word.to_bytes(8, "little") * (PAGE // 8)


def half_page(rng: random.Random) -> bytes:
    """Half random, half text: compresses to roughly 2.3-2.8 KiB (a mid-size class)."""
    return rng.randbytes(PAGE // 2) + text_page(rng)[: PAGE // 2]


def mixed_page(rng: random.Random) -> bytes:
    k = rng.randrange(10)
    if k < 5:
        return text_page(rng)
    if k < 7:
        return random_page(rng)
    if k < 8:
        return half_page(rng)
    if k < 9:
        return same_page(0)
    return same_page(rng.getrandbits(64))


def device_hash(dev) -> str:
    """Hash of the whole device content (reads everything; small devices only)."""
    h = hashlib.sha256()
    step = 1 << 20
    for off in range(0, dev.disksize, step):
        h.update(dev.read(off, step))
    return h.hexdigest()
