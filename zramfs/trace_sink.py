"""The trace sink: the process that turns a mount's records into the trace file.

Owns `RecordEncoder` (producer tuples -> framed records: a write's page contents found again
by CRC-32 and a byte comparison, stored once as lz4 BLOB records, the WRITE naming them;
every record framed with its length and CRC-32, docs/trace-format.md) and the sink process
`zramfs.trace_writer.TraceWriter` starts: ``python -m zramfs.trace_sink FILE FLUSH_INTERVAL
[--ring=FD,SIZE]``.  It takes the writer's length-prefixed messages (`decode_message`) from
the shared-memory ring (`zramfs.trace_ring`, polled every `RING_POLL` seconds) or, without
one, from stdin, and appends their records to FILE (the writer wrote the header), flushing at
least every FLUSH_INTERVAL seconds while records arrive; at end of input on stdin (the writer
closed it, or its process died) it writes what it has, fsyncs and exits 0.

Why a process: deduplicating and compressing every new page costs ~6 µs of CPU; in a thread
of the mount it competed with the FUSE threads for the GIL (the 4 KiB QD1 write job ran at
0.77x untraced); here only a copy into the ring is left in the mount.
"""

from __future__ import annotations

import functools
import io
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
from .trace_ring import RingError, RingReader
from .trace_writer import _MSG_WRITE, _PIPE_LEN, MSG_WRITE_TAG

#: how often the sink looks into the ring (at most half the flush interval): rarer, larger
#: takes disturb a QD1 job less than frequent ones (docs/trace-format.md, "Writing")
RING_POLL = 0.05


def _page_compressor() -> Callable[[bytes], bytes]:
    """How the sink lz4-compresses a page (at most PAGE_SIZE bytes) into a raw lz4 block.

    LZ4_compress_fast, as the device's lz4 codec calls it (from C in the compiled build,
    2.0 against 3.1 µs a page for python-lz4's streaming call), where it is bound; else
    python-lz4.  Either output is a plain lz4 block, which is what the format stores."""
    if codecs.lz4_binding() != "none":
        return codecs.get_codec("lz4").compress
    return functools.partial(lz4.block.compress, store_size=False)


class RecordEncoder:
    """Producer tuples to framed trace records, page contents deduplicated.

    A content is found again by its CRC-32 (ISA-L: 0.1 µs a page, against SHA-1's 2.5,
    which was the sink's largest cost) and confirmed byte for byte against the stored one, so
    a CRC collision only costs a comparison and two contents are never confused.  The last
    `RECENT` contents stored or matched are kept to compare against; an older one is read
    back from the trace (it was written there: `out` must be readable at an offset, a file
    opened "a+b" or a BytesIO)."""

    #: contents kept in memory for the comparison (2 MiB): swap's and fio's repeated pages
    #: (zero pages, a buffer written again) are recent; an older match costs a pread
    RECENT = 512

    def __init__(self) -> None:
        self.compress = _page_compressor()
        #: a content's key: CRC-32 (a test forces collisions through it)
        self.key: Callable[[bytes], int] = crc32
        #: CRC-32 of a content -> its blob id, or a list of ids when distinct contents share
        #: the CRC (the birthday bound: one such pair expected among ~93,000 contents)
        self.by_crc: dict[int, int | list[int]] = {}
        #: per blob id: where its stored bytes are in `out`, how many, and their codec
        self._at = array("Q")
        self._stored_len = array("I")
        self._codec = array("B")
        self._raw_len = array("I")
        #: blob id -> content, the `RECENT` last used (dicts keep insertion order: an LRU)
        self._recent: dict[int, bytes] = {}
        #: where the next record goes in `out` (out.tell() once: it costs a seek each call)
        self._pos = -1
        #: `out` holds everything before this position (it was flushed there)
        self._flushed = -1
        self.blobs = 0
        self.records = 0
        self.overlapping = 0
        self.bytes_in = 0  # page bytes the writes carried

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blobs": self.blobs,
            "overlapping": self.overlapping,
            "page_bytes": self.bytes_in,
        }

    def _frame(self, body: bytes, out: Any) -> None:
        self._pos += out.write(_FRAME.pack(len(body), crc32(body)) + body)

    def _content(self, blob_id: int, out: Any) -> bytes:
        """A stored content, from `_recent` or read back from `out`."""
        data = self._recent.pop(blob_id, None)
        if data is None:
            at, n = self._at[blob_id], self._stored_len[blob_id]
            if at + n > self._flushed:
                out.flush()
                self._flushed = self._pos
            try:
                stored = os.pread(out.fileno(), n, at)
            except io.UnsupportedOperation:  # a BytesIO
                stored = out.getbuffer()[at : at + n].tobytes()
            if self._codec[blob_id] == CODEC_LZ4:
                data = lz4.block.decompress(stored, uncompressed_size=self._raw_len[blob_id])
            else:
                data = stored
        self._remember(blob_id, data)
        return data

    def _remember(self, blob_id: int, data: bytes) -> None:
        recent = self._recent
        recent[blob_id] = data
        if len(recent) > self.RECENT:
            del recent[next(iter(recent))]

    def _find(self, crc: int, chunk: bytes, out: Any) -> int | None:
        """The blob id of `chunk`'s content if it was stored before."""
        known = self.by_crc.get(crc)
        if known is None:
            return None
        for blob_id in known if isinstance(known, list) else (known,):
            if self._content(blob_id, out) == chunk:
                return blob_id
        return None

    def _new_blob(self, crc: int, codec: int, stored_at: int, stored: int, raw: int) -> int:
        """Register the next blob id: a content stored at `stored_at` in `out`."""
        blob_id = self.blobs
        self.blobs += 1
        known = self.by_crc.get(crc)
        if known is None:
            self.by_crc[crc] = blob_id
        elif isinstance(known, list):
            known.append(blob_id)
        else:
            self.by_crc[crc] = [known, blob_id]
        self._at.append(stored_at)
        self._stored_len.append(stored)
        self._codec.append(codec)
        self._raw_len.append(raw)
        return blob_id

    def _stored(self, chunk: bytes) -> tuple[int, bytes]:
        """How a new content is stored: (codec, bytes).  lz4 (2.3 µs a page against zstd
        -1's 9.3: the sink's cost per new page bounds how fast a traced mount can go,
        docs/trace-format.md "Cost"), or raw when lz4 does not make it smaller."""
        packed = self.compress(chunk)
        return (CODEC_LZ4, packed) if len(packed) < len(chunk) else (CODEC_RAW, chunk)

    def _store(self, crc: int, chunk: bytes, head: bytes, codec: int, stored: bytes) -> bytes:
        """Register `chunk` as the next blob, stored right after `head` in the record about
        to be framed; that record's body."""
        at = self._pos + _FRAME.size + len(head)
        self._remember(self._new_blob(crc, codec, at, len(stored), len(chunk)), chunk)
        return head + stored

    def _blob(self, chunk: bytes, t_ns: int, dev: int, out: Any) -> int:
        crc = self.key(chunk)
        blob_id = self._find(crc, chunk, out)
        if blob_id is not None:
            return blob_id
        blob_id = self.blobs
        codec, stored = self._stored(chunk)
        head = _BODY.pack(T_BLOB, 0, dev, t_ns) + _BLOB.pack(blob_id, codec, len(chunk))
        self._frame(self._store(crc, chunk, head, codec, stored), out)
        return blob_id

    def encode(self, item: tuple[Any, ...], out: Any) -> None:
        """Write the framed record(s) of one producer tuple to `out` (BLOBs first)."""
        kind, t_ns, dev, flags = item[0], item[1], item[2], item[3]
        if self._pos < 0:
            self._pos = out.tell()
        if kind == T_WRITE and len(item[5]) == PAGE_SIZE:
            # The common record (a 4 KiB write: swap, fio's 4k jobs), without the general
            # loop: one blob looked up (or stored) and the record framed in one write.
            data = item[5]
            crc = self.key(data)
            blob_id = self._find(crc, data, out) if crc in self.by_crc else None
            if blob_id is None:  # a new content travels inside its first write
                codec, stored = self._stored(data)
                head = _BODY.pack(T_WRITE_NEW, flags, dev, t_ns) + _WRITE_NEW.pack(
                    item[4], item[6], codec, PAGE_SIZE
                )
                body = self._store(crc, data, head, codec, stored)
            else:
                body = _BODY.pack(kind, flags, dev, t_ns) + _WRITE_ONE.pack(
                    item[4], PAGE_SIZE, item[6], 1, blob_id
                )
            self._pos += out.write(_FRAME.pack(len(body), crc32(body)) + body)
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


def decode_message(data: memoryview, pos: int, n: int) -> tuple[Any, ...]:
    """The record tuple of the message whose `n`-byte body starts at `pos` + 4 in `data`
    (`TraceWriter.push_locked` and `push_write_locked` make the two kinds)."""
    if data[pos + 4] == MSG_WRITE_TAG:
        _, _, t_ns, dev, flags, offset = _MSG_WRITE.unpack_from(data, pos)
        page = data[pos + _MSG_WRITE.size : pos + 4 + n].tobytes()
        return (T_WRITE, t_ns, dev, flags, offset, page, 0)
    return marshal.loads(data[pos + 4 : pos + 4 + n])


def run(path: str, flush_interval: float, fd: int = 0, ring: RingReader | None = None) -> int:
    """Append the records arriving on `fd` (the pipe transport) or in `ring` to `path` until
    end of input on `fd` (see module)."""
    enc = RecordEncoder()
    try:
        # readable too: a content matched by its CRC is compared with the stored one
        out = open(path, "a+b", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"zramfs trace sink: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    poll = min(RING_POLL, flush_interval / 2)
    left = b""  # the start of a record whose rest has not arrived
    dirty = eof = busy = False
    last_flush = time.monotonic()
    length = _PIPE_LEN.unpack_from
    try:
        while not eof:
            if ring is None:
                ready, _, _ = select.select([fd], [], [], flush_interval)
                chunk = os.read(fd, 1 << 20) if ready else b""
                eof = bool(ready) and not chunk  # the writer closed the pipe, or died
            else:
                # the pipe carries only wake-ups from a writer facing a full ring, and its
                # end says the writer is gone; a large take is followed by another at once
                ready, _, _ = select.select([fd], [], [], 0 if busy else poll)
                eof = bool(ready) and not os.read(fd, 4096)
                chunk = ring.take()
                busy = len(chunk) >= ring.capacity // 4
            if chunk:
                data = memoryview(left + chunk if left else chunk)
                pos, end = 0, len(data)
                while end - pos >= 4:
                    (n,) = length(data, pos)
                    if end - pos - 4 < n:
                        break
                    enc.encode(decode_message(data, pos, n), out)
                    pos += 4 + n
                    dirty = True
                left = bytes(data[pos:])
                data.release()
            now = time.monotonic()
            if dirty and (not chunk or now - last_flush >= flush_interval):
                out.flush()
                dirty = False
                last_flush = now
        out.flush()
        os.fsync(out.fileno())
        out.close()
    except OSError as exc:
        print(f"zramfs trace sink: {path}: {exc.strerror}; tracing stopped", file=sys.stderr)
        return 1
    except RingError as exc:
        out.close()  # what was written stays: whole records up to here
        print(f"zramfs trace sink: {path}: {exc}; tracing stopped", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """``python -m zramfs.trace_sink FILE FLUSH_INTERVAL [--ring=FD,SIZE]``"""
    ring = None
    if len(argv) > 2 and argv[2].startswith("--ring="):
        fd, size = map(int, argv[2].removeprefix("--ring=").split(","))
        ring = RingReader(fd, size)
    return run(argv[0], float(argv[1]), 0, ring)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
