"""The shared-memory ring that carries a traced mount's records to its sink process.

Owns the byte stream between `zramfs.trace_writer.TraceWriter` (one producer at a time: it writes
under its own lock) and the sink process (`zramfs.trace_sink`, the one consumer): a memfd the
two map, a header of two counters and a power-of-two data area used as a circular buffer.

Why not the pipe it replaced: moving every page through a pipe woke the sink on the other CPU
once a batch and copied each page into freshly allocated pipe pages; under FUSE on two CPUs
that cost the mount 10–14 µs of CPU per traced 4 KiB write (docs/trace-format.md,
"Cost").  Here the producer copies a record into memory the sink already maps and
publishes a counter; the sink looks on its own timer, so the I/O path never wakes anyone.

The protocol, single producer and single consumer:

* ``head`` (bytes ever published, written only by the producer) and ``tail`` (bytes ever
  consumed, written only by the consumer) are 8-byte counters on their own cache lines,
  stored and loaded through ctypes as aligned 8-byte values: one instruction each, never
  seen half-written.  (Not `struct.pack_into`: it zeroes its target before it writes the
  value, so the other side could read a counter of 0 — a stress test caught exactly that.)
* The producer copies a record's bytes in at ``head`` (modulo the capacity, wrapping in two
  pieces), then stores the new ``head``; it waits while ``head - tail`` leaves no room,
  having woken the consumer once (the consumer sleeps between looks; see `RingWriter.put`).
* The consumer loads ``head``, copies out the bytes from ``tail`` to it, then stores ``tail``.
* Correct order of those copies and stores rests on x86-64's total store order (a store is
  never seen before an earlier store, a load never passes an earlier load, a store never
  passes an earlier load); `available` says so, and `TraceWriter` uses its pipe elsewhere.

The ring is a byte stream: a record longer than the free space goes in in pieces, so no
record size is too big for it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time
from collections.abc import Callable

#: the counters' layout: head at 0, tail at 64 (separate cache lines: the two sides write
#: them, and sharing a line would bounce it between the CPUs on every record)
HEAD_AT, TAIL_AT = 0, 64
HEADER = 128
#: how long a producer facing a full ring sleeps before it looks again (the sink polls every
#: few milliseconds; a full ring means it is that far behind: back-pressure)
FULL_WAIT = 0.0005


def available() -> bool:
    """Whether this machine's memory order makes the ring correct (see module)."""
    return platform.machine().lower() in ("x86_64", "amd64")


class SinkGone(Exception):
    """The consumer is gone while the producer waited for room."""


class RingError(Exception):
    """The ring's counters say something impossible (a bug, never data to trust)."""


def _counters(m: mmap.mmap) -> tuple[ctypes.c_uint64, ctypes.c_uint64]:
    """ctypes views of `head` and `tail` in the mapping: `.value` is one 8-byte load or
    store (ctypes copies a c_uint64 with a memcpy of constant size: a single move)."""
    return ctypes.c_uint64.from_buffer(m, HEAD_AT), ctypes.c_uint64.from_buffer(m, TAIL_AT)


class RingWriter:
    """The producer's side: creates the memfd, writes records in, publishes `head`."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two, not {capacity}")
        self.capacity = capacity
        self.size = HEADER + capacity
        #: the fd the consumer inherits (`pass_fds`); the producer closes it once passed
        self.fd = os.memfd_create("zramfs-trace-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self._map = mmap.mmap(self.fd, self.size)
        except OSError:
            os.close(self.fd)
            raise
        # Touch every page now (a fault in the I/O path costs ~1 µs a page, the first time
        # round); the memfd's pages are the ring's whole footprint from here on.
        self._map[HEADER:] = bytes(capacity)
        self._head_ref, self._tail_ref = _counters(self._map)
        self._head = 0
        #: the last `tail` read: the room it leaves is used before reading it again
        self._tail = 0

    def close_fd(self) -> None:
        """Close the producer's copy of the fd (the mapping stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def put(
        self, data: bytes, alive: Callable[[], bool], wake: Callable[[], None] = lambda: None
    ) -> None:
        """Append `data`, waiting while the ring is full (after one `wake()`: a consumer that
        polls should look now); `SinkGone` if `alive()` says the consumer died meanwhile
        (then part of `data` may be in the ring, unread)."""
        view = memoryview(data)
        cap = self.capacity
        m = self._map
        while view:
            room = cap - (self._head - self._tail)
            if room < len(view):
                room = self._reload_tail()
                if room == 0:
                    wake()
                while room == 0:
                    if not alive():
                        raise SinkGone
                    time.sleep(FULL_WAIT)
                    room = self._reload_tail()
            n = min(room, len(view))
            pos = self._head & (cap - 1)
            first = min(n, cap - pos)
            m[HEADER + pos : HEADER + pos + first] = view[:first]
            if first < n:
                m[HEADER : HEADER + n - first] = view[first:n]
            self._head += n
            self._head_ref.value = self._head
            view = view[n:]

    def _reload_tail(self) -> int:
        """Read `tail` again; the room it leaves."""
        tail = self._tail_ref.value
        if not self._tail <= tail <= self._head:
            raise RingError(f"tail went from {self._tail} to {tail} (head {self._head})")
        self._tail = tail
        return self.capacity - (self._head - tail)

    def close(self) -> None:
        """Unmap (the consumer's mapping keeps the memory until it exits)."""
        self.close_fd()
        del self._head_ref, self._tail_ref  # they export the mapping's buffer
        self._map.close()


class RingReader:
    """The consumer's side: maps the producer's memfd and takes what was published."""

    def __init__(self, fd: int, size: int) -> None:
        self._map = mmap.mmap(fd, size)
        os.close(fd)
        self.capacity = size - HEADER
        self._head_ref, self._tail_ref = _counters(self._map)
        self._tail = self._tail_ref.value

    def take(self) -> bytes:
        """Everything published since the last call (b"" if nothing), now consumed."""
        m = self._map
        head = self._head_ref.value
        n = head - self._tail
        if n == 0:
            return b""
        cap = self.capacity
        if not 0 < n <= cap:
            raise RingError(f"head went to {head} with tail {self._tail}")
        pos = self._tail & (cap - 1)
        if pos + n <= cap:
            data = m[HEADER + pos : HEADER + pos + n]
        else:
            data = m[HEADER + pos : HEADER + cap] + m[HEADER : HEADER + n - (cap - pos)]
        self._tail = head
        self._tail_ref.value = head
        return data

    def close(self) -> None:
        del self._head_ref, self._tail_ref
        self._map.close()
