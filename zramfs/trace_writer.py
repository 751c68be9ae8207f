"""The trace's writing side in the mount: `TraceWriter` and how it reaches its sink.

Owns the producer side of a `zramfs mount --trace FILE` recording: the file's header, the
batches of records the I/O path (through `zramfs.trace_hook`) appends under one lock, and
their transport to the sink process (`zramfs.trace_sink`) that deduplicates, compresses,
frames and appends them — through the shared-memory ring (`zramfs.trace_ring`) or a pipe.
The messages of that stream (a length, then a marshal'd record tuple or a tagged write) are
defined here; the file's format is `zramfs.trace`'s (docs/trace-format.md, "Writing").
"""

from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from . import trace_ring
from .trace import _FILE_HEAD, MAGIC, NO_DEVICE, PAGE_SIZE, T_END, VERSION, crc32

log = logging.getLogger(__name__)

#: records are sent to the sink in batches of this many bytes (one pipe write and one wake-up
#: of the sink per batch: a write per record cost the mount's process ~19 µs per 4 KiB write
#: in wake-ups), or when a batch waited half the flush interval
BATCH_BYTES = 256 << 10
#: the ring transport's batch and size: copying a batch in wakes nobody, so batches can be
#: small (a killed mount loses less); 16 MiB is ~0.15 s of 4 KiB writes at 25,000 IOPS, three
#: times what arrives between two looks of the sink (docs/trace-format.md, "Writing")
RING_BATCH_BYTES = 64 << 10
RING_BYTES = 16 << 20
#: how a `TraceWriter` hands its batches to the sink process
TRANSPORTS = ("ring", "pipe")
#: fcntl: set a pipe's capacity (Linux)
F_SETPIPE_SZ = 1031
#: the framing of one message to the sink: its length, then a marshal'd record tuple ...
_PIPE_LEN = struct.Struct("<I")
#: ... or, for the commonest record (a write that succeeded), this tag, which no marshal
#: data starts with, and the write's fields (t_ns, dev, flags, offset), then its data: no
#: tuple and no marshal copy of the page (0.26 against 0.68 µs a 4 KiB write, in process)
MSG_WRITE_TAG = 0
_MSG_WRITE = struct.Struct("<IBQHBQ")  # length, tag, t_ns, dev, flags, offset
MSG_WRITE_HEAD = _MSG_WRITE.size - _PIPE_LEN.size  # the body's bytes before the data


def default_transport() -> str:
    """The ring where this machine's memory order makes it correct, else the pipe."""
    return "ring" if trace_ring.available() else "pipe"


class TraceWriter:
    """Append records to a new trace file from any thread; a sink process does the work.

    The file's header is written here; the records, one length-prefixed message each (a
    marshal'd tuple (type, t_ns, dev, flags, fields... — the shapes `TraceReader.raw_records`
    gives back), or a tagged write from `push_write_locked`), are batched under `lock` (their
    order is the trace's order) and handed to a sink process (`zramfs.trace_sink`: its own
    interpreter and GIL) that deduplicates, compresses, frames and appends them, flushing the
    file at least every `flush_interval` seconds while records arrive.  A producer pays a
    pack and an append; the one that fills a batch sends it, and a timer thread sends a batch
    that waited half of `flush_interval`.

    The transport (`TRANSPORTS`, docs/trace-format.md "Writing"):

    * ``"ring"`` (the default where `zramfs.trace_ring.available`): batches of
      `RING_BATCH_BYTES` are copied into a 16 MiB shared-memory ring the sink polls on its
      own timer, so the I/O path wakes nobody.
    * ``"pipe"``: batches of `BATCH_BYTES` are written into a 1 MiB pipe (the GIL released
      meanwhile), which wakes the sink.

    A producer waits only when the sink is a whole ring or pipe behind (back-pressure: the
    I/O path never writes the file itself, but a disk slower than the workload slows it).
    A killed mount loses its unsent batch (at most a batch, or half of `flush_interval`); the
    sink writes everything it was sent, and the file ends in whole records or in one partial
    record the reader drops.  If the sink fails (disk full: it says why on the mount's
    stderr) tracing stops with one logged error and the I/O path goes on untraced.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mount: dict[str, Any],
        *,
        flush_interval: float = 0.1,
        transport: str | None = None,
    ) -> None:
        transport = transport or default_transport()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown trace transport {transport!r} (known: {TRANSPORTS})")
        self.transport = transport
        self.path = os.fspath(path)
        #: CLOCK_MONOTONIC (ns) at t=0 of the trace
        self.t0 = time.monotonic_ns()
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
        with open(self.path, "wb") as fh:
            fh.write(head + struct.pack("<I", crc32(head[8:])))
        # With the ring, the pipe carries only wake-ups: the sink sees its end of input (the
        # mount closed it, or died) and takes the ring's last records.
        self._ring = trace_ring.RingWriter(RING_BYTES) if transport == "ring" else None
        ring_arg = [f"--ring={self._ring.fd},{self._ring.size}"] if self._ring else []
        try:
            # Its own session: a Ctrl-C meant for a foreground mount must not kill the sink
            # before it has written what it was sent.
            self._sink = subprocess.Popen(
                [sys.executable, "-m", "zramfs.trace_sink", self.path, str(flush_interval)]
                + ring_arg,
                stdin=subprocess.PIPE,
                start_new_session=True,
                pass_fds=[self._ring.fd] if self._ring else [],
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
        finally:
            if self._ring is not None:
                self._ring.close_fd()  # the sink has its own copy
        assert self._sink.stdin is not None
        self._pipe = self._sink.stdin.fileno()
        self._batch_bytes = RING_BATCH_BYTES if self._ring else BATCH_BYTES
        if self._ring is None:
            try:
                fcntl.fcntl(self._pipe, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB works, waits more
        else:
            os.set_blocking(self._pipe, False)  # a wake-up never waits (see _wake_sink)
        #: held while a record is batched or the batch goes into the pipe (the order of the
        #: records is the trace's order)
        self.lock = threading.Lock()
        self.flush_interval = flush_interval
        self.failed: str | None = None
        self._closed = False
        self._buf: list[bytes] = []
        self._buffered = 0
        self._sent_at = time.monotonic()
        self._timer_stop = threading.Event()
        self._timer = threading.Thread(target=self._run_timer, name="zramfs-trace", daemon=True)
        self._timer.start()

    def now(self) -> int:
        """Nanoseconds since the trace began (CLOCK_MONOTONIC)."""
        return time.monotonic_ns() - self.t0

    def push(self, item: tuple[Any, ...]) -> None:
        """Record one tuple, (type, t_ns, dev, flags, ...fields)."""
        with self.lock:
            self.push_locked(item)

    def push_locked(self, item: tuple[Any, ...]) -> None:
        """`push` for a caller holding `lock` (the tracer orders its records under it)."""
        m = marshal.dumps(item)
        buf = self._buf
        buf.append(_PIPE_LEN.pack(len(m)))
        buf.append(m)
        self._buffered += len(m)
        if self._buffered >= self._batch_bytes:
            self._send_locked()

    def push_write_locked(self, t_ns: int, dev: int, flags: int, offset: int, data: bytes) -> None:
        """`push_locked((T_WRITE, t_ns, dev, flags, offset, data, 0))`, cheaper: the tagged
        message the sink reads back into that tuple."""
        buf = self._buf
        buf.append(
            _MSG_WRITE.pack(MSG_WRITE_HEAD + len(data), MSG_WRITE_TAG, t_ns, dev, flags, offset)
        )
        buf.append(data)
        self._buffered += len(data)
        if self._buffered >= self._batch_bytes:
            self._send_locked()

    def _send_locked(self) -> None:
        """Hand the batch to the sink (caller holds `lock`)."""
        data = b"".join(self._buf)
        self._buf.clear()
        self._buffered = 0
        self._sent_at = time.monotonic()
        if self.failed is not None:
            return
        if self._ring is not None:
            try:
                self._ring.put(data, self._sink_alive, self._wake_sink)
            except trace_ring.SinkGone:
                self._sink_gone()
            except trace_ring.RingError as exc:  # a bug: stop tracing, keep the I/O path
                self._stop(str(exc))
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._pipe, view) :]
        except OSError as exc:
            self._stop(f"the trace sink is gone ({exc.strerror})")

    def _sink_alive(self) -> bool:
        return self._sink.poll() is None

    def _wake_sink(self) -> None:
        """The ring is full: a byte down the pipe makes the sink look now, not at its next
        poll (so a fast workload runs at the sink's speed, not at a ring per poll)."""
        try:
            os.write(self._pipe, b"\0")
        except (BlockingIOError, BrokenPipeError):
            pass  # wake-ups already pending; or the sink is gone, which `alive` reports

    def _sink_gone(self) -> None:
        """The sink died (the ring's way to learn it; the pipe's is EPIPE)."""
        self._stop(f"the trace sink is gone (exit code {self._sink.poll()})")

    def _stop(self, why: str) -> None:
        """Stop tracing, once, with one logged error; the I/O path goes on untraced."""
        if self.failed is None:
            self.failed = f"{self.path}: {why}"
            log.error("trace: writing stopped: %s", self.failed)

    def _run_timer(self) -> None:
        """Send a batch that waited `flush_interval` (a workload that went quiet); notice a
        dead sink, which a ring with room left would not."""
        while not self._timer_stop.wait(self.flush_interval / 2):
            with self.lock:
                if self._buf and time.monotonic() - self._sent_at >= self.flush_interval / 2:
                    self._send_locked()
                if self._ring is not None and not self._closed and not self._sink_alive():
                    self._sink_gone()

    def close(self, timeout: float = 60.0) -> None:
        """Send the END record and wait for the sink to write, fsync and close the file (at
        most `timeout` seconds).  Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self.push_locked((T_END, self.now(), NO_DEVICE, 0, {"duration_ns": self.now()}))
            self._send_locked()
            self.failed = self.failed or "closed"
        self._timer_stop.set()
        self._timer.join()
        assert self._sink.stdin is not None
        try:
            self._sink.stdin.close()
        except OSError:
            pass
        try:
            code = self._sink.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("trace: the sink still writes %s after %.0f s", self.path, timeout)
            return
        if self._ring is not None:
            self._ring.close()
        if code != 0:
            log.error("trace: the sink of %s exited with %d", self.path, code)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
