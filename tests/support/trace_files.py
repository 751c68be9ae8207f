"""Trace files for the tests: a traced device with a workload, and records made by hand.

`Traced` runs a registry, its tree and a tracer writing a real trace (through the sink
process, as a mount does); `workload` gives it writes, discards, reads and a compaction.
The hand-made side frames record bodies as the sink does (docs/trace-format.md), so the
reader's checks can be met or broken one at a time.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import lz4.block as lz4_block

from zramfs import trace
from zramfs.device import Registry, ZramDevice
from zramfs.trace_hook import MountTracer
from zramfs.trace_writer import TraceWriter
from zramfs.tree import Tree

MOUNT = {
    "chain_size": 4,
    "chain_rule": "max-used",
    "compact_policy": "off",
    "compact_interval": 1000,
    "devices": 1,
}


def page(rnd: random.Random, words: list[bytes]) -> bytes:
    """A compressible page: a random run of a few 16-byte words, zero-padded."""
    n = rnd.randrange(1, 200)
    return (b"".join(rnd.choice(words) for _ in range(n)) + bytes(4096))[:4096]


class Traced:
    """A registry with one device, its tree, and a tracer writing `path`."""

    def __init__(self, path: Path, size: str = "16M") -> None:
        self.registry = Registry(num_devices=1)
        self.tree = Tree(self.registry)
        self.tracer = MountTracer(TraceWriter(path, dict(MOUNT)))
        self.tracer.attach(self.registry, self.tree)
        self.dev: ZramDevice = self.registry.devices[0]
        self.tracer.store(self.dev, "disksize", size)

    def attr(self, name: str, text: bytes) -> None:
        self.tree.write_file(self.tree.lookup(f"/sys/block/zram0/{name}"), text)

    def close(self) -> None:
        self.tracer.close()


def workload(t: Traced, seed: int = 1, n: int = 400) -> None:
    rnd = random.Random(seed)
    words = [rnd.randbytes(16) for _ in range(40)]
    pages = t.dev.disksize // 4096
    for i in range(n):
        t.dev.write(rnd.randrange(pages) * 4096, page(rnd, words))
        if i % 7 == 0:
            t.dev.discard(rnd.randrange(pages) * 4096, 4096 * rnd.randrange(1, 4))
        if i % 11 == 0:
            t.dev.read(rnd.randrange(pages) * 4096, 4096)
    t.attr("compact", b"1\n")


def record_ends(data: bytes) -> list[int]:
    """Where the header and each record end, by the framing alone (docs/trace-format.md)."""
    (hlen,) = struct.unpack_from("<I", data, 12)
    pos = 16 + hlen + 4
    ends = [pos]
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
        ends.append(pos)
    return ends


def hand_made(path: Path, bodies: list[bytes]) -> list[int]:
    """A trace file whose records are `bodies`, each framed by its length and CRC-32 as the
    sink frames them (docs/trace-format.md); returns the offset of each record's frame."""
    text = json.dumps({"format": "zramfs-trace", "version": trace.VERSION, "mount": MOUNT})
    head = trace._FILE_HEAD.pack(trace.MAGIC, trace.VERSION, 0, len(text)) + text.encode()
    out = bytearray(head + struct.pack("<I", zlib.crc32(head[8:])))
    starts = []
    for b in bodies:
        starts.append(len(out))
        out += trace._FRAME.pack(len(b), zlib.crc32(b)) + b
    path.write_bytes(bytes(out))
    return starts


def body(kind: int, t_ns: int, fields: bytes, dev: int = 0, flags: int = 0) -> bytes:
    return trace._BODY.pack(kind, flags, dev, t_ns) + fields


def write_new(t_ns: int, offset: int, codec: int, stored: bytes, raw: int = 4096) -> bytes:
    return body(trace.T_WRITE_NEW, t_ns, trace._WRITE_NEW.pack(offset, 0, codec, raw) + stored)


def write(t_ns: int, offset: int, length: int, ids: list[int], count: int | None = None) -> bytes:
    n = len(ids) if count is None else count
    fields = trace._WRITE.pack(offset, length, 0, n) + struct.pack(f"<{len(ids)}I", *ids)
    return body(trace.T_WRITE, t_ns, fields)


def lz4_stored(data: bytes) -> bytes:
    """`data` as an lz4 blob is stored (a raw block, no size header)."""
    return lz4_block.compress(data, store_size=False)
