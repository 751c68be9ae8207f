"""The trace sink: the process that turns a mount's records into the trace file.

Owns `RecordEncoder` (producer tuples -> framed records: a write's page contents named by
SHA-1, stored once as lz4 BLOB records, the WRITE naming them; every record framed with its
length and CRC-32, docs/trace-format.md) and the sink process `zramfs.trace.TraceWriter`
starts: ``python -m zramfs.trace_sink FILE FLUSH_INTERVAL``.  It reads length-prefixed
marshal'd tuples from stdin and appends their records to FILE (the writer wrote the header),
flushing at least every FLUSH_INTERVAL seconds while records arrive; at end of input (the
writer closed the pipe, or its process died) it writes what it has, fsyncs and exits 0.

Why a process: hashing and compressing every new page costs ~10 µs of CPU; in a thread of
the mount it competed with the FUSE threads for the GIL (the 4 KiB QD1 write job ran at
0.77x untraced); here only the pipe write (GIL released) is left in the mount.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import os
import select
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

import lz4.block

from . import codecs
from .trace import (
    _BGCOMPACT,
    _BLOB,
    _BODY,
    _CONTROL,
    _DISCARD,
    _FRAME,
    _PIPE_LEN,
    _READ,
    _WRITE,
    _WRITE_NEW,
    _WRITE_ONE,
    CODEC_LZ4,
    CODEC_RAW,
    F_OVERLAP,
    PAGE_SIZE,
    T_BGCOMPACT,
    T_BLOB,
    T_CONTROL,
    T_DISCARD,
    T_END,
    T_FLUSH,
    T_READ,
    T_WRITE,
    T_WRITE_NEW,
    crc32,
)


def _page_compressor() -> Callable[[bytes], bytes]:
    """How the sink lz4-compresses a page (at most PAGE_SIZE bytes) into a raw lz4 block.

    LZ4_compress_fast, as the device's lz4 codec calls it (from C in the compiled build,
    2.0 against 3.1 µs a page for python-lz4's streaming call), where it is bound; else
    python-lz4.  Either output is a plain lz4 block, which is what the format stores."""
    if codecs.lz4_binding() != "none":
        return codecs.get_codec("lz4").compress
    return functools.partial(lz4.block.compress, store_size=False)


class RecordEncoder:
    """Producer tuples to framed trace records, page contents deduplicated."""

    def __init__(self) -> None:
        self.compress = _page_compressor()
        self.blobs: dict[bytes, int] = {}
        self.records = 0
        self.overlapping = 0
        self.bytes_in = 0  # page bytes the writes carried

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blobs": len(self.blobs),
            "overlapping": self.overlapping,
            "page_bytes": self.bytes_in,
        }

    def _frame(self, body: bytes, out: Any) -> None:
        out.write(_FRAME.pack(len(body), crc32(body)) + body)

    def _blob(self, chunk: bytes, t_ns: int, dev: int, out: Any) -> int:
        # SHA-1 names the content: the fastest digest hashlib has here (3.8 µs per 4 KiB
        # against 6.3 for blake2b), and collisions need a deliberate attack on one's own trace.
        # lz4 stores it (4.9 µs per page against zstd -1's 9.3): the sink's cost per new
        # page bounds how fast a traced mount can go (docs/trace-format.md, "Cost").
        key = hashlib.sha1(chunk).digest()
        blob_id = self.blobs.get(key)
        if blob_id is None:
            blob_id = self._store_blob(key, chunk, t_ns, dev, out)
        return blob_id

    def _store_blob(self, key: bytes, chunk: bytes, t_ns: int, dev: int, out: Any) -> int:
        """A content seen for the first time: the next blob id, and its BLOB record."""
        blob_id = len(self.blobs)
        self.blobs[key] = blob_id
        packed = self.compress(chunk)
        if len(packed) < len(chunk):
            codec, stored = CODEC_LZ4, packed
        else:
            codec, stored = CODEC_RAW, chunk
        self._frame(
            _BODY.pack(T_BLOB, 0, dev, t_ns) + _BLOB.pack(blob_id, codec, len(chunk)) + stored, out
        )
        return blob_id

    def encode(self, item: tuple[Any, ...], out: Any) -> None:
        """Write the framed record(s) of one producer tuple to `out` (BLOBs first)."""
        kind, t_ns, dev, flags = item[0], item[1], item[2], item[3]
        if kind == T_WRITE and len(item[5]) == PAGE_SIZE:
            # The common record (a 4 KiB write: swap, fio's 4k jobs), without the general
            # loop: one blob looked up (or stored) and the record framed in one write.
            data = item[5]
            key = hashlib.sha1(data).digest()
            blob_id = self.blobs.get(key)
            if blob_id is None:  # a new content travels inside its first write
                self.blobs[key] = len(self.blobs)
                packed = self.compress(data)
                codec = CODEC_LZ4 if len(packed) < PAGE_SIZE else CODEC_RAW
                body = (
                    _BODY.pack(T_WRITE_NEW, flags, dev, t_ns)
                    + _WRITE_NEW.pack(item[4], item[6], codec, PAGE_SIZE)
                    + (packed if codec == CODEC_LZ4 else data)
                )
            else:
                body = _BODY.pack(kind, flags, dev, t_ns) + _WRITE_ONE.pack(
                    item[4], PAGE_SIZE, item[6], 1, blob_id
                )
            out.write(_FRAME.pack(len(body), crc32(body)) + body)
            self.bytes_in += PAGE_SIZE
            self.records += 1
            if flags & F_OVERLAP:
                self.overlapping += 1
            return
        head = _BODY.pack(kind, flags, dev, t_ns)
        if kind == T_WRITE:
            offset, data, err = item[4], item[5], item[6]
            ids = array(
                "I",
                [
                    self._blob(data[i : i + PAGE_SIZE], t_ns, dev, out)
                    for i in range(0, len(data), PAGE_SIZE)
                ],
            )
            body = head + _WRITE.pack(offset, len(data), err, len(ids)) + ids.tobytes()
            self.bytes_in += len(data)
        elif kind == T_READ:
            body = head + _READ.pack(item[4], item[5], item[6])
        elif kind == T_DISCARD:
            body = head + _DISCARD.pack(item[4], item[5], item[6], item[7])
        elif kind == T_FLUSH:
            body = head
        elif kind == T_CONTROL:
            direction, path, text, offset, err = item[4:9]
            p = path.encode()
            body = head + _CONTROL.pack(direction, err, offset, len(p), len(text)) + p + text
        elif kind == T_BGCOMPACT:
            reason = item[4].encode()
            body = head + _BGCOMPACT.pack(item[5], len(reason)) + reason
        elif kind == T_END:
            body = head + json.dumps({**item[4], **self.summary()}, sort_keys=True).encode()
        else:
            raise ValueError(f"unknown trace record type {kind}")
        if flags & F_OVERLAP:
            self.overlapping += 1
        self.records += 1
        self._frame(body, out)


def run(path: str, flush_interval: float, fd: int = 0) -> int:
    """Append the records arriving on `fd` to `path` until end of input (see module)."""
    enc = RecordEncoder()
    try:
        out = open(path, "ab", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"zramfs trace sink: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    buf = bytearray()
    dirty = False
    last_flush = time.monotonic()
    length = _PIPE_LEN.unpack_from
    loads = marshal.loads
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], flush_interval)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break  # the writer closed the pipe, or died
                buf += chunk
                pos, end = 0, len(buf)
                while end - pos >= 4:
                    (n,) = length(buf, pos)
                    if end - pos - 4 < n:
                        break
                    enc.encode(loads(buf[pos + 4 : pos + 4 + n]), out)
                    pos += 4 + n
                    dirty = True
                del buf[:pos]
            now = time.monotonic()
            if dirty and (not ready or now - last_flush >= flush_interval):
                out.flush()
                dirty = False
                last_flush = now
        out.flush()
        os.fsync(out.fileno())
        out.close()
    except OSError as exc:
        print(f"zramfs trace sink: {path}: {exc.strerror}; tracing stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.1))
