"""The trace file (zramfs/trace.py, zramfs/trace_hook.py; docs/trace-format.md).

In process: a `MountTracer` on a `Registry` and its `Tree` records what reaches the device,
and the reader gives it back — records, data, control writes, dedup of page contents, the
overlap flag; a trace cut anywhere reads up to its last complete record; foreign and damaged
files raise `TraceError` with one line; a device that is not traced runs its class's
methods untouched.  On a real mount: `zramfs mount --trace`, killed with SIGKILL, leaves a
trace that replays to the mm_stat the mount showed.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from support.trace_files import (
    MOUNT,
    Traced,
    body,
    hand_made,
    lz4_stored,
    page,
    record_ends,
    workload,
    write,
    write_new,
)
from zramfs import trace
from zramfs.device import Registry, ZramDevice
from zramfs.device_io import IOPathMixin
from zramfs.errors import TraceError
from zramfs.replay import mm_stat_of, replay_trace
from zramfs.trace import (
    F_OVERLAP,
    OP_DISCARD,
    OP_PUNCH_HOLE,
    Control,
    Discard,
    Flush,
    Read,
    TraceReader,
    Write,
)
from zramfs.trace_hook import MountTracer
from zramfs.trace_writer import TraceWriter


def test_round_trip_gives_back_every_operation(tmp_path: Path) -> None:
    path = tmp_path / "t.trace"
    t = Traced(path)
    rnd = random.Random(3)
    unaligned = rnd.randbytes(5000)
    big = b"".join(rnd.randbytes(64) * 64 for _ in range(32))  # 128 KiB
    t.dev.write(0, big)
    t.dev.write(4096 * 100 + 123, unaligned)
    t.dev.read(8192, 4096)
    t.dev.discard(4096 * 10, 8192)
    t.dev.punch_hole(4096 * 20 + 5, 10000)
    t.dev.flush()
    t.attr("mem_limit", b"8M\n")
    with pytest.raises(OSError):
        t.attr("comp_algorithm", b"zstd")  # EBUSY: initialised
    t.close()

    with TraceReader(path) as r:
        assert r.header["format"] == "zramfs-trace" and r.mount == MOUNT
        recs: list[Any] = list(r.records())
        assert r.complete and r.stopped_at is None
        assert r.end is not None and r.end["records"] == len(recs)
    kinds = [type(x) for x in recs]
    assert kinds == [Control, Write, Write, Read, Discard, Discard, Flush, Control, Control]
    assert recs[0].path == "/sys/block/zram0/disksize" and recs[0].text == b"16M"
    assert recs[1].data == big and recs[1].offset == 0 and recs[1].errno == 0
    assert recs[2].data == unaligned and recs[2].offset == 4096 * 100 + 123
    assert (recs[3].offset, recs[3].length) == (8192, 4096)
    assert (recs[4].op, recs[4].offset, recs[4].length) == (OP_DISCARD, 40960, 8192)
    assert (recs[5].op, recs[5].offset, recs[5].length) == (OP_PUNCH_HOLE, 4096 * 20 + 5, 10000)
    assert recs[7].text == b"8M\n" and recs[7].errno == 0
    assert recs[8].path.endswith("comp_algorithm") and recs[8].errno == 16  # EBUSY kept
    times = [x.t_ns for x in recs]
    assert times == sorted(times)
    assert not any(x.flags for x in recs)


def test_page_contents_are_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "t.trace"
    t = Traced(path, "64M")
    rnd = random.Random(5)
    distinct = [rnd.randbytes(4096) for _ in range(8)]  # incompressible
    for i in range(4000):
        t.dev.write((i % 16000) * 4096, distinct[i % 8])
    for i in range(2000):
        t.dev.write(i * 4096, bytes(4096))
    t.close()
    with TraceReader(path) as r:
        writes = [x for x in r.records() if type(x) is Write]
        assert r.end is not None and r.end["blobs"] == 9
    assert len(writes) == 6000 and writes[5].data == distinct[5]
    # 6000 pages (24 MB) of writes: 9 blobs and 42 bytes per write record (frame 8, head 12,
    # offset/length/errno/count 18, one blob id 4)
    assert path.stat().st_size < 9 * 4200 + 6000 * 42 + 1000


def test_contents_written_again_read_back_past_the_blob_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader keeps the last contents WRITEs named (trace.BLOB_CACHE of them, emptied
    when full): with more distinct contents than that, named again in any order, each
    write still reads back its own data."""
    monkeypatch.setattr(trace, "BLOB_CACHE", 8)
    path = tmp_path / "t.trace"
    t = Traced(path, "16M")
    rnd = random.Random(9)
    words = [rnd.randbytes(16) for _ in range(40)]
    distinct = [page(rnd, words)[:-2] + i.to_bytes(2, "little") for i in range(40)]
    order = list(range(len(distinct))) + [rnd.randrange(len(distinct)) for _ in range(400)]
    for n, i in enumerate(order):
        t.dev.write((n % 4096) * 4096, distinct[i])
    t.dev.write(0, b"".join(distinct[i] for i in order[-5:]))  # one write of several blobs
    t.close()
    with TraceReader(path) as r:
        writes = [x for x in r.records() if type(x) is Write]
        assert r.complete and len(r._blob_cache) <= 8
    assert [w.data for w in writes[:-1]] == [distinct[i] for i in order]
    assert writes[-1].data == b"".join(distinct[i] for i in order[-5:])


def _cut(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def test_a_trace_cut_anywhere_reads_up_to_its_last_complete_record(tmp_path: Path) -> None:
    path = tmp_path / "t.trace"
    t = Traced(path)
    workload(t, n=300)
    t.close()
    with TraceReader(path) as r:
        full = list(r.records())
    data = path.read_bytes()
    ends = record_ends(data)
    rnd = random.Random(7)
    for n in sorted(rnd.sample(range(ends[0], len(data) - 1), 25)) + [len(data) - 1]:
        cut = _cut(path, tmp_path / "cut.trace", n)
        with TraceReader(cut) as r:
            got = list(r.records())
            assert not r.complete
            # it stopped exactly after the last record wholly inside the cut
            assert r.stopped_at == max(e for e in ends if e <= n)
            assert r.stopped_at + r.trailing_bytes == n
        assert got == full[: len(got)]
        result = replay_trace(cut, {})
        assert result.records == len(got) and not result.trace_complete


def test_a_damaged_record_stops_the_reading_before_it(tmp_path: Path) -> None:
    path = tmp_path / "t.trace"
    t = Traced(path)
    workload(t, n=100)
    t.close()
    with TraceReader(path) as r:
        full = list(r.records())
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at] ^= 0xFF
    bad = tmp_path / "bad.trace"
    bad.write_bytes(bytes(data))
    with TraceReader(bad) as r:
        got = list(r.records())
        assert not r.complete and r.stopped_at is not None and r.stopped_at <= at
    assert 0 < len(got) < len(full) and got == full[: len(got)]


def test_every_blob_codec_and_record_shape_reads_back(tmp_path: Path) -> None:
    """The format's three blob codecs (the writer uses lz4 only), in BLOB and WRITE_NEW
    records, named by WRITEs of one blob and of several (the last one short)."""
    rnd = random.Random(4)
    raw_page, zstd_page, lz4_page = (rnd.randbytes(2048) * 2 for _ in range(3))
    tail = rnd.randbytes(100)
    bodies = [
        write_new(1, 0, trace.CODEC_RAW, raw_page),  # blob 0
        body(
            trace.T_BLOB,
            2,
            trace._BLOB.pack(1, trace.CODEC_ZSTD, 4096)
            + zstandard.ZstdCompressor().compress(zstd_page),
        ),
        write_new(3, 4096, trace.CODEC_LZ4, lz4_stored(lz4_page)),  # blob 2
        body(trace.T_BLOB, 4, trace._BLOB.pack(3, trace.CODEC_LZ4, 100) + lz4_stored(tail)),
        write(5, 8192, 4096, [1]),
        write(6, 12288 + 7, 3 * 4096 + 100, [2, 0, 1, 3]),
        body(trace.T_DISCARD, 7, trace._DISCARD.pack(trace.OP_PUNCH_HOLE, 4096, 8192, 0)),
        body(trace.T_READ, 8, trace._READ.pack(8192, 4096, 5)),
        body(trace.T_FLUSH, 9, b""),
        body(trace.T_END, 10, b'{"records": 7}', dev=trace.NO_DEVICE),
    ]
    path = tmp_path / "codecs.trace"
    hand_made(path, bodies)
    with TraceReader(path) as r:
        recs = list(r.records())
        assert r.complete and r.end == {"records": 7} and r.stopped_at is None
        assert r.blob(3) == tail
    assert recs == [
        Write(1, 0, 0, 0, raw_page, 0),
        Write(3, 0, 0, 4096, lz4_page, 0),
        Write(5, 0, 0, 8192, zstd_page, 0),
        Write(6, 0, 0, 12288 + 7, lz4_page + raw_page + zstd_page + tail, 0),
        Discard(7, 0, 0, trace.OP_PUNCH_HOLE, 4096, 8192, 0),
        Read(8, 0, 0, 8192, 4096, 5),
        Flush(9, 0, 0),
    ]


_PAGE = bytes(range(256)) * 16
_BAD_BODIES = {
    # bodies whose CRC-32 is right but that do not parse (or whose frame is impossible)
    "body shorter than the common fields": b"\x02\x00\x00\x00",
    "write_new shorter than its fields": body(trace.T_WRITE_NEW, 3, b"\x00" * 10),
    "write_new with an unknown codec": write_new(3, 0, 7, _PAGE),
    "write_new whose content is short": write_new(3, 0, trace.CODEC_LZ4, lz4_stored(_PAGE[:100])),
    "write_new whose lz4 is garbage": write_new(3, 0, trace.CODEC_LZ4, b"\xff" * 40),
    "write of a blob not yet stored": write(3, 0, 4096, [9]),
    "write whose blob list is longer than its count": write(3, 0, 4096, [0, 0], count=1),
    "write whose blobs do not make its length": write(3, 0, 4000, [0]),
    "discard shorter than its fields": body(trace.T_DISCARD, 3, b"\x00" * 18),
    "blob out of sequence": body(trace.T_BLOB, 3, trace._BLOB.pack(5, 0, 4) + b"abcd"),
    "blob with an unknown codec": body(trace.T_BLOB, 3, trace._BLOB.pack(1, 9, 4) + b"abcd"),
    "unknown record type": body(42, 3, b"\x00" * 40),
    "body over MAX_BODY": b"\x00" * (trace.MAX_BODY + 1),
}


@pytest.mark.parametrize("what", list(_BAD_BODIES))
def test_a_record_that_does_not_parse_stops_the_reading_before_it(
    tmp_path: Path, what: str
) -> None:
    good = [
        write_new(1, 0, trace.CODEC_LZ4, lz4_stored(_PAGE)),
        body(trace.T_DISCARD, 2, trace._DISCARD.pack(trace.OP_DISCARD, 0, 4096, 0)),
    ]
    after = [write(4, 4096, 4096, [0]), body(trace.T_END, 5, b"{}", dev=trace.NO_DEVICE)]
    path = tmp_path / "bad.trace"
    starts = hand_made(path, [*good, _BAD_BODIES[what], *after])
    with TraceReader(path) as r:
        recs = list(r.raw_records())
        assert not r.complete and r.end is None
        assert r.stopped_at == starts[2]
        assert r.stopped_at + r.trailing_bytes == path.stat().st_size
    assert recs == [
        (trace.T_WRITE, 1, 0, 0, 0, _PAGE, 0),
        (trace.T_DISCARD, 2, 0, 0, trace.OP_DISCARD, 0, 4096, 0),
    ]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, world\n" * 100,
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        trace.MAGIC[:5],
    ],
)
def test_a_foreign_file_is_a_trace_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "foreign"
    path.write_bytes(content)
    with pytest.raises(TraceError) as info:
        TraceReader(path)
    assert "not a zramfs trace" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TraceError):
        replay_trace(path, {})


def test_missing_directory_wrong_version_and_damaged_header(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such trace file"):
        TraceReader(tmp_path / "missing.trace")
    with pytest.raises(TraceError, match="is a directory"):
        TraceReader(tmp_path)
    path = tmp_path / "t.trace"
    Traced(path).close()
    data = bytearray(path.read_bytes())
    newer = bytearray(data)
    struct.pack_into("<H", newer, 8, trace.VERSION + 1)
    (tmp_path / "v.trace").write_bytes(bytes(newer))
    with pytest.raises(TraceError, match="version 2"):
        TraceReader(tmp_path / "v.trace")
    data[20] ^= 0x20  # inside the JSON header
    (tmp_path / "h.trace").write_bytes(bytes(data))
    with pytest.raises(TraceError, match="damaged trace header"):
        TraceReader(tmp_path / "h.trace")


def test_an_untraced_device_runs_its_class_methods(tmp_path: Path) -> None:
    """Zero cost when off: nothing on the instance, the classes' functions are the same
    objects before and after another device was traced."""
    before = {
        name: getattr(ZramDevice, name)
        for name in ("write", "read", "discard", "punch_hole", "zero_range", "flush")
    }
    plain = Registry(num_devices=1).devices[0]
    t = Traced(tmp_path / "t.trace")
    traced = t.dev
    t.close()
    for name, fn in before.items():
        assert getattr(ZramDevice, name) is fn
        assert name not in vars(plain)
        assert name in vars(traced)
    assert ZramDevice.write is IOPathMixin.write


def test_overlapping_operations_are_flagged(tmp_path: Path) -> None:
    """Two writes in flight at once: the one finishing last saw the other's ticket."""
    entered, release = threading.Event(), threading.Event()
    orig = ZramDevice.write

    def slow_write(self: ZramDevice, offset: int, data: bytes) -> int:
        if offset == 0:
            entered.set()
            release.wait(10)
        return orig(self, offset, data)

    ZramDevice.write = slow_write  # type: ignore[method-assign,assignment]
    try:
        # a fresh tracer on a fresh device, so its wrappers capture slow_write
        reg = Registry(num_devices=1)
        tr = MountTracer(TraceWriter(tmp_path / "o.trace", dict(MOUNT)))
        tr.attach(reg)
        dev = reg.devices[0]
        dev.set_disksize(1 << 20)
        a = threading.Thread(target=dev.write, args=(0, b"a" * 4096))
        a.start()
        assert entered.wait(10)
        dev.write(4096, b"b" * 4096)  # starts and ends while the first is in flight
        release.set()
        a.join()
        dev.write(8192, b"c" * 4096)  # alone
        tr.close()
    finally:
        ZramDevice.write = orig  # type: ignore[method-assign]
    with TraceReader(tmp_path / "o.trace") as r:
        writes = [x for x in r.records() if type(x) is Write]
        assert r.end is not None and r.end["overlapping"] == 1
    assert [(w.offset, w.flags) for w in writes] == [(4096, 0), (0, F_OVERLAP), (8192, 0)]
    assert replay_trace(tmp_path / "o.trace", {}).overlapping == 1


def test_writers_taking_turns_replay_exactly(tmp_path: Path) -> None:
    """The condition for exactness: one state change at a time, whatever the thread."""
    path = tmp_path / "t.trace"
    t = Traced(path, "32M")
    turn = threading.Lock()
    rnd = random.Random(11)
    words = [rnd.randbytes(16) for _ in range(40)]

    def writer(seed: int) -> None:
        r = random.Random(seed)
        for i in range(300):
            data = page(r, words)
            with turn:
                t.dev.write(r.randrange(8192) * 4096, data)
                if i % 5 == 0:
                    t.dev.discard(r.randrange(8192) * 4096, 4096)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.attr("compact", b"1")
    live = mm_stat_of(t.dev)
    t.close()
    result = replay_trace(path, {})
    assert result.overlapping == 0
    assert result.mm_stat == live


def test_killed_mount_leaves_a_trace_that_replays(zmount, tmp_path: Path) -> None:
    """SIGKILL: the records flushed before the kill replay to the mm_stat the mount showed."""
    path = tmp_path / "killed.trace"
    m = zmount("--size", "16M", "--no-compact", "--trace", str(path))
    rnd = random.Random(2)
    words = [rnd.randbytes(16) for _ in range(40)]
    fd = os.open(m.image(), os.O_RDWR)
    try:
        for _ in range(500):
            os.pwrite(fd, page(rnd, words), rnd.randrange(4096) * 4096)
    finally:
        os.close(fd)
    m.write_attr("compact", "1")
    live = m.mm_stat()
    time.sleep(0.6)  # > the writer's flush interval: the records are out
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(timeout=10)
    _wait_until_unchanged(path)  # the sink writes what it got, then exits
    with TraceReader(path) as r:
        recs = list(r.records())
        assert not r.complete
    assert sum(type(x) is Write for x in recs) == 500
    result = replay_trace(path, {})
    assert list(result.mm_stat.values()) == live


def _wait_until_unchanged(path: Path, quiet: float = 0.5, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size
        if size == last:
            return
        last = size
        time.sleep(quiet)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trace", "/nonexistent-dir/x.trace"], "no directory /nonexistent-dir"),
        (["--trace", "/"], "is a directory"),
        (["--backend", "null", "--size", "1M", "--trace", "x.trace"], "needs the zram backend"),
    ],
)
def test_mount_refuses_an_unusable_trace_path(tmp_path: Path, args: list[str], words: str) -> None:
    """Checked in the caller's terminal before anything is mounted: one line, exit code 2."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "zramfs", "mount", str(mnt), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    assert res.returncode == 2
    assert words in res.stderr and res.stderr.count("\n") == 1
    assert not os.path.ismount(mnt)


def test_the_frames_checksum_is_zlibs_crc32() -> None:
    """Whichever implementation computes a frame's CRC-32 (ISA-L's where installed, zlib's
    otherwise), it is zlib's checksum: a trace written with one reads with the other."""
    rng = random.Random(7)
    for n in (0, 1, 7, 64, 2047, 4096, 70_000):
        data = rng.randbytes(n)
        assert trace.crc32(data) == zlib.crc32(data)
        assert trace.crc32(memoryview(b"xy" + data)[2:]) == zlib.crc32(data)


def test_the_trace_uses_isal_where_it_is_a_dependency() -> None:
    """An install that lost the dependency would still be correct, only slower: catch it.
    Where it is a dependency is pyproject.toml's marker, evaluated here."""
    from packaging.requirements import Requirement

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    isal_req = next(r for r in map(Requirement, deps) if r.name == "isal")
    if isal_req.marker is not None and not isal_req.marker.evaluate():
        pytest.skip("isal is not a dependency on this platform (pyproject.toml)")
    from isal import isal_zlib

    assert trace.crc32 is isal_zlib.crc32


@pytest.mark.parametrize("binding", ["as bound", "none"])
def test_the_sink_stores_pages_with_either_lz4_call(
    tmp_path: Path, binding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink compresses a new page with LZ4_compress_fast where it is bound (the device's
    call), else with python-lz4: both write plain lz4 blocks that read back."""
    from zramfs import codecs, trace_sink

    if binding == "none":
        monkeypatch.setattr(codecs, "lz4_binding", lambda: "none")
    enc = trace_sink.RecordEncoder()
    if binding == "none":
        assert isinstance(enc.compress, functools.partial)
    else:
        assert codecs.lz4_binding() != "none"  # python-lz4 carries the function
        assert enc.compress(bytes(4096)) == codecs.get_codec("lz4").compress(bytes(4096))
    rnd = random.Random(12)
    pages = [rnd.randbytes(1024) * 4, bytes(4096), rnd.randbytes(64) * 64]
    path = tmp_path / "sink.trace"
    hand_made(path, [])
    with open(path, "ab") as out:
        for i, data in enumerate(pages + pages[:1]):
            enc.encode((trace.T_WRITE, i, 0, 0, 4096 * i, data, 0), out)
        enc.encode((trace.T_WRITE, 9, 0, 0, 0, pages[2] + pages[0][:100], 0), out)  # 2 chunks
    with TraceReader(path) as r:
        recs = list(r.records())
    got = [(rec.offset, rec.data) for rec in recs if isinstance(rec, Write)]
    assert len(got) == len(recs) and got == [
        (4096 * i, d) for i, d in enumerate(pages + pages[:1])
    ] + [(0, pages[2] + pages[0][:100])]
