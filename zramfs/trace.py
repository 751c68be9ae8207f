"""The trace file: format and reader (docs/trace-format.md is its specification).

Owns the bytes of a `zramfs mount --trace FILE` recording: a magic header with a JSON
description of the mount, then append-only records, each framed by its length and a CRC-32,
so a trace cut short by a crash or SIGKILL reads up to its last complete record and nothing
before it can be damaged.  Page contents are stored once per distinct content (BLOB records,
lz4-compressed); a WRITE names the blobs of its 4 KiB chunks.

* Writing is `zramfs.trace_writer.TraceWriter`'s (the I/O path's side) and
  `zramfs.trace_sink`'s (the process that deduplicates, compresses, frames and appends).
* `TraceReader`: opens, checks and iterates a trace (`Write`, `Read`, `Discard`, `Flush`,
  `Control`, `BackgroundCompact` records), reassembling a write's data from its blobs.
  A missing, foreign or damaged file raises `zramfs.errors.TraceError` with one line.

What the records mean, and which operations they capture, is `zramfs.trace_hook`'s side.
"""

from __future__ import annotations

import itertools
import json
import logging
import mmap
import os
import struct
from array import array
from collections.abc import Iterator
from typing import Any, NamedTuple

import lz4.block
import zstandard

from . import cmodules
from .errors import TraceError

try:
    # ISA-L's CRC-32 (carry-less multiplication): zlib's checksum bit for bit, ~7x faster on a
    # record body (0.09 against 0.65 µs for 2 KiB), which both the sink and a replay's reader
    # compute for every record.  zlib's where isal has no wheel (docs/trace-format.md).
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - depends on the platform
    from zlib import crc32

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
#: a 4 KiB write of a content never seen before, the content inside: offset, errno, codec,
#: raw length (4096); then the stored bytes — the next blob id, and one frame, not two
_WRITE_NEW = struct.Struct("<QHBI")
_READ = struct.Struct("<QIH")  # offset, length, errno
_DISCARD = struct.Struct("<BQQH")  # op, offset, length, errno
_CONTROL = struct.Struct("<BHIHI")  # direction, errno, file offset, path length, text length
_BGCOMPACT = struct.Struct("<IB")  # pages freed, reason length; then the reason


def _joined(*parts: struct.Struct) -> struct.Struct:
    """One struct for consecutive little-endian fields (``<`` formats have no padding)."""
    return struct.Struct("<" + "".join(part.format.lstrip("<") for part in parts))


#: the reader unpacks a record's frame and the start of its body in one call ...
_HEAD = _joined(_FRAME, _BODY)
#: ... and, for the commonest records, their fixed fields too (one call per record)
_HEAD_WRITE_NEW = _joined(_FRAME, _BODY, _WRITE_NEW)
_HEAD_WRITE = _joined(_FRAME, _BODY, _WRITE)
_HEAD_DISCARD = _joined(_FRAME, _BODY, _DISCARD)

#: a record body longer than this is damage, not data (a 128 KiB write is ~150 bytes)
MAX_BODY = 16 << 20
#: the reader keeps this many decompressed blobs that WRITEs named (2 MiB of pages): a
#: content written again (zero pages, fio's repeated buffers, a swap page going out again)
#: costs a dict lookup instead of an lz4 call (~0.45 µs for a zero page)
BLOB_CACHE = 512

# record types
T_BLOB, T_WRITE, T_READ, T_DISCARD, T_FLUSH, T_CONTROL, T_BGCOMPACT, T_END, T_WRITE_NEW = range(
    1, 10
)
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
        if end + 4 > size or struct.unpack_from("<I", self._map, end)[0] != crc32(
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
        #: blob id -> content, of blobs WRITEs named (at most BLOB_CACHE; emptied when full:
        #: the contents written again and again come straight back)
        self._blob_cache: dict[int, bytes] = {}
        self._zstd = zstandard.ZstdDecompressor()
        self.complete = False
        self.end: dict[str, Any] | None = None
        self.stopped_at: int | None = None
        self.trailing_bytes = 0

    def blob(self, blob_id: int) -> bytes:
        """The content of blob `blob_id` (defined by an earlier record)."""
        cache = self._blob_cache
        data = cache.get(blob_id)
        if data is None:
            start, stop, codec, raw = self._blob_at[blob_id]
            if codec == CODEC_LZ4:
                data = lz4.block.decompress(self._view[start:stop], raw)
            else:
                data = self._unstore(codec, self._view[start:stop], raw)
            if len(cache) >= BLOB_CACHE:
                cache.clear()
            cache[blob_id] = data
        return data

    def _unstore(self, codec: int, stored: memoryview, raw: int) -> bytes:
        """A blob's content from its stored bytes, for the codecs other than lz4 (the one
        the writer uses: `raw_records` and `blob` decompress it themselves)."""
        if codec == CODEC_RAW:
            return bytes(stored)
        if codec == CODEC_ZSTD:
            return self._zstd.decompress(stored, max_output_size=raw)
        raise ValueError(f"unknown blob codec {codec}")

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
        flags, fields...) — what a replay iterates (a tuple costs less than a NamedTuple).
        The records of `raw_batches`, one after the other (chained in C: no frame a record)."""
        return itertools.chain.from_iterable(self.raw_batches())

    def raw_batches(self) -> Iterator[list[tuple[Any, ...]]]:
        """`raw_records` in lists of up to `_SCAN_BATCH` records, decoded ahead of use.

        Every record's frame is checked (length within the file and at most `MAX_BODY`, the
        record's fixed fields inside its body, CRC-32 of the body) before any of it is used.
        The loop is the replay's reading cost, so the three commonest records (WRITE_NEW,
        WRITE, DISCARD) are unpacked, frame and all, by one `struct` call each, and blobs
        are decompressed from the mapping (a memoryview, no copy) by a positional call
        (`lz4.block.decompress`'s keyword argument alone costs ~0.15 µs).
        """
        m = self._map
        view = self._view
        size = self.size
        pos = self._first
        blob_at: list[tuple[int, int, int, int]] = []
        self._blob_at = blob_at
        self._blob_cache = {}
        cached = self._blob_cache.get
        head_unpack, head_size = _HEAD.unpack_from, _HEAD.size
        write_new_unpack, write_new_size = _HEAD_WRITE_NEW.unpack_from, _HEAD_WRITE_NEW.size
        write_unpack, write_size = _HEAD_WRITE.unpack_from, _HEAD_WRITE.size
        discard_unpack, discard_size = _HEAD_DISCARD.unpack_from, _HEAD_DISCARD.size
        blob_unpack, blob_size = _BLOB.unpack_from, _BLOB.size
        checksum, lz4_decompress, blob = crc32, lz4.block.decompress, self.blob
        errors = (
            struct.error,
            IndexError,
            ValueError,
            zstandard.ZstdError,
            lz4.block.LZ4BlockError,
        )
        # The C scanner (compiled build) decodes runs of the commonest records exactly as
        # below and stops at anything else, or at any failed check: the code below reads that
        # record, so a damaged trace ends where this reference says (see _tracescan.c).
        scan = _SCANNER
        batch: list[tuple[Any, ...]] = []
        cache = self._blob_cache
        # fewer bytes left than a frame and the common fields: a record cut short
        while pos + head_size <= size:
            if len(batch) >= _SCAN_BATCH:
                yield batch
                batch = []
            if scan is not None:
                pos = scan(m, pos, size, batch, blob_at, cache, _SCAN_BATCH)
                if len(batch) >= _SCAN_BATCH or pos + head_size > size:
                    continue
            kind = m[pos + 8]
            try:
                # Each branch: unpack the frame and fields, check the frame (the record
                # type's fixed fields inside the body, the body inside the file and at most
                # MAX_BODY) and the body's CRC, and only then read the rest of the body.
                if kind == T_WRITE_NEW:  # a 4 KiB write of a new content: the commonest
                    length, crc, _, flags, dev, t_ns, offset, err, codec, raw = write_new_unpack(
                        m, pos
                    )
                    stop = pos + 8 + length
                    at = pos + write_new_size
                    if not at <= stop <= size or length > MAX_BODY:
                        break
                    if checksum(view[pos + 8 : stop]) != crc:
                        break
                    if codec == CODEC_LZ4:
                        data = lz4_decompress(view[at:stop], raw)
                    else:
                        data = self._unstore(codec, view[at:stop], raw)
                    if len(data) != raw:
                        break
                    blob_at.append((at, stop, codec, raw))
                    rec: tuple[Any, ...] | None = (T_WRITE, t_ns, dev, flags, offset, data, err)
                elif kind == T_WRITE:  # a write of known contents (or not 4 KiB)
                    length, crc, _, flags, dev, t_ns, offset, wlen, err, count = write_unpack(
                        m, pos
                    )
                    stop = pos + 8 + length
                    at = pos + write_size
                    if at + 4 * count != stop or stop > size or length > MAX_BODY:
                        break
                    if checksum(view[pos + 8 : stop]) != crc:
                        break
                    if count == 1:
                        blob_id = int.from_bytes(m[at:stop], "little")
                        data = cached(blob_id) or blob(blob_id)  # a hit: no method call
                    else:
                        ids = array("I")
                        ids.frombytes(m[at:stop])
                        data = b"".join([blob(i) for i in ids])
                    if len(data) != wlen:
                        break  # its blobs do not make the write's length
                    rec = (T_WRITE, t_ns, dev, flags, offset, data, err)
                elif kind == T_DISCARD:
                    length, crc, _, flags, dev, t_ns, op, offset, dlen, err = discard_unpack(m, pos)
                    stop = pos + 8 + length
                    if not pos + discard_size <= stop <= size or length > MAX_BODY:
                        break
                    if checksum(view[pos + 8 : stop]) != crc:
                        break
                    rec = (T_DISCARD, t_ns, dev, flags, op, offset, dlen, err)
                else:
                    length, crc, kind, flags, dev, t_ns = head_unpack(m, pos)
                    stop = pos + 8 + length
                    p = pos + head_size
                    if not p <= stop <= size or length > MAX_BODY:
                        break
                    if checksum(view[pos + 8 : stop]) != crc:
                        break
                    if kind == T_BLOB:
                        blob_id, codec, raw = blob_unpack(m, p)
                        if blob_id != len(blob_at) or codec > CODEC_LZ4 or p + blob_size > stop:
                            break  # out of sequence, or not a blob at all
                        blob_at.append((p + blob_size, stop, codec, raw))
                        rec = None
                    else:
                        rec = self._decode(kind, flags, dev, t_ns, p, stop)
            except errors:
                break  # a body that passed its CRC yet does not parse: stop here
            pos = stop
            if rec is not None:
                batch.append(rec)
            elif kind == T_END:
                self.complete = True
                break
        if batch:
            yield batch
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


# ---------------------------------------------------------------------------- C scanner
#: records a batch of `TraceReader.raw_batches` holds (and the C scanner decodes per call)
_SCAN_BATCH = 256


def _load_scanner() -> tuple[Any, str]:
    """(a `zramfs._tracescan.Scanner`, "") when `TraceReader.raw_records` may decode through
    it, or (None, why not).  It calls the reference's own CRC and lz4 functions, found by
    ctypes in the isal and python-lz4 extension modules (`zramfs.cmodules` for the rest)."""
    import ctypes

    try:
        import isal.isal_zlib as isal_zlib
        from lz4.block import _block
    except ImportError as exc:  # pragma: no cover - depends on the platform
        return None, f"the CRC or lz4 library is not there ({exc})"
    if crc32 is not isal_zlib.crc32:  # pragma: no cover - the import above failed then
        return None, "the reader checks CRCs with zlib (no isal)"
    try:
        crc_fn = ctypes.CDLL(isal_zlib.__file__).crc32_gzip_refl
        lz4_fn = ctypes.CDLL(_block.__file__).LZ4_decompress_safe
    except (OSError, AttributeError, TypeError) as exc:  # pragma: no cover - an odd build
        return None, f"cannot bind crc32_gzip_refl / LZ4_decompress_safe ({exc})"
    module, why = cmodules.load("_tracescan")
    if module is None:
        return None, why
    crc_at = ctypes.cast(crc_fn, ctypes.c_void_p).value or 0
    lz4_at = ctypes.cast(lz4_fn, ctypes.c_void_p).value or 0
    return module.Scanner(crc_at, lz4_at), ""


_SCANNER, _SCANNER_WHY_NOT = _load_scanner()


def scanner_status() -> str:
    """How a replay reads trace records here: "C" (zramfs._tracescan) or "Python (why)"."""
    return "C" if _SCANNER is not None else f"Python ({_SCANNER_WHY_NOT})"
