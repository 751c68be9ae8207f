"""Sizes on the command line: the one parser of ``1G``/``512M``/``64k``/``4096`` for zramfs
and its scripts (``zramfs mount --size``, ``scripts/bench.py --size``, ``scripts/nullfs.py``).

Owns only the text → bytes rule: memparse-like binary multiples.  Page alignment is left to
the consumer, as the kernel's disksize_store rounds after memparse.
"""

from __future__ import annotations

import argparse

__all__ = ["parse_size"]


def parse_size(text: str) -> int:
    """``memparse``-like: 1G, 512M, 64k, 4096, 0x1000, 1.5G, 1GiB (binary multiples).

    Raises ``argparse.ArgumentTypeError`` on anything else or a negative size, so it serves
    directly as an argparse ``type`` (the error message is the parser's).
    """
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for i, suffix in enumerate("KMGTPE", start=1):
        if t.endswith(suffix):
            mult, t = 1024**i, t[:-1]
            break
    try:
        value = float(t) if "." in t else int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}")
    return int(value * mult)
