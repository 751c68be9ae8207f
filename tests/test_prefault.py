"""allocator.prefault: fresh frames faulted in ahead of the bump pointer on a helper thread.

It must never change what the allocator sees (the bytes of frames in use, which frames are
handed out), must keep the process's RSS within a chunk of the frames in use, must give those
frames back with drop_free_frames, stop for an arena that is closed, and turn itself off where
the kernel has no MADV_POPULATE_WRITE.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import threading

import pytest

from allocator import prefault
from allocator.memory import PhysicalMemory
from allocator.prefault import CHUNK_FRAMES, START_FRAME
from support.fake_owner import rss_bytes
from support.polling import wait_for

PAGE = 4096


def quiesce(mem: PhysicalMemory) -> None:
    """Wait until the thread has done every job queued for `mem` so far."""
    pf = mem._prefault
    assert pf is not None
    assert wait_for(lambda: pf.populated >= pf.frontier - START_FRAME - 1 or pf.failed)


def drain_prefault_thread() -> None:
    """Wait until the process's one prefault thread has done every job queued so far, other
    arenas' too: a test that left its arena unclosed leaves jobs that fault in up to a chunk of
    *that* arena (8 MiB) whenever the thread gets to them, which a process-RSS check would
    count.  A marker queued last runs after them."""
    q = prefault._queue
    if q is None:
        return
    done = threading.Event()

    class Marker:
        def _populate(self, generation: int, start: int, end: int) -> None:
            done.set()

    q.put((Marker(), None, 0, 0, 0))  # type: ignore[arg-type]
    assert done.wait(30), "the prefault thread did not get to the end of its queue"


@pytest.fixture(autouse=True)
def _restore_support():
    yield
    prefault._supported = True


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_frames_past_the_bump_pointer_are_faulted_in_and_rss_stays_within_a_chunk(
    backing: str,
) -> None:
    mem = PhysicalMemory(max_pages=1 << 20, backing=backing)
    pfns = [mem.alloc_page() for _ in range(START_FRAME)]
    assert mem.prefaulted == 0  # nothing before START_FRAME: a small pool starts no thread
    drain_prefault_thread()
    before = rss_bytes()
    pfns += [mem.alloc_page() for _ in range(3 * CHUNK_FRAMES)]
    quiesce(mem)
    drain_prefault_thread()
    assert mem.prefaulted >= 3 * CHUNK_FRAMES
    pf = mem._prefault
    assert pf is not None and pf.frontier - mem.high_water <= CHUNK_FRAMES + 1
    # resident without being touched by this thread: the thread's madvise did it
    grown = rss_bytes() - before
    assert grown >= 3 * CHUNK_FRAMES * PAGE
    assert grown <= (4 * CHUNK_FRAMES + 64) * PAGE  # at most a chunk ahead (and some slack)
    assert any(t.name == "zramfs-prefault" for t in threading.enumerate())


def test_the_bytes_of_frames_in_use_survive_concurrent_prefaulting() -> None:
    """MADV_POPULATE_WRITE on a page that is there leaves its bytes: frames written the moment
    they are handed out, while the thread populates around them, read back intact."""
    mem = PhysicalMemory(max_pages=1 << 20)
    written: list[tuple[int, bytes]] = []
    for i in range(8 * CHUNK_FRAMES):
        pfn = mem.alloc_page()
        data = (i.to_bytes(4, "little") + b"\xa5" * 4) * (PAGE // 8)
        mem.view(pfn)[:] = data
        written.append((pfn, data))
    quiesce(mem)
    assert mem.prefaulted > 0
    assert all(bytes(mem.view(pfn)) == data for pfn, data in written)


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_drop_free_frames_gives_the_prefaulted_frames_back(backing: str) -> None:
    mem = PhysicalMemory(max_pages=1 << 20, backing=backing)
    drain_prefault_thread()
    base = rss_bytes()
    pfns = [mem.alloc_page() for _ in range(START_FRAME + 4 * CHUNK_FRAMES)]
    quiesce(mem)
    for p in pfns:
        mem.free_page(p)
    assert mem.high_water == 0
    mem.drop_free_frames()
    drain_prefault_thread()
    assert rss_bytes() - base < 2 * CHUNK_FRAMES * PAGE // 4  # a few hundred KiB of noise
    if backing == "memfd":
        assert os.fstat(mem._fd).st_blocks == 0
    # and prefaulting starts again when the pool grows past the mark again
    done = mem.prefaulted
    pfns = [mem.alloc_page() for _ in range(START_FRAME + 2 * CHUNK_FRAMES)]
    assert wait_for(lambda: mem.prefaulted > done)


def test_prefault_false_never_starts() -> None:
    mem = PhysicalMemory(max_pages=1 << 20, prefault=False)
    [mem.alloc_page() for _ in range(START_FRAME + 2 * CHUNK_FRAMES)]
    assert mem._prefault is None and mem.prefaulted == 0


def test_einval_turns_prefaulting_off_for_the_process(monkeypatch) -> None:
    """A kernel before 5.14 answers MADV_POPULATE_WRITE with EINVAL: no more jobs, and the
    allocator goes on as without prefaulting."""

    def no_populate(addr: int, length: int, advice: int) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(prefault, "_libc_madvise", lambda: no_populate)
    mem = PhysicalMemory(max_pages=1 << 20)
    pfns = [mem.alloc_page() for _ in range(START_FRAME + 1)]
    assert wait_for(lambda: not prefault.supported())
    assert mem.prefaulted == 0
    pfns += [mem.alloc_page() for _ in range(2 * CHUNK_FRAMES)]
    assert mem._prefault_at == prefault.NEVER  # ahead() is not called any more
    assert len(set(pfns)) == len(pfns) == mem.nr_used


def test_another_error_stops_only_that_arena(monkeypatch) -> None:
    real = prefault._libc_madvise()
    bad: set[int] = set()

    def madvise(addr: int, length: int, advice: int) -> int:
        if addr in bad:
            ctypes.set_errno(errno.ENOMEM)
            return -1
        return real(addr, length, advice)

    monkeypatch.setattr(prefault, "_libc_madvise", lambda: madvise)
    a = PhysicalMemory(max_pages=1 << 20)
    b = PhysicalMemory(max_pages=1 << 20)
    a.alloc_page()
    a._prefault_ahead(0)  # create a's Prefaulter to learn its address
    assert a._prefault is not None
    bad.add(a._prefault.address + PAGE)
    quiesce_a = lambda: a._prefault is not None and a._prefault.failed  # noqa: E731
    assert wait_for(quiesce_a)
    assert a._prefault.failed == errno.ENOMEM
    [b.alloc_page() for _ in range(START_FRAME + CHUNK_FRAMES)]
    quiesce(b)
    assert b.prefaulted > 0 and prefault.supported()


def test_closing_or_dropping_an_arena_with_jobs_queued_is_safe() -> None:
    """close() waits for a madvise in progress and later jobs skip the arena; an arena dropped
    without close() stays mapped until its jobs are done (they hold the mmap)."""
    for i in range(20):
        mem = PhysicalMemory(max_pages=1 << 20)
        [mem.alloc_page() for _ in range(START_FRAME + 4 * CHUNK_FRAMES)]
        if i % 2:
            mem.close()
            pf = mem._prefault
            assert pf is not None and pf.closed and pf.ahead(10**6) == prefault.NEVER
        del mem
        gc.collect()
    fresh = PhysicalMemory(max_pages=1 << 20)
    [fresh.alloc_page() for _ in range(START_FRAME + CHUNK_FRAMES)]
    quiesce(fresh)  # the thread is alive and working after all of it


def test_a_forked_child_prefaults_with_a_thread_of_its_own() -> None:
    mem = PhysicalMemory(max_pages=1 << 20)
    [mem.alloc_page() for _ in range(START_FRAME + CHUNK_FRAMES)]
    quiesce(mem)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no prefault thread survived the fork
        ok = 0
        try:
            child = PhysicalMemory(max_pages=1 << 20)
            [child.alloc_page() for _ in range(START_FRAME + CHUNK_FRAMES)]
            ok = int(wait_for(lambda: child.prefaulted > 0, 10.0))
        finally:
            os.write(w, bytes([ok]))
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"\x01"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
