"""Data through MNT/dev/zram<N>: pread/pwrite with and without O_DIRECT at unaligned offsets and
lengths against a model, block-device answers at the end, fallocate punch-hole/zero-range,
st_size/st_blocks, several algorithms, and whole-device write+verify in the spirit of LTP
zram03 (same-filled pages) — all through a real FUSE mount.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import zlib

import pytest

from support.mountutil import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    expect_errno,
    fallocate,
    opened,
)

pytestmark = pytest.mark.fuse

PAGE = 4096
MiB = 1 << 20


def text_bytes(rng: random.Random, n: int) -> bytes:
    """Compressible, non-same-filled data (words), like text pages."""
    words = [b"zram", b"zsmalloc", b"page", b"compress", b"slot", b"handle", b"class", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def test_unaligned_io_matches_model(zmount):
    size = 4 * MiB
    m = zmount("--size", str(size), "--algorithm", "lz4")
    rng = random.Random(1)
    model = bytearray(size)
    with opened(m.image()) as fd:
        for _ in range(300):
            off = rng.randrange(size - 1)
            n = rng.randrange(1, min(3 * PAGE + 100, size - off) + 1)
            kind = rng.random()
            data = (
                rng.randbytes(n)
                if kind < 0.3
                else bytes([rng.randrange(256)]) * n
                if kind < 0.5
                else text_bytes(rng, n)
            )
            assert os.pwrite(fd, data, off) == n
            model[off : off + n] = data
            roff = rng.randrange(size)
            rn = rng.randrange(1, 5 * PAGE)
            assert os.pread(fd, rn, roff) == bytes(model[roff : roff + rn])
        # And every byte at the end.
        for off in range(0, size, 128 * 1024):
            assert os.pread(fd, 128 * 1024, off) == bytes(model[off : off + 128 * 1024])
    assert m.mm_stat()[0] > 0


def test_o_direct_aligned_and_unaligned(zmount):
    size = 2 * MiB
    m = zmount("--size", str(size))
    rng = random.Random(2)
    model = bytearray(size)
    with opened(m.image(), os.O_RDWR | os.O_DIRECT) as fd:
        buf = mmap.mmap(-1, 64 * 1024)  # page-aligned buffer for O_DIRECT
        for _ in range(50):
            n = PAGE * rng.randrange(1, 16)
            off = PAGE * rng.randrange(0, size // PAGE - 16)
            data = text_bytes(rng, n)
            buf[:n] = data
            assert os.pwritev(fd, [memoryview(buf)[:n]], off) == n
            model[off : off + n] = data
            rbuf = mmap.mmap(-1, n)
            assert os.preadv(fd, [rbuf], off) == n
            assert rbuf[:] == bytes(model[off : off + n])
        # FUSE direct_io imposes no alignment: unaligned O_DIRECT works like a regular file.
        for _ in range(50):
            off = rng.randrange(size - 10000)
            n = rng.randrange(1, 10000)
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            model[off : off + n] = data
            assert os.pread(fd, n + 7, off) == bytes(model[off : off + n + 7])
    with opened(m.image(), os.O_RDONLY) as fd:
        assert os.pread(fd, size, 0) == bytes(model)


def test_end_of_device_behaves_like_a_block_device(zmount):
    size = 1 * MiB
    m = zmount("--size", str(size))
    with opened(m.image()) as fd:
        assert os.pread(fd, 100, size) == b""  # at the end: EOF
        assert os.pread(fd, 100, size + 12345) == b""  # after: EOF
        assert os.pread(fd, 100, size - 10) == bytes(10)  # crossing: short
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", size)
        assert os.pwrite(fd, b"abcdefgh", size - 3) == 3  # crossing: short write
        assert os.pread(fd, 8, size - 3) == b"abc"
    st = os.stat(m.image())
    assert st.st_size == size


def test_fallocate_punch_hole_and_zero_range(zmount):
    from zramfs.fs import BINDING, SUPPORTS_FALLOCATE

    if not SUPPORTS_FALLOCATE:
        pytest.skip(f"the {BINDING} binding has no fallocate callback")
    size = 1 * MiB
    m = zmount("--size", str(size))
    rng = random.Random(3)
    data = rng.randbytes(size)
    with opened(m.image()) as fd:
        os.pwrite(fd, data, 0)
        stored_before = m.mm_stat()[0]
        assert stored_before == size  # every page stored
        # Unaligned hole: whole blocks freed, the partial edges read back as zeros.
        off, n = 10 * PAGE + 123, 5 * PAGE + 1000
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n)
        got = os.pread(fd, 20 * PAGE, 8 * PAGE)
        want = bytearray(data[8 * PAGE : 28 * PAGE])
        want[off - 8 * PAGE : off - 8 * PAGE + n] = bytes(n)
        assert got == bytes(want)
        assert m.mm_stat()[0] < stored_before  # freed whole blocks
        # ZERO_RANGE (what loop sends for REQ_OP_WRITE_ZEROES with NOUNMAP).
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 40 * PAGE + 1, 2 * PAGE)
        assert os.pread(fd, 2 * PAGE, 40 * PAGE + 1) == bytes(2 * PAGE)
        assert os.pread(fd, 1, 40 * PAGE) == data[40 * PAGE : 40 * PAGE + 1]
        # Past the end: KEEP_SIZE clips; growing the image is refused.
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size - PAGE, 10 * PAGE)
        assert os.pread(fd, PAGE, size - PAGE) == bytes(PAGE)
        expect_errno(errno.EFBIG, fallocate, fd, 0, size - PAGE, 10 * PAGE)
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, 0x08, 0, PAGE)  # COLLAPSE_RANGE
    assert os.stat(m.image()).st_size == size


def test_stat_truncate_unlink(zmount):
    size = 2 * MiB
    m = zmount("--size", str(size))
    before = os.stat(m.image())
    assert before.st_size == size and before.st_blocks == 0
    with opened(m.image()) as fd:
        os.pwrite(fd, os.urandom(MiB), 0)
        os.fsync(fd)
        os.truncate(fd, size)  # same size: fine
        expect_errno(errno.EPERM, os.truncate, fd, size // 2)
        expect_errno(errno.EPERM, os.truncate, fd, size * 2)
    after = os.stat(m.image())
    assert after.st_size == size
    # st_blocks follows the pool's memory (random data: at least its size in 512 B units).
    assert after.st_blocks * 512 >= MiB
    assert after.st_blocks * 512 == m.mm_stat()[2]


def test_uninitialised_image(zmount):
    m = zmount()
    assert os.stat(m.image()).st_size == 0
    with opened(m.image()) as fd:
        assert os.pread(fd, 4096, 0) == b""
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", 0)


@pytest.mark.parametrize("algorithm", ["lzo-rle", "lzo", "lz4", "lz4hc", "zstd", "deflate"])
def test_algorithms_compress_and_roundtrip(zmount, algorithm):
    from zramfs import codecs

    available = getattr(codecs, "AVAILABLE", ())
    if algorithm not in available:
        pytest.skip(f"{algorithm} not available here ({', '.join(available)})")
    size = 4 * MiB
    m = zmount("--size", str(size), "--algorithm", algorithm)
    assert f"[{algorithm}]" in m.read_attr("comp_algorithm")
    rng = random.Random(algorithm)
    # lzo/lzo-rle are the kernel's lib/lzo in pure Python (~0.6 ms a text page): less data
    data = text_bytes(rng, 256 * 1024 if algorithm.startswith("lzo") else 2 * MiB)
    with opened(m.image()) as fd:
        os.pwrite(fd, data, 0)
        assert zlib.crc32(os.pread(fd, len(data), 0)) == zlib.crc32(data)
    orig, compr, mem_used = m.mm_stat()[:3]
    assert orig == len(data)
    assert 0 < compr < orig / 2, (orig, compr)  # text compresses well in every codec
    assert 0 < mem_used < orig


def test_whole_device_same_filled_then_verify(zmount):
    """zram03's idea: fill the whole device with 'a' except a final NUL, verify every byte;
    all pages but the last are same-filled and cost no memory."""
    size = 16 * MiB
    m = zmount("--size", str(size))
    chunk = b"a" * (128 * 1024)
    with opened(m.image()) as fd:
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk, off)
        os.pwrite(fd, b"\0", size - 1)
    with opened(m.image(), os.O_RDONLY) as fd:
        for off in range(0, size, len(chunk)):
            got = os.pread(fd, len(chunk), off)
            if off + len(chunk) < size:
                assert got == chunk, off
            else:
                assert got == chunk[:-1] + b"\0"
    mm = m.mm_stat()
    pages = size // PAGE
    assert mm[0] == size  # orig_data_size
    assert mm[5] == pages - 1  # same_pages
    assert mm[2] <= 4 * PAGE  # mem_used_total: only the last page's zspage
    m.write_attr("reset", "1")
    assert m.mm_stat()[0] == 0


def test_mmap_shared_needs_image_cache(zmount):
    """With direct_io (the default) the kernel refuses shared mappings of the image (ENODEV);
    private read-only ones work.  --image-cache serves the image through the page cache, so
    LTP zram03's MAP_SHARED fill + verify works there."""
    size = 4 * MiB
    m = zmount("--size", str(size))
    with opened(m.image()) as fd:
        expect_errno(
            errno.ENODEV, mmap.mmap, fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        os.pwrite(fd, b"q" * PAGE, 0)
        ro = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ)
        assert ro[:PAGE] == b"q" * PAGE
        ro.close()

    m = zmount("--size", str(size), "--image-cache")
    with opened(m.image()) as fd:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[:] = b"a" * size
        mm[size - 1 : size] = b"\0"
        mm.flush()
        mm.close()
    with opened(m.image(), os.O_RDONLY) as fd:
        ro = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ)
        assert ro[: size - 1] == b"a" * (size - 1) and ro[size - 1] == 0
        ro.close()
    assert m.mm_stat()[5] == size // PAGE - 1  # same_pages


def test_parallel_io_with_compaction(zmount):
    """Writers on disjoint regions, readers, the daemon at full speed, and explicit compact /
    compact_memory writes at the same time: every byte reads back."""
    import threading

    size = 8 * MiB
    m = zmount("--size", str(size), "--compact-interval", "0", "--compact-threshold", "1")
    nthreads = 4
    region = size // nthreads
    errors: list[BaseException] = []
    models = [bytearray(region) for _ in range(nthreads)]
    stop = threading.Event()

    def writer(i: int) -> None:
        rng = random.Random(100 + i)
        base = i * region
        try:
            with opened(m.image()) as fd:
                for _ in range(150):
                    off = rng.randrange(region - 1)
                    n = rng.randrange(1, min(region - off, 40000) + 1)
                    data = rng.randbytes(n) if rng.random() < 0.3 else text_bytes(rng, n)
                    os.pwrite(fd, data, base + off)
                    models[i][off : off + n] = data
                    roff = rng.randrange(region - 100)
                    assert os.pread(fd, 100, base + roff) == bytes(models[i][roff : roff + 100])
        except BaseException as exc:
            errors.append(exc)

    def compactor() -> None:
        try:
            while not stop.is_set():
                m.write_attr("compact", "1")
                with open(m.path / "proc/sys/vm/compact_memory", "w") as f:
                    f.write("1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(nthreads)]
    comp = threading.Thread(target=compactor)
    comp.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    comp.join(30)
    assert not errors, errors[0]
    with opened(m.image(), os.O_RDONLY) as fd:
        for i in range(nthreads):
            assert os.pread(fd, region, i * region) == bytes(models[i]), i


def test_no_xattr_round_trips(zmount):
    """getxattr is unregistered: libfuse answers ENOSYS once, after which the kernel answers
    EOPNOTSUPP itself (and stops asking before every WRITE)."""
    m = zmount("--size", "1M")
    for _ in range(2):
        expect_errno(errno.EOPNOTSUPP, os.getxattr, m.image(), "security.capability")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, m.image(), "user.x", b"1")
    with opened(m.image()) as fd:
        assert os.pwrite(fd, b"still writable", 0) == 14
