"""zramfs._tracescan: the C scanner of trace records, against the Python reader it speeds up.

The compiled build must read through it (so a build that silently lost it fails here); on any
trace — whole, cut anywhere, damaged anywhere — reading with it must give exactly what the
reference gives (records, blob table, where and why the reading stopped); and it must really
decode the commonest records, not leave them all to the reference.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import pytest

from allocator import buildmode
from support.trace_files import Traced, body, hand_made, lz4_stored, workload, write, write_new
from zramfs import trace
from zramfs.trace import TraceReader

COMPILED = buildmode.selected("zramfs") == buildmode.COMPILED
SCANNER = trace._SCANNER
needs_c = pytest.mark.skipif(SCANNER is None, reason="zramfs._tracescan is not in use")


def read(path: Path, scanner: Any) -> dict[str, Any]:
    """Everything a reading of `path` gives, with `scanner` (None: the reference alone)."""
    saved = trace._SCANNER
    trace._SCANNER = scanner
    try:
        with TraceReader(path) as r:
            records = list(r.raw_records())
            return {
                "records": records,
                "blob_at": list(r._blob_at),
                "complete": r.complete,
                "end": r.end,
                "stopped_at": r.stopped_at,
                "trailing_bytes": r.trailing_bytes,
            }
    finally:
        trace._SCANNER = saved


def assert_agree(path: Path) -> dict[str, Any]:
    ours, reference = read(path, SCANNER), read(path, None)
    assert ours == reference
    return ours


class Counting:
    """The scanner, counting the records and blobs it decoded itself."""

    def __init__(self) -> None:
        self.records = self.blobs = self.calls = 0

    def __call__(self, m, pos, size, out, blob_at, cache, limit):  # noqa: ANN001 - the C call
        n, b = len(out), len(blob_at)
        stop = SCANNER(m, pos, size, out, blob_at, cache, limit)
        self.calls += 1
        self.records += len(out) - n
        self.blobs += len(blob_at) - b
        return stop


@pytest.fixture(scope="module")
def workload_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A traced workload: new and repeated contents, 128 KiB and unaligned writes, discards,
    reads, control writes and a compaction, over more records than one scanner batch."""
    path = tmp_path_factory.mktemp("scan") / "w.trace"
    t = Traced(path)
    workload(t, seed=5, n=700)
    rnd = random.Random(6)
    same = rnd.randbytes(2048) * 2
    for i in range(40):  # one content again and again: WRITEs naming a cached blob
        t.dev.write(4096 * (i % 9), same)
    t.dev.write(0, rnd.randbytes(64) * 2048)  # 128 KiB: a WRITE of several blobs
    t.dev.write(4096 * 30 + 5, rnd.randbytes(3000))  # unaligned
    t.dev.punch_hole(4096 * 3, 8192)
    t.attr("mem_limit", b"12M\n")
    t.close()
    return path


def test_the_compiled_build_reads_traces_through_the_c_scanner():
    if COMPILED:
        assert trace.scanner_status() == "C", trace._SCANNER_WHY_NOT
        assert type(SCANNER).__name__ == "Scanner"
    else:
        assert SCANNER is None
        assert trace.scanner_status() == "Python (the pure-Python build runs)"


@needs_c
def test_a_whole_trace_reads_the_same_and_the_scanner_does_the_bulk(
    workload_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = assert_agree(workload_trace)
    assert got["complete"] and len(got["records"]) > trace._SCAN_BATCH
    counting = Counting()
    monkeypatch.setattr(trace, "_SCANNER", counting)
    with TraceReader(workload_trace) as r:
        records = list(r.raw_records())
    kinds = [rec[0] for rec in records]
    common = kinds.count(trace.T_WRITE) + kinds.count(trace.T_DISCARD)
    # every 4 KiB write and discard but the few whose blob was not cached yet
    assert counting.records >= common - 12, (counting.records, common)
    assert counting.calls > len(records) // trace._SCAN_BATCH
    assert counting.blobs > 0


@needs_c
def test_a_trace_cut_anywhere_reads_the_same(workload_trace: Path, tmp_path: Path) -> None:
    data = workload_trace.read_bytes()
    rnd = random.Random(8)
    cut = tmp_path / "cut.trace"
    for n in sorted(rnd.sample(range(100, len(data)), 60)):
        cut.write_bytes(data[:n])
        got = assert_agree(cut)
        assert not got["complete"]


@needs_c
def test_a_trace_damaged_anywhere_reads_the_same(workload_trace: Path, tmp_path: Path) -> None:
    """One flipped byte, in frames, fields, CRCs and stored pages alike."""
    data = workload_trace.read_bytes()
    rnd = random.Random(9)
    bad = tmp_path / "bad.trace"
    stopped_early = 0
    for at in rnd.sample(range(100, len(data)), 150):
        damaged = bytearray(data)
        damaged[at] ^= 1 << rnd.randrange(8)
        bad.write_bytes(bytes(damaged))
        got = assert_agree(bad)
        stopped_early += not got["complete"]
    assert stopped_early > 100  # the CRCs catch nearly every flip


def test_every_record_shape_and_every_refusal_reads_the_same(tmp_path: Path) -> None:
    """Records the scanner decodes and those it leaves to the reference, side by side, and
    bodies that fail each check it makes (also run, without a scanner, in the pure build)."""
    rnd = random.Random(10)
    page = rnd.randbytes(1024) * 4
    shapes = [
        write_new(1, 0, trace.CODEC_LZ4, lz4_stored(page)),  # blob 0, decoded in C
        write_new(2, 4096, trace.CODEC_RAW, page),  # blob 1: another codec, the reference's
        write(3, 8192, 4096, [0]),  # blob 0 not cached yet: the reference decompresses it
        write(4, 8192, 4096, [0]),  # ... and now it is: C
        write(5, 0, 8192, [0, 1]),  # two blobs: the reference
        body(trace.T_BLOB, 6, trace._BLOB.pack(2, trace.CODEC_LZ4, 4096) + lz4_stored(page)),
        body(trace.T_DISCARD, 7, trace._DISCARD.pack(trace.OP_ZERO_RANGE, 5, 9, 0), flags=1),
        body(trace.T_READ, 8, trace._READ.pack(0, 4096, 0), dev=3),
        write_new(9, 1 << 40, trace.CODEC_LZ4, lz4_stored(page), raw=4096),
    ]
    refusals = {
        "a frame longer than the file": None,
        "a write_new whose page decompresses short": write_new(
            10, 0, trace.CODEC_LZ4, lz4_stored(page[:4000])
        ),
        "a write_new of raw length 0": write_new(10, 0, trace.CODEC_LZ4, b"", raw=0),
        "a write_new whose lz4 is garbage": write_new(10, 0, trace.CODEC_LZ4, b"\xff" * 30),
        "a write_new shorter than its fields": body(trace.T_WRITE_NEW, 10, b"\x00" * 14),
        "a write naming a cached blob of another length": write(10, 0, 4000, [0]),
        "a write whose count disagrees with its ids": write(10, 0, 4096, [0, 0], count=1),
        "a write of a blob not yet stored": write(10, 0, 4096, [99]),
        "a discard shorter than its fields": body(trace.T_DISCARD, 10, b"\x00" * 18),
        "a blob out of sequence": body(trace.T_BLOB, 10, trace._BLOB.pack(7, 0, 4) + b"abcd"),
        "a blob of an unknown codec": body(trace.T_BLOB, 10, trace._BLOB.pack(4, 9, 4) + b"ab"),
        "a blob shorter than its fields": body(trace.T_BLOB, 10, b"\x03\x00\x00"),
        "an unknown record type": body(77, 10, b"\x00" * 40),
    }
    path = tmp_path / "shapes.trace"
    for what, bad in refusals.items():
        bodies = [*shapes] if bad is None else [*shapes, bad]
        starts = hand_made(path, [*bodies, write(11, 0, 4096, [0])])
        if bad is None:  # the last frame claims more bytes than there are
            raw = bytearray(path.read_bytes())
            raw[starts[-1] : starts[-1] + 4] = (10**6).to_bytes(4, "little")
            path.write_bytes(bytes(raw))
        got = assert_agree(path) if SCANNER is not None else read(path, None)
        assert got["stopped_at"] == starts[len(shapes)], what
        assert len(got["records"]) == len(shapes) - 1, what  # the BLOB gives no record


@needs_c
def test_each_field_of_each_decoded_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Records with every field distinct and non-zero, all decoded by the scanner itself."""
    rnd = random.Random(12)
    page = rnd.randbytes(512) * 8
    stored = lz4_stored(page)
    bodies = [
        body(trace.T_BLOB, 11, trace._BLOB.pack(0, trace.CODEC_LZ4, 4096) + stored, dev=2, flags=1),
        body(
            trace.T_WRITE_NEW,
            (1 << 40) + 3,
            trace._WRITE_NEW.pack((1 << 35) + 4096, 5, trace.CODEC_LZ4, 4096) + stored,
            dev=0xFFFE,
            flags=0xA5,
        ),
        body(
            trace.T_DISCARD,
            (1 << 63) + 7,
            trace._DISCARD.pack(trace.OP_PUNCH_HOLE, (1 << 50) + 3, (1 << 33) + 9, 0xBEEF),
            dev=7,
            flags=3,
        ),
    ]
    path = tmp_path / "fields.trace"
    hand_made(path, bodies)
    with TraceReader(path) as r:
        list(r.raw_records())
        r.blob(0)  # cached: a WRITE naming it is the scanner's to decode
        cache = r._blob_cache
    cached = body(
        trace.T_WRITE,
        13,
        trace._WRITE.pack(1 << 20, 4096, 9, 1) + (0).to_bytes(4, "little"),
        dev=4,
        flags=2,
    )
    hand_made(path, [*bodies, cached])
    counting = Counting()
    with TraceReader(path) as r:  # the scanner alone, from the first record, cache seeded
        out: list[Any] = []
        blob_at: list[Any] = []
        assert counting(r._map, r._first, r.size, out, blob_at, cache, 100) == r.size
    assert counting.records == 3 and counting.blobs == 2
    assert out == [
        (trace.T_WRITE, (1 << 40) + 3, 0xFFFE, 0xA5, (1 << 35) + 4096, page, 5),
        (
            trace.T_DISCARD,
            *((1 << 63) + 7, 7, 3),
            *(trace.OP_PUNCH_HOLE, (1 << 50) + 3, (1 << 33) + 9, 0xBEEF),
        ),
        (trace.T_WRITE, 13, 4, 2, 1 << 20, page, 9),
    ]
    first = hand_made(tmp_path / "unused.trace", bodies)[0]
    assert blob_at == [
        (first + 20 + 9, first + 8 + len(bodies[0]), trace.CODEC_LZ4, 4096),
        (blob_at[1][1] - len(stored), blob_at[1][1], trace.CODEC_LZ4, 4096),
    ]
    assert_agree(path)


@needs_c
def test_bad_calls_are_refused(tmp_path: Path) -> None:
    scanner_type = type(SCANNER)
    with pytest.raises(ValueError):
        scanner_type(0, 1)
    with pytest.raises(TypeError):
        SCANNER(b"", 0, 0, [], [], {})
    with pytest.raises(TypeError):
        SCANNER(b"", 0, 0, (), [], {}, 1)
    with pytest.raises(ValueError):
        SCANNER(b"abc", 0, 4, [], [], {}, 1)
    with pytest.raises(ValueError):
        SCANNER(b"abc", -1, 3, [], [], {}, 1)
    assert SCANNER(b"abc", 0, 3, [], [], {}, 1) == 0


@needs_c
def test_a_scanner_built_from_another_source_is_not_used(monkeypatch: pytest.MonkeyPatch):
    """zramfs/_tracescan.c edited since the build: the reference, and the reason says why."""
    mod = importlib.import_module("zramfs._tracescan")
    monkeypatch.setattr(mod, "SOURCE_SHA256", "0" * 64)
    scanner, why = trace._load_scanner()
    assert scanner is None and "changed since the build" in why
