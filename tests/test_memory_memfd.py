"""allocator.memory with ``backing="memfd"`` (the arena of ``zramfs mount --mlock``): a sparse
memfd mapped shared, whose freed frames are dropped by punching holes instead of MADV_DONTNEED.

The allocator, migration and compaction must behave exactly as on the default anonymous arena
(the tests parametrized over the ``backing`` fixture run on both: test_memory's concurrent
owners, test_pool_basic's compaction and migration workloads); what differs is only how frames
are dropped, and that dropping keeps working under mlockall.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from allocator.memory import DIRTY_FRAMES, PhysicalMemory
from support.fake_owner import FakeOwner, rss_bytes

REPO = Path(__file__).resolve().parents[1]


def memfd(max_pages: int, page_size: int = 4096, *, prefault: bool = True) -> PhysicalMemory:
    return PhysicalMemory(
        max_pages=max_pages, page_size=page_size, backing="memfd", prefault=prefault
    )


def _blocks(mem: PhysicalMemory) -> int:
    """Bytes the memfd really holds (holes cost nothing)."""
    return os.fstat(mem._fd).st_blocks * 512


def test_backing_is_a_sparse_cloexec_memfd_mapped_shared() -> None:
    mem = memfd(1 << 22)  # 16 GiB of address space
    assert mem.backing == "memfd"
    st = os.fstat(mem._fd)
    assert st.st_size == (1 << 22) * 4096 and st.st_blocks == 0
    assert not os.get_inheritable(mem._fd)
    assert os.readlink(f"/proc/self/fd/{mem._fd}").startswith("/memfd:zramfs-arena")
    maps = Path("/proc/self/maps").read_text()
    line = next(ln for ln in maps.splitlines() if "/memfd:zramfs-arena" in ln)
    assert line.split()[1].endswith("s")  # shared mapping: rw-s
    with pytest.raises(ValueError):
        PhysicalMemory(max_pages=4, backing="tmpfs")
    assert PhysicalMemory(max_pages=4).backing == "anon"
    fd = mem._fd
    mem.close()
    assert mem._fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_dropped_frames_lose_their_blocks() -> None:
    """The drop really punches holes (the memfd gives the blocks back), not just unmaps; the
    batching itself is test_memory.test_free_drops_contents_in_batches[memfd]."""
    mem = memfd(4 * DIRTY_FRAMES)
    frames = [mem.alloc_page() for _ in range(DIRTY_FRAMES + 8)]
    for f in frames:
        mem.view(f)[:] = b"\xcd" * 4096
    full = _blocks(mem)
    assert full >= len(frames) * 4096
    for f in frames[:DIRTY_FRAMES]:  # a full batch: dropped in runs
        mem.free_page(f)
    assert not mem._dirty
    assert full - _blocks(mem) >= DIRTY_FRAMES * 4096


def test_rss_follows_frames_in_use() -> None:
    """The shared pages count in the process's RSS (RssShmem) and leave it when freed."""
    mem = memfd(1 << 22, prefault=False)  # prefaulting: test_prefault
    n = 8192  # 32 MiB
    pfns = [mem.alloc_page() for _ in range(n)]
    before = rss_bytes()
    for p in pfns:
        mem.view(p)[::1024] = b"\x5a" * 4
    touched = rss_bytes()
    assert touched - before > n * 4096 * 3 // 4
    for p in pfns:
        mem.free_page(p)
    after = rss_bytes()
    assert touched - after > n * 4096 * 3 // 4
    assert mem.high_water == 0 and mem.nr_used == 0 and _blocks(mem) < DIRTY_FRAMES * 4096


def test_migrate_and_compact() -> None:
    """The memory-compaction test of test_memory on a memfd arena (data copied frame to frame,
    the old frames dropped by hole punching)."""
    mem = memfd(128)
    owner = FakeOwner(mem)
    for obj in range(40):
        owner.alloc(obj)
    for obj in range(40):
        if obj % 3:
            assert owner.try_free(obj)
    survivors = sorted(owner.where)
    res = mem.compact()
    assert res.success and res.migrated > 0
    assert sorted(owner.where.values()) == list(range(len(survivors)))
    for obj in survivors:
        owner.check(obj)
    assert mem.migrate_pfn(owner.where[survivors[0]])
    owner.check(survivors[0])
    mem.drop_free_frames()
    for obj in survivors:
        owner.check(obj)


_UNDER_MLOCK = textwrap.dedent("""
    import ctypes, mmap, os, sys
    from allocator.memory import DIRTY_FRAMES, PhysicalMemory
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2 | 4) != 0:          # MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT
        print("SKIP mlockall:", os.strerror(ctypes.get_errno())); sys.exit(0)

    def locked_kib():
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("Locked:"):
                return int(line.split()[1])

    mem = PhysicalMemory(max_pages=1 << 22, backing="memfd")   # 16 GiB: must stay sparse
    base = locked_kib()
    assert base < 64 * 1024, base               # MCL_ONFAULT: nothing populated up front
    pfns = [mem.alloc_page() for _ in range(16384)]   # 64 MiB
    for p in pfns:
        mem.view(p)[:] = b"\\x5a" * 4096
    full = locked_kib()
    assert full - base > 60 * 1024, (base, full)
    for p in pfns:
        mem.free_page(p)
    mem.drop_free_frames()
    after = locked_kib()
    assert full - after > 60 * 1024, (base, full, after)
    p = mem.alloc_page()
    assert bytes(mem.view(p)) == bytes(4096)
    # what the memfd is for: the anonymous arena cannot drop frames while locked
    anon = PhysicalMemory(max_pages=4 * DIRTY_FRAMES)
    q = anon.alloc_page()
    anon.view(q)[0] = 1
    anon.free_page(q)
    try:
        anon.drop_free_frames()
    except OSError as exc:
        print("anon", exc.errno)
    print("OK", base, full, after)
""")


def test_holes_are_punched_under_mlockall() -> None:
    """In a child that mlockall()s itself (MCL_ONFAULT): the 16 GiB arena stays sparse, 64 MiB
    written is locked, freeing it gives the locked memory back and frames read zeros; the
    anonymous arena's MADV_DONTNEED fails with EINVAL there (why the memfd exists)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", _UNDER_MLOCK],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(REPO),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    if res.stdout.startswith("SKIP"):
        pytest.skip(res.stdout.strip())
    assert "anon 22" in res.stdout, res.stdout  # EINVAL
    assert "OK" in res.stdout, res.stdout
