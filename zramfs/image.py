"""What the FUSE front end needs of an image, and the plain in-memory image.

Owns the image interface, `BlockImage`: the calls `zramfs.fs` makes on the object behind
``MNT/dev/zram<N>`` (open/close accounting, read, write, punch_hole, flush, disksize) and their
block-device semantics, which every backend shares and ``tests/test_image.py`` checks against
each of them:

- ``disksize``: the image's size in bytes (0 while a zram device is uninitialised), read on every
  request because ``disksize``/``reset`` change it behind open files;
- ``read(offset, length)``: the bytes, zeros where nothing was written; short at the end, ``b""``
  at or past it;
- ``write(offset, data)``: the bytes written, short when the request runs past the end; ENOSPC
  when it starts at or past the end;
- ``punch_hole(offset, length)``: the range reads back zeros; whole blocks stop costing memory
  (a discard, what a loop device sends for ``fstrim``/``blkdiscard``);
- ``flush()``: a REQ_PREFLUSH: nothing to write out in RAM, counted where the backend counts it;
- ``open()``/``close()``: one user of the image each (a FUSE open); a backend may refuse an open
  (EBUSY during a zram reset).

Errors are OSErrors carrying the errno the kernel would return (EINVAL for a negative offset).

Backends: `zramfs.device.ZramDevice` (compression, zsmalloc, counters: the emulator itself) and
`MemoryImage` here (an anonymous mmap: no compression, no allocator — the null baseline that
``zramfs mount --backend null`` serves, to tell what FUSE and Python cost from what zram's work
costs).  The interface is a `typing.Protocol`: `ZramDevice` satisfies it structurally, and the
front end's hot path calls the backend's methods directly (no adapter, no per-request cost).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import Protocol, runtime_checkable

__all__ = ["BlockImage", "MemoryImage", "PAGE_SIZE"]

PAGE_SIZE = 4096
#: How much the zero-filling fallback of `MemoryImage.punch_hole` writes at a time (its
#: temporary zero buffer stays this small whatever the hole's size).
_ZERO_CHUNK = 1 << 20


@runtime_checkable
class BlockImage(Protocol):
    """The image behind ``MNT/dev/zram<N>`` (semantics in the module docstring)."""

    @property
    def disksize(self) -> int: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int: ...

    def punch_hole(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


def _error(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


class MemoryImage:
    """A plain RAM image of a fixed size: an anonymous private mmap.

    Zero-filled; a page costs memory from its first write until a punch_hole drops it.  Reads
    copy a slice out and writes copy the request in — the least any image can do, which is the
    point of the null baseline.  Data copies take no lock: a slice copy runs under the GIL, as
    the old ``scripts/nullfs.py`` relied on too; only the open count has one.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"image size must be positive, not {size}")
        # Page-aligned, as zram's disksize_store rounds it.  A plain attribute, as ZramDevice's
        # is, not a property: zramfs.fs reads it on every request, and the baseline must not
        # pay more per request than the device it is the baseline of.  Never reassigned.
        self.disksize = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        self._map = mmap.mmap(-1, self.disksize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.open_count = 0
        self._count_lock = threading.Lock()

    def open(self) -> None:
        with self._count_lock:
            self.open_count += 1

    def close(self) -> None:
        with self._count_lock:
            if self.open_count <= 0:
                raise _error(errno.EBADF, "image is not open")
            self.open_count -= 1

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise _error(errno.EINVAL, "negative offset or length")
        end = min(offset + length, self.disksize)
        if offset >= end:
            return b""
        return self._map[offset:end]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        if offset < 0:
            raise _error(errno.EINVAL, "negative offset")
        n = len(data)
        if n == 0:
            return 0
        if offset >= self.disksize:
            raise _error(errno.ENOSPC, f"write at {offset} past the end of the image")
        if offset + n > self.disksize:
            n = self.disksize - offset
            data = memoryview(data)[:n]
        self._map[offset : offset + n] = data
        return n

    def punch_hole(self, offset: int, length: int) -> None:
        """Zero [offset, offset+length) within the image: whole pages are dropped
        (MADV_DONTNEED: they read back as zeros and stop costing memory), partial edges
        are written with zeros."""
        if offset < 0 or length < 0:
            raise _error(errno.EINVAL, "negative offset or length")
        end = min(offset + length, self.disksize)
        if offset >= end:
            return
        first = (offset + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        last = end // PAGE_SIZE * PAGE_SIZE
        if first >= last:  # inside one page, or across one boundary
            self._map[offset:end] = bytes(end - offset)
            return
        self._map[offset:first] = bytes(first - offset)
        try:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)
        except OSError:
            # EINVAL on locked memory (`zramfs mount --mlock`): the pages stay, zeroed.
            for pos in range(first, last, _ZERO_CHUNK):
                stop = min(pos + _ZERO_CHUNK, last)
                self._map[pos:stop] = bytes(stop - pos)
        self._map[last:end] = bytes(end - last)

    def flush(self) -> None:
        """Nothing to write out: the data is in RAM as soon as write() returns."""
