"""The trace file: format, writer and reader (docs/trace-format.md is its specification).

Owns the bytes of a `zramfs mount --trace FILE` recording: a magic header with a JSON
description of the mount, then append-only records, each framed by its length and a CRC-32,
so a trace cut short by a crash or SIGKILL reads up to its last complete record and nothing
before it can be damaged.  Page contents are stored once per distinct content (BLOB records,
lz4-compressed); a WRITE names the blobs of its 4 KiB chunks.

* `TraceWriter`: the file side.  Producers (the I/O path, through `zramfs.trace_hook`) only
  append a tuple to a deque; a writer thread hashes, deduplicates, compresses, frames and
  writes, and flushes the file at most `flush_interval` seconds after a record arrived.
* `TraceReader`: opens, checks and iterates a trace (`Write`, `Read`, `Discard`, `Flush`,
  `Control`, `BackgroundCompact` records), reassembling a write's data from its blobs.
  A missing, foreign or damaged file raises `zramfs.errors.TraceError` with one line.

What the records mean, and which operations they capture, is `zramfs.trace_hook`'s side.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Iterator
from typing import Any, NamedTuple

import lz4.block
import zstandard

from .errors import TraceError

log = logging.getLogger(__name__)

MAGIC = b"\x89ZRTRC\r\n"  # 8 bytes; the \x89 and \r\n catch text-mode mangling, as PNG's
VERSION = 1
PAGE_SIZE = 4096  # the chunk a write's data is deduplicated by
#: the framing of the file header: magic, version, reserved, JSON length (then JSON, CRC-32)
_FILE_HEAD = struct.Struct("<8sHHI")
#: the framing of one record: body length, CRC-32 of the body
_FRAME = struct.Struct("<II")
#: the start of every record body: type, flags, device id, nanoseconds since the trace began
_BODY = struct.Struct("<BBHQ")
_BLOB = struct.Struct("<IBI")  # id, codec, raw length; then the stored bytes
_WRITE = struct.Struct("<QIHI")  # offset, length, errno, chunk count; then u32 blob ids
_WRITE_ONE = struct.Struct("<QIHII")  # the same with its one blob id (a 4 KiB write)
_READ = struct.Struct("<QIH")  # offset, length, errno
_DISCARD = struct.Struct("<BQQH")  # op, offset, length, errno
_CONTROL = struct.Struct("<BHIHI")  # direction, errno, file offset, path length, text length
_BGCOMPACT = struct.Struct("<IB")  # pages freed, reason length; then the reason

#: a record body longer than this is damage, not data (a 128 KiB write is ~150 bytes)
MAX_BODY = 16 << 20

# record types
T_BLOB, T_WRITE, T_READ, T_DISCARD, T_FLUSH, T_CONTROL, T_BGCOMPACT, T_END = range(1, 9)
#: flags bit 0: the operation overlapped another state-changing one in time (see trace_hook)
F_OVERLAP = 1
#: `Control.direction`
CTRL_WRITE, CTRL_READ = 0, 1
#: `Discard.op`
OP_DISCARD, OP_PUNCH_HOLE, OP_ZERO_RANGE = 0, 1, 2
OP_NAMES = ("discard", "punch_hole", "zero_range")
#: the device field of records that are not about one device (control files)
NO_DEVICE = 0xFFFF
#: how a blob's bytes are stored: as they are, zstd frame, lz4 block (what the writer uses)
CODEC_RAW, CODEC_ZSTD, CODEC_LZ4 = 0, 1, 2


# ---------------------------------------------------------------------------- records
class Write(NamedTuple):
    t_ns: int
    dev: int
    flags: int
    offset: int
    data: bytes
    errno: int


class Read(NamedTuple):
    t_ns: int
    dev: int
    flags: int
    offset: int
    length: int
    errno: int


class Discard(NamedTuple):
    t_ns: int
    dev: int
    flags: int
    op: int  # OP_DISCARD, OP_PUNCH_HOLE or OP_ZERO_RANGE
    offset: int
    length: int
    errno: int


class Flush(NamedTuple):
    t_ns: int
    dev: int
    flags: int


class Control(NamedTuple):
    """A write to (or, for hot_add, a read of) a control file of the mount, by its path in
    the mount ("/sys/block/zram0/compact"), with the text and the errno it got (0: done)."""

    t_ns: int
    flags: int
    direction: int  # CTRL_WRITE or CTRL_READ
    path: str
    text: bytes
    offset: int
    errno: int


class BackgroundCompact(NamedTuple):
    """A compaction the mount's daemon ran on its own (reason: its Reason value)."""

    t_ns: int
    dev: int
    flags: int
    reason: str
    pages_freed: int


Record = Write | Read | Discard | Flush | Control | BackgroundCompact


# ---------------------------------------------------------------------------- writer
class TraceWriter:
    """Append records to a new trace file from any thread; a writer thread does the work.

    `push` is the producers' only call: it appends one tuple (the record's type first, see
    `_encode`) to a deque, without a lock or any I/O.  The writer thread drains the deque,
    turns each tuple into framed records (new page contents become BLOB records first) in a
    buffered file, and flushes it to the kernel at least every `flush_interval` seconds
    while records arrive: a killed mount loses at most that much, and the file always ends
    in whole records or in one partial record the reader drops.  When more than
    `max_pending` tuples wait, `push` waits for the writer (back-pressure, so a workload
    faster than the writer cannot fill memory).  If the file cannot be written (disk full)
    tracing stops with one logged error and the I/O path goes on untraced.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mount: dict[str, Any],
        *,
        flush_interval: float = 0.1,
        max_pending: int = 4096,
    ) -> None:
        self.path = os.fspath(path)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        #: CLOCK_MONOTONIC (ns) at t=0 of the trace
        self.t0 = time.monotonic_ns()
        self._fh = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed by close()
        header = {
            "format": "zramfs-trace",
            "version": VERSION,
            "page_size": PAGE_SIZE,
            "blob_codec": "lz4",
            "created_unix": time.time(),
            # the device clock (CLOCK_BOOTTIME, ac_time) at t=0, so a replay's idle ages match
            "boottime_start": time.clock_gettime(time.CLOCK_BOOTTIME),
            "mount": mount,
        }
        text = json.dumps(header, sort_keys=True).encode()
        head = _FILE_HEAD.pack(MAGIC, VERSION, 0, len(text)) + text
        self._fh.write(head + struct.pack("<I", zlib.crc32(head[8:])))
        self._fh.flush()
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._blobs: dict[bytes, int] = {}
        self.records = 0
        self.overlapping = 0
        self.bytes_in = 0  # page bytes the writes carried
        self.failed: str | None = None
        self._stop = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zramfs-trace", daemon=True)
        self._thread.start()

    def now(self) -> int:
        """Nanoseconds since the trace began (CLOCK_MONOTONIC)."""
        return time.monotonic_ns() - self.t0

    def push(self, item: tuple[Any, ...]) -> None:
        """Queue one record tuple; (type, t_ns, dev, flags, ...fields) as `_encode` reads it."""
        pending = self._pending
        pending.append(item)
        if len(pending) > self.max_pending and not self._stop:
            self._throttle()

    def _throttle(self) -> None:
        self._wake.set()
        while (
            len(self._pending) > self.max_pending // 2
            and self.failed is None
            and self._thread.is_alive()
        ):
            time.sleep(0.0005)

    # ---- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        pending = self._pending
        last_flush = time.monotonic()
        dirty = False
        while True:
            stopping = self._stop
            batch = []
            while pending:
                batch.append(pending.popleft())
            if batch and self.failed is None:
                try:
                    out = self._fh
                    for item in batch:
                        self._encode(item, out)
                    dirty = True
                except (OSError, ValueError) as exc:
                    self.failed = f"{self.path}: {exc}"
                    log.error("trace: writing stopped: %s", self.failed)
            now = time.monotonic()
            if dirty and (now - last_flush >= self.flush_interval or stopping):
                self._flush()
                dirty = False
                last_flush = now
            if stopping and not pending:
                return
            if not batch:
                self._wake.wait(min(0.01, self.flush_interval))
                self._wake.clear()

    def _flush(self) -> None:
        if self.failed is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.failed = f"{self.path}: {exc}"
                log.error("trace: writing stopped: %s", self.failed)

    def _frame(self, body: bytes, out: Any) -> None:
        out.write(_FRAME.pack(len(body), zlib.crc32(body)) + body)

    def _blob(self, chunk: bytes, t_ns: int, dev: int, out: Any) -> int:
        # SHA-1 names the content: the fastest digest hashlib has here (3.8 µs per 4 KiB
        # against 6.3 for blake2b), and collisions need a deliberate attack on one's own trace.
        # lz4 stores it (4.9 µs per page against zstd -1's 9.3): the writer's cost per new
        # page is what the traced mount pays in CPU (docs/trace-format.md, "Overhead").
        key = hashlib.sha1(chunk).digest()
        blob_id = self._blobs.get(key)
        if blob_id is None:
            blob_id = self._store_blob(key, chunk, t_ns, dev, out)
        return blob_id

    def _store_blob(self, key: bytes, chunk: bytes, t_ns: int, dev: int, out: Any) -> int:
        """A content seen for the first time: the next blob id, and its BLOB record."""
        blob_id = len(self._blobs)
        self._blobs[key] = blob_id
        packed = lz4.block.compress(chunk, store_size=False)
        if len(packed) < len(chunk):
            codec, stored = CODEC_LZ4, packed
        else:
            codec, stored = CODEC_RAW, chunk
        self._frame(
            _BODY.pack(T_BLOB, 0, dev, t_ns) + _BLOB.pack(blob_id, codec, len(chunk)) + stored, out
        )
        return blob_id

    def _encode(self, item: tuple[Any, ...], out: Any) -> None:
        kind, t_ns, dev, flags = item[0], item[1], item[2], item[3]
        if kind == T_WRITE and len(item[5]) == PAGE_SIZE:
            # The common record (a 4 KiB write: swap, fio's 4k jobs), without the general
            # loop: one blob looked up (or stored) and the record framed in one write.
            data = item[5]
            key = hashlib.sha1(data).digest()
            blob_id = self._blobs.get(key)
            if blob_id is None:
                blob_id = self._store_blob(key, data, t_ns, dev, out)
            body = _BODY.pack(kind, flags, dev, t_ns) + _WRITE_ONE.pack(
                item[4], PAGE_SIZE, item[6], 1, blob_id
            )
            out.write(_FRAME.pack(len(body), zlib.crc32(body)) + body)
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
            body = head + json.dumps(item[4], sort_keys=True).encode()
        else:
            raise ValueError(f"unknown trace record type {kind}")
        if flags & F_OVERLAP:
            self.overlapping += 1
        self.records += 1
        self._frame(body, out)

    # ---- closing -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blobs": len(self._blobs),
            "overlapping": self.overlapping,
            "page_bytes": self.bytes_in,
            "duration_ns": self.now(),
        }

    def close(self) -> None:
        """Write what is queued and an END record, flush, fsync and close.  Idempotent."""
        if self._fh.closed:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self.failed is None:
            try:
                self._encode((T_END, self.now(), NO_DEVICE, 0, self.summary()), self._fh)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                self.failed = f"{self.path}: {exc}"
                log.error("trace: closing failed: %s", self.failed)
        try:
            self._fh.close()
        except OSError:
            pass

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- reader
class TraceReader:
    """Read a trace file: `header`, then `records()` in order (a context manager).

    After iterating, `complete` says whether the END record was reached (a cleanly closed
    trace), `end` holds its summary, and `stopped_at`/`trailing_bytes` say where a cut-short
    or damaged tail began (the records before it were all returned).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise TraceError(f"{self.path}: no such trace file") from None
        except IsADirectoryError:
            raise TraceError(f"{self.path}: is a directory, not a trace file") from None
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot open: {exc.strerror}") from None
        self._fh = fh
        size = os.fstat(fh.fileno()).st_size
        if size < _FILE_HEAD.size:
            fh.close()
            raise TraceError(f"{self.path}: not a zramfs trace (file too short)")
        self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        self.size = size
        magic, version, _reserved, hlen = _FILE_HEAD.unpack_from(self._map, 0)
        if magic != MAGIC:
            self.close()
            raise TraceError(f"{self.path}: not a zramfs trace (bad magic)")
        if version != VERSION:
            self.close()
            raise TraceError(
                f"{self.path}: trace format version {version}, this zramfs reads version {VERSION}"
            )
        end = _FILE_HEAD.size + hlen
        if end + 4 > size or struct.unpack_from("<I", self._map, end)[0] != zlib.crc32(
            self._view[8:end]
        ):
            self.close()
            raise TraceError(f"{self.path}: damaged trace header")
        try:
            self.header: dict[str, Any] = json.loads(bytes(self._view[_FILE_HEAD.size : end]))
        except ValueError:
            self.close()
            raise TraceError(f"{self.path}: damaged trace header (not JSON)") from None
        self.mount: dict[str, Any] = self.header.get("mount", {})
        self._first = end + 4
        self._blob_at: list[tuple[int, int, int, int]] = []  # (start, end, codec, raw length)
        self._zstd = zstandard.ZstdDecompressor()
        self.complete = False
        self.end: dict[str, Any] | None = None
        self.stopped_at: int | None = None
        self.trailing_bytes = 0

    def blob(self, blob_id: int) -> bytes:
        """The content of blob `blob_id` (defined by an earlier record)."""
        start, stop, codec, raw = self._blob_at[blob_id]
        data = self._view[start:stop]
        if codec == CODEC_LZ4:
            return lz4.block.decompress(data, uncompressed_size=raw)
        if codec == CODEC_RAW:
            return bytes(data)
        return self._zstd.decompress(data, max_output_size=raw)

    def records(self) -> Iterator[Record]:
        """Every operation record in file order (blobs are resolved, not returned)."""
        for r in self.raw_records():
            kind = r[0]
            if kind == T_WRITE:
                yield Write(r[1], r[2], r[3], r[4], r[5], r[6])
            elif kind == T_READ:
                yield Read(r[1], r[2], r[3], r[4], r[5], r[6])
            elif kind == T_DISCARD:
                yield Discard(r[1], r[2], r[3], r[4], r[5], r[6], r[7])
            elif kind == T_FLUSH:
                yield Flush(r[1], r[2], r[3])
            elif kind == T_CONTROL:
                yield Control(r[1], r[3], r[4], r[5], r[6], r[7], r[8])
            else:
                yield BackgroundCompact(r[1], r[2], r[3], r[4], r[5])

    def raw_records(self) -> Iterator[tuple[Any, ...]]:
        """`records` as plain tuples, the shapes `TraceWriter.push` takes: (type, t_ns, dev,
        flags, fields...) — what a replay iterates (a tuple costs less than a NamedTuple)."""
        m = self._map
        view = self._view
        size = self.size
        pos = self._first
        blob_at: list[tuple[int, int, int, int]] = []
        self._blob_at = blob_at
        frame_unpack, body_unpack, body_size = _FRAME.unpack_from, _BODY.unpack_from, _BODY.size
        write_unpack, blob_unpack = _WRITE.unpack_from, _BLOB.unpack_from
        crc32, blob = zlib.crc32, self.blob
        errors = (
            struct.error,
            IndexError,
            ValueError,
            zstandard.ZstdError,
            lz4.block.LZ4BlockError,
        )
        while pos + 8 <= size:
            length, crc = frame_unpack(m, pos)
            start = pos + 8
            stop = start + length
            if (
                length < body_size
                or length > MAX_BODY
                or stop > size
                or crc32(view[start:stop]) != crc
            ):
                break
            kind, flags, dev, t_ns = body_unpack(m, start)
            p = start + body_size
            rec: tuple[Any, ...] | None
            try:
                if kind == T_BLOB:  # the common two inline
                    blob_id, codec, raw = blob_unpack(m, p)
                    if blob_id != len(blob_at) or codec > CODEC_LZ4:
                        raise ValueError("blob out of sequence")
                    blob_at.append((p + _BLOB.size, stop, codec, raw))
                    rec = None
                elif kind == T_WRITE:
                    offset, length, err, count = write_unpack(m, p)
                    q = p + _WRITE.size
                    if q + 4 * count != stop:
                        raise ValueError("blob list length")
                    if count == 1:
                        data = blob(int.from_bytes(m[q : q + 4], "little"))
                    else:
                        ids = array("I")
                        ids.frombytes(m[q:stop])
                        data = b"".join([blob(i) for i in ids])
                    if len(data) != length:
                        raise ValueError("write length does not match its blobs")
                    rec = (T_WRITE, t_ns, dev, flags, offset, data, err)
                else:
                    rec = self._decode(kind, flags, dev, t_ns, p, stop)
            except errors:
                break  # a body that passed its CRC yet does not parse: stop here
            pos = stop
            if rec is None:
                if kind == T_END:
                    self.complete = True
                    break
                continue
            yield rec
        if not self.complete and pos < size:
            self.stopped_at = pos
            self.trailing_bytes = size - pos

    def _decode(
        self, kind: int, flags: int, dev: int, t_ns: int, p: int, stop: int
    ) -> tuple[Any, ...] | None:
        m = self._map
        if kind == T_READ:
            offset, length, err = _READ.unpack_from(m, p)
            return (T_READ, t_ns, dev, flags, offset, length, err)
        if kind == T_DISCARD:
            op, offset, length, err = _DISCARD.unpack_from(m, p)
            return (T_DISCARD, t_ns, dev, flags, op, offset, length, err)
        if kind == T_FLUSH:
            return (T_FLUSH, t_ns, dev, flags)
        if kind == T_CONTROL:
            direction, err, offset, plen, tlen = _CONTROL.unpack_from(m, p)
            q = p + _CONTROL.size
            if q + plen + tlen != stop:
                raise ValueError("control record length")
            path = bytes(m[q : q + plen]).decode()
            return (
                T_CONTROL,
                t_ns,
                dev,
                flags,
                direction,
                path,
                bytes(m[q + plen : stop]),
                offset,
                err,
            )
        if kind == T_BGCOMPACT:
            freed, rlen = _BGCOMPACT.unpack_from(m, p)
            q = p + _BGCOMPACT.size
            return (T_BGCOMPACT, t_ns, dev, flags, bytes(m[q : q + rlen]).decode(), freed)
        if kind == T_END:
            self.end = json.loads(bytes(m[p:stop]))
            return None
        raise ValueError(f"unknown record type {kind}")

    def close(self) -> None:
        try:
            self._view.release()
        except (AttributeError, BufferError):
            pass
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a caller still holds a view of a blob: the GC closes it
        self._fh.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
