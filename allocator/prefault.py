"""Fault the arena's frames in ahead of the allocator's bump pointer, on a helper thread.

This module owns `Prefaulter` (one per `allocator.memory.PhysicalMemory` arena) and the
process's one prefault thread.

Why: the arena is a lazily backed ``mmap``, so the first touch of a fresh frame costs a page
fault (zeroing a page plus the page-table work: 2.7 µs a frame on the development VM) in
whichever thread first writes it — the thread filling a new zspage, inside zs_malloc.  The
kernel's alloc_page hands out memory that is already RAM, so that cost is the simulation's, not
zsmalloc's, and during a fill it is a sixth of a 4 KiB write.  ``madvise(MADV_POPULATE_WRITE)``
(Linux 5.14) faults a range in writable without changing its contents; issued through ctypes,
which releases the GIL for the call, it runs on the other core while the allocator goes on.

How: `PhysicalMemory.alloc_page` calls `Prefaulter.ahead` when its bump pointer reaches the
mark the previous call returned (never on a frame reused from the free heap; those were faulted
in already or were dropped on purpose).  `ahead` queues the next `CHUNK_FRAMES` frames past the
populated frontier and returns a mark half a chunk before the new frontier, so the thread has
half a chunk of allocations' time to finish.  That time must cover the thread's wait for the
GIL, before and after its madvise: a thread that holds the GIL hands it over only every switch
interval (5 ms), so the chunk is 8 MiB (with 2 MiB, a fill went as fast with prefaulting as
without).  The process RSS runs at most one chunk ahead of the frames in use, and
`PhysicalMemory.drop_free_frames` gives those frames back (`retreat`).  Nothing below
`START_FRAME` is prefaulted: small pools (most tests, a freshly initialised device) start no
thread.

Correctness never depends on it: a frame the thread has not reached yet faults in as before,
MADV_POPULATE_WRITE leaves the bytes of a page that is already there as they are (the
allocator may be writing to the same frame meanwhile), and any error (EINVAL on kernels before
5.14, ENOMEM) just stops prefaulting — for the process on EINVAL, for that arena otherwise.

Locks: ``Prefaulter.lock`` (a plain ``threading.Lock``, outside the ranked order of
`allocator.locks` like the primitives' own locks) is held by the thread around each madvise, by
`close`, so an arena is never unmapped under a running madvise, and by `retreat`, which the
memory calls under its zone lock (the thread never takes the zone lock); it is never held while
taking another lock.  `ahead` runs under the zone lock and takes no lock (a
``SimpleQueue.put``).  A queued job holds a reference to the arena's ``mmap`` object, so an
arena dropped without `close` stays mapped until its pending jobs are done.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Final

#: madvise advice (include/uapi/asm-generic/mman-common.h); Python's mmap module has it from 3.13
MADV_POPULATE_WRITE: Final = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: frames queued per job, and the RSS the arena may run ahead of the frames in use (8 MiB of
#: 4 KiB frames)
CHUNK_FRAMES: Final = 2048
#: the first frame worth prefaulting from: pools smaller than this start no thread
START_FRAME: Final = 512
#: `ahead`'s answer once prefaulting is off: a mark the bump pointer never reaches
NEVER: Final = 1 << 62

_madvise: Callable[[int, int, int], int] | None = None
_supported = True  # False after an EINVAL: this kernel has no MADV_POPULATE_WRITE
_queue: queue.SimpleQueue[tuple[Prefaulter, mmap.mmap, int, int, int]] | None = None
_thread_pid = 0
_start_lock = threading.Lock()
_live: weakref.WeakSet[Prefaulter] = weakref.WeakSet()


def _libc_madvise() -> Callable[[int, int, int], int]:
    global _madvise
    if _madvise is None:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise = fn
    return _madvise


def supported() -> bool:
    """False once the kernel answered EINVAL (no MADV_POPULATE_WRITE before Linux 5.14)."""
    return _supported


class Prefaulter:
    """Prefaulting of one arena: frames [0, max_frames) of `mm`, `frame_size` bytes each."""

    def __init__(self, mm: mmap.mmap, frame_size: int, max_frames: int) -> None:
        self.lock = threading.Lock()
        self.frame_size = frame_size
        self.max_frames = max_frames
        self.frontier = 0  # frames below it are queued or populated
        self.generation = 0  # bumped by retreat: jobs queued before it are skipped
        self.closed = False
        self.failed = 0  # the errno that stopped it, 0 while it works
        self.populated = 0  # frames the thread has populated (tests, statistics)
        self._mm = mm
        # The address of the mapping; the ctypes view is dropped at once, so it does not pin
        # the mmap's buffer export (mmap.close() refuses while one is alive).
        view = ctypes.c_char.from_buffer(mm)
        self.address = ctypes.addressof(view)
        del view
        _live.add(self)

    def ahead(self, pfn: int) -> int:
        """The allocator's bump pointer handed out frame `pfn`: queue the next chunk past the
        frontier and return the frame at which to call again (caller holds the zone lock)."""
        if self.closed or self.failed or not _supported:
            return NEVER
        start = max(self.frontier, pfn + 1)
        end = min(start + CHUNK_FRAMES, self.max_frames)
        if end <= start:
            return NEVER
        self.frontier = end
        _submit(self, start, end)
        return max(end - CHUNK_FRAMES // 2, pfn + 1)

    def retreat(self, top: int) -> tuple[int, int]:
        """Forget the frames prefaulted at or above `top` (the bump pointer): returns the
        range [lo, hi) the caller should drop (MADV_DONTNEED), empty when there is none.  Jobs
        queued before are skipped; waits for a madvise in progress (caller holds the zone lock,
        which the thread never takes)."""
        with self.lock:
            lo, hi = top, self.frontier
            self.frontier = min(self.frontier, top)
            self.generation += 1
        return (lo, hi) if hi > lo else (0, 0)

    def close(self) -> None:
        """No madvise of this arena after this returns (waits for one in progress)."""
        with self.lock:
            self.closed = True
            self._mm = None  # type: ignore[assignment]

    def _populate(self, generation: int, start: int, end: int) -> None:
        """The thread's side: fault frames [start, end) in, unless the arena was closed or
        the frontier retreated since the job was queued."""
        global _supported
        with self.lock:
            if self.closed or self.failed or not _supported or generation != self.generation:
                return
            size = self.frame_size
            at, length = self.address + start * size, (end - start) * size
            rc = _libc_madvise()(at, length, MADV_POPULATE_WRITE)
            if rc == 0:
                self.populated += end - start
                return
            code = ctypes.get_errno()
            if code == errno.EINVAL:
                _supported = False
            elif code not in (errno.EINTR, errno.EAGAIN):
                self.failed = code or errno.EIO


def _submit(pf: Prefaulter, start: int, end: int) -> None:
    global _queue, _thread_pid
    if _queue is None or _thread_pid != os.getpid():
        with _start_lock:
            if _queue is None or _thread_pid != os.getpid():
                _queue = queue.SimpleQueue()
                _thread_pid = os.getpid()
                threading.Thread(
                    target=_run, args=(_queue,), name="zramfs-prefault", daemon=True
                ).start()
    q = _queue
    # the job holds the mmap object: an arena dropped without close() stays mapped till done
    q.put((pf, pf._mm, pf.generation, start, end))


def _run(q: queue.SimpleQueue[tuple[Prefaulter, mmap.mmap, int, int, int]]) -> None:
    while True:
        pf, _mm, generation, start, end = q.get()
        pf._populate(generation, start, end)
        del pf, _mm


def _after_fork_in_child() -> None:
    """The thread did not survive the fork, and a Prefaulter's lock may have been held by it:
    the child starts a thread of its own when it needs one, with fresh locks."""
    global _queue, _thread_pid, _start_lock
    _queue = None
    _thread_pid = 0
    _start_lock = threading.Lock()
    for pf in list(_live):
        pf.lock = threading.Lock()
        pf.frontier = 0  # jobs queued in the parent are gone


os.register_at_fork(after_in_child=_after_fork_in_child)
