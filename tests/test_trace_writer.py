"""`TraceWriter` and its sink process, one contract run against each transport.

As CPython's selectors tests do for their backends: `WriterContract` says what a writer
does whatever carries its records (the shared-memory ring, the pipe), and `TestRing` and
`TestPipe` run it.  Then the encoder the sink runs (zramfs/trace_sink.py): contents found
again by CRC-32 are confirmed byte for byte, so forced collisions change nothing.
"""

from __future__ import annotations

import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.trace_files import MOUNT, hand_made
from zramfs import trace, trace_ring, trace_sink, trace_writer
from zramfs.trace import (
    NO_DEVICE,
    OP_DISCARD,
    T_CONTROL,
    T_DISCARD,
    T_READ,
    T_WRITE,
    Control,
    Discard,
    Read,
    TraceReader,
    Write,
)
from zramfs.trace_writer import TraceWriter

ROOT = Path(__file__).resolve().parents[1]


def records_of(path: Path) -> list[object]:
    with TraceReader(path) as r:
        return list(r.records())


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class WriterContract:
    transport: str

    def writer(self, path: Path, **kw: float) -> TraceWriter:
        w = TraceWriter(path, dict(MOUNT), transport=self.transport, **kw)
        assert w.transport == self.transport
        return w

    def test_every_record_comes_back_in_order(self, tmp_path: Path) -> None:
        """More page data than the ring holds (it wraps), repeated and distinct contents,
        every record shape the hook pushes for a device."""
        path = tmp_path / "t.trace"
        rnd = random.Random(3)
        pages = [rnd.randbytes(2048) + bytes(2048) for _ in range(300)] + [bytes(4096)]
        w = self.writer(path)
        expect: list[tuple[type, int, Any]] = []
        for i in range(6000):
            data = pages[rnd.randrange(len(pages))] if i % 3 else rnd.randbytes(4096)
            w.push((T_WRITE, w.now(), 0, 0, i * 4096, data, 0))
            expect.append((Write, i * 4096, data))
            if i % 100 == 0:
                w.push((T_DISCARD, w.now(), 0, 0, OP_DISCARD, i * 4096, 4096, 0))
                w.push((T_READ, w.now(), 0, 0, i * 4096, 8192, 0))
                expect += [(Discard, i * 4096, 4096), (Read, i * 4096, 8192)]
        w.push((T_CONTROL, w.now(), NO_DEVICE, 0, 0, "/sys/block/zram0/compact", b"1", 0, 0))
        w.close()
        w.close()  # idempotent
        got = records_of(path)
        assert [type(x) for x in got] == [e[0] for e in expect] + [Control]
        for rec, (_, offset, x) in zip(got, expect, strict=False):
            assert isinstance(rec, Write | Discard | Read) and rec.offset == offset
            assert (rec.data if isinstance(rec, Write) else rec.length) == x
        with TraceReader(path) as r:
            list(r.records())
            assert r.complete and r.end is not None
            assert r.end["records"] == len(expect) + 1

    def test_a_quiet_writer_reaches_the_file_within_its_interval(self, tmp_path: Path) -> None:
        """One record and silence: it is in the file, readable, before `close`."""
        path = tmp_path / "t.trace"
        w = self.writer(path, flush_interval=0.1)
        try:
            w.push((T_WRITE, w.now(), 0, 0, 4096, b"q" * 4096, 0))
            assert wait_for(lambda: len(records_of(path)) == 1, timeout=5)
        finally:
            w.close()

    def test_a_dead_sink_stops_tracing_with_one_error(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The I/O path goes on: pushes neither raise nor hang, one error is logged."""
        path = tmp_path / "t.trace"
        w = self.writer(path, flush_interval=0.1)
        w._sink.kill()
        w._sink.wait()
        with caplog.at_level(logging.ERROR, logger="zramfs.trace_writer"):
            deadline = time.monotonic() + 20
            i = 0
            while w.failed is None and time.monotonic() < deadline:
                w.push((T_WRITE, w.now(), 0, 0, i * 4096, os.urandom(4096), 0))
                i += 1
                if i % 64 == 0:
                    time.sleep(0.01)
            assert w.failed is not None and "sink is gone" in w.failed
            for _ in range(100):
                w.push((T_WRITE, w.now(), 0, 0, 0, bytes(4096), 0))
            w.close()
        errors = [r for r in caplog.records if "writing stopped" in r.getMessage()]
        assert len(errors) == 1

    def test_a_killed_writer_leaves_every_record_it_sent(self, tmp_path: Path) -> None:
        """SIGKILL after the records were sent: the sink writes them all, then exits."""
        path = tmp_path / "k.trace"
        script = (
            "import os, signal, sys, time\n"
            "from zramfs.trace import T_WRITE\n"
            "from zramfs.trace_writer import TraceWriter\n"
            "w = TraceWriter(sys.argv[1], {}, transport=sys.argv[2], flush_interval=0.1)\n"
            "for i in range(3000):\n"
            "    w.push((T_WRITE, w.now(), 0, 0, i * 4096, os.urandom(2048) * 2, 0))\n"
            "print(w._sink.pid, flush=True)\n"
            "time.sleep(0.6)\n"  # > the flush interval: the last batch is sent
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(path), self.transport],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == -signal.SIGKILL
        sink = int(proc.stdout.split()[0])
        assert wait_for(lambda: _gone(sink), timeout=30)
        with TraceReader(path) as r:
            got = [x for x in r.records() if type(x) is Write]
            assert not r.complete
        assert [x.offset for x in got] == [i * 4096 for i in range(3000)]


def _gone(pid: int) -> bool:
    """The process exited (gone, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not trace_ring.available(), reason="the ring needs total store order")
class TestRing(WriterContract):
    transport = "ring"

    def test_a_ring_error_stops_tracing_not_the_io_path(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        w = self.writer(tmp_path / "t.trace")

        def broken(data: bytes, alive: Callable[[], bool], wake: Callable[[], None]) -> None:
            raise trace_ring.RingError("tail went from 5 to 3 (head 9)")

        assert w._ring is not None
        monkeypatch.setattr(w._ring, "put", broken)
        with caplog.at_level(logging.ERROR, logger="zramfs.trace_writer"):
            for i in range(40):
                w.push((T_WRITE, w.now(), 0, 0, i * 4096, os.urandom(4096), 0))
            w.close()
        assert w.failed is not None and "tail went" in w.failed
        assert sum("writing stopped" in r.getMessage() for r in caplog.records) == 1

    def test_it_is_the_default_here(self, tmp_path: Path) -> None:
        w = TraceWriter(tmp_path / "t.trace", dict(MOUNT))
        w.close()
        assert w.transport == "ring"


class TestPipe(WriterContract):
    transport = "pipe"


def test_an_unknown_transport_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown trace transport 'carrier-pigeon'"):
        TraceWriter(tmp_path / "t.trace", dict(MOUNT), transport="carrier-pigeon")
    assert trace_writer.default_transport() in trace_writer.TRANSPORTS


# ---------------------------------------------------------------------------- the encoder
def _encode(
    path: Path,
    items: list[tuple[object, ...]],
    enc: trace_sink.RecordEncoder,
    *,
    bytesio: bool = False,
) -> None:
    """Encode into the trace at `path`: straight into the file (read back by pread), or into
    a BytesIO (read back from its buffer) appended to the file afterwards."""
    hand_made(path, [])
    with open(path, "a+b") as out:
        if not bytesio:
            for item in items:
                enc.encode(item, out)
            return
        buf = io.BytesIO()
        for item in items:
            enc.encode(item, buf)
        out.write(buf.getvalue())


@pytest.mark.parametrize("where", ["file", "bytesio"])
@pytest.mark.parametrize("recent", [512, 2])
def test_colliding_keys_never_confuse_two_contents(tmp_path: Path, where: str, recent: int) -> None:
    """Every content given the same key: each write still reads back its own data, and
    each distinct content is stored once (compared with the stored one, from memory or,
    past `RECENT`, read back from the output)."""
    rnd = random.Random(8)
    distinct = [rnd.randbytes(1024) * 4 for _ in range(12)] + [bytes(4096)]
    order = list(range(len(distinct))) + [rnd.randrange(len(distinct)) for _ in range(200)]
    items: list[tuple[object, ...]] = [
        (T_WRITE, n, 0, 0, n * 4096, distinct[i], 0) for n, i in enumerate(order)
    ]
    # and writes of several chunks, which take the general path (BLOB records)
    items += [
        (T_WRITE, 10_000 + n, 0, 0, 0, distinct[n % 13] + distinct[(n * 5) % 13][:100], 0)
        for n in range(20)
    ]
    enc = trace_sink.RecordEncoder()
    enc.key = lambda data: 7  # every content collides
    enc.RECENT = recent
    path = tmp_path / "c.trace"
    _encode(path, items, enc, bytesio=where == "bytesio")
    chunks = {it[5][i : i + 4096] for it in items for i in range(0, len(it[5]), 4096)}  # type: ignore[index,arg-type]
    assert enc.blobs == len(chunks)
    got = records_of(path)
    assert [x.data for x in got] == [it[5] for it in items]  # type: ignore[attr-defined]


def test_a_crc_collision_is_kept_apart(tmp_path: Path) -> None:
    """Two real contents with one CRC-32 (crafted: the last four bytes fix the CRC)."""
    a = bytes(4096)
    b = _same_crc(b"\x01" * 4092, trace.crc32(a))
    assert a != b and trace.crc32(a) == trace.crc32(b)
    path = tmp_path / "t.trace"
    enc = trace_sink.RecordEncoder()
    _encode(path, [(T_WRITE, i, 0, 0, i * 4096, (a, b)[i % 2], 0) for i in range(6)], enc)
    assert enc.blobs == 2
    assert [x.data for x in records_of(path)] == [(a, b)[i % 2] for i in range(6)]  # type: ignore[attr-defined]


def _same_crc(prefix: bytes, target: int) -> bytes:
    """`prefix` + 4 bytes whose CRC-32 is `target` (CRC-32 is linear: solve for the tail)."""
    base = trace.crc32(prefix + b"\0\0\0\0")
    # the CRC of the tail bits alone, relative to a zero tail, for each of the 32 bits
    cols = []
    for bit in range(32):
        tail = (1 << bit).to_bytes(4, "little")
        cols.append(trace.crc32(prefix + tail) ^ base)
    want = base ^ target
    # Gaussian elimination over GF(2): find x with XOR of cols[i] for set bits == want
    rows = [(c, 1 << i) for i, c in enumerate(cols)]
    basis: dict[int, tuple[int, int]] = {}
    for vec, comb in rows:
        for top in sorted(basis, reverse=True):
            if vec >> top & 1:
                bv, bc = basis[top]
                vec, comb = vec ^ bv, comb ^ bc
        if vec:
            basis[vec.bit_length() - 1] = (vec, comb)
    x = 0
    for top in sorted(basis, reverse=True):
        if want >> top & 1:
            bv, bc = basis[top]
            want, x = want ^ bv, x ^ bc
    assert want == 0
    return prefix + x.to_bytes(4, "little")


def test_a_write_message_decodes_to_the_tuple_push_locked_sends() -> None:
    """The two message kinds a writer sends (the tagged write, the marshal'd tuple) decode
    to the same record tuple, every field distinct and non-zero, at any position."""
    import marshal
    import struct

    data = random.Random(4).randbytes(4096) + b"tail"
    item = (T_WRITE, 0x1122334455, 0xBEEF, 1, 0x7766554433, data, 0)
    tagged = (
        trace_writer._MSG_WRITE.pack(
            trace_writer.MSG_WRITE_HEAD + len(data), trace_writer.MSG_WRITE_TAG, *item[1:5]
        )
        + data
    )
    m = marshal.dumps(item)
    plain = struct.pack("<I", len(m)) + m
    stream = memoryview(b"junk" + tagged + plain)
    n1 = len(tagged) - 4
    assert trace_sink.decode_message(stream, 4, n1) == item
    assert trace_sink.decode_message(stream, 4 + len(tagged), len(m)) == item
    assert marshal.dumps(item)[0] != trace_writer.MSG_WRITE_TAG  # no marshal data starts with it


def test_the_hook_sends_a_write_as_the_tagged_message(tmp_path: Path) -> None:
    """`push_write_locked` is what the hook calls for a write that succeeded: its records
    read back exactly (the round-trip tests cover the rest)."""
    path = tmp_path / "t.trace"
    w = TraceWriter(path, dict(MOUNT))
    pages = [bytes(4096), b"\x01" * 4096, random.Random(2).randbytes(8192)]
    with w.lock:
        for i, p in enumerate(pages):
            w.push_write_locked(w.now(), 3, i % 2, i * 8192, p)
    w.close()
    got = records_of(path)
    assert [(x.dev, x.flags, x.offset, x.data) for x in got] == [  # type: ignore[attr-defined]
        (3, i % 2, i * 8192, p) for i, p in enumerate(pages)
    ]
