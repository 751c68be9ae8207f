"""zramfs.device: lifecycle, registry, data path, limits, idle, writeback, recompression,
compaction, statistics, the slot table's cost and cyclic garbage — against the real allocator."""

from __future__ import annotations

import errno
import os
import random
import resource
import time

import numpy as np
import pytest

from allocator import PhysicalMemory
from support.zram_data import (
    PAGE,
    device_hash,
    half_page,
    mixed_page,
    random_page,
    same_page,
    text_page,
)
from zramfs import codecs
from zramfs.device import (
    RECOMP_HUGE,
    WB_HUGE,
    WB_IDLE,
    WB_INCOMPRESSIBLE,
    CompParams,
    Registry,
    ZramDevice,
)
from zramfs.device_stats import _account
from zramfs.errors import IOFailure, NoSpace, ZramError
from zramfs.slots import (
    FAILED_READS,
    FLUSH_IOS,
    READ_IOS,
    READ_NS,
    READ_SECTORS,
    SIZE_MASK,
    SLOT_BYTES,
    STRIPE_MASK,
    WRITE_IOS,
    WRITE_NS,
    WRITE_SECTORS,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_WB,
    SlotTable,
)

MiB = 1 << 20


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def dev(reg) -> ZramDevice:
    d = reg.devices[0]
    d.set_disksize(4 * MiB)
    return d


def settle(d: ZramDevice) -> None:
    assert d.pool is not None
    d.pool.flush_free_work()


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(ZramError) as ei:
        fn(*args, **kw)
    return ei.value.errno


# ---------------------------------------------------------------------------- lifecycle
def test_uninitialised_device(reg):
    d = reg.devices[0]
    assert not d.initialized and d.disksize == 0 and d.pool is None
    assert d.read(0, 4096) == b""
    assert errno_of(d.write, 0, b"x") == errno.ENOSPC
    assert errno_of(d.compact) == errno.EINVAL
    assert errno_of(d.mark_idle, None) == errno.EINVAL
    d.discard(0, 4096)  # nothing to do, no error
    d.reset_mem_used_max()  # no-op when uninitialised


def test_uninitialised_devices_are_cheap_and_counters_survive_nothing(reg):
    """No slot-lock stripes until disksize (they are most of a device's memory); a flush on an
    uninitialised device still counts, and its count survives the disksize that follows;
    reset drops the stripes (every counter zero, as zram_reset_device's memset)."""
    d = reg.devices[0]
    assert not d._stripes and d.stats().counters == [0] * len(d.stats().counters)
    d.flush()
    d.set_disksize(MiB)
    d.write(0, b"x" * PAGE)
    s = d.stats()
    assert s.counters[FLUSH_IOS] == 1 and s.pages_stored == 1
    d.reset()
    assert not d._stripes and d.stats().pages_stored == 0 and d.stats().counters[FLUSH_IOS] == 0


def test_disksize_page_aligned_and_busy(reg):
    d = reg.devices[0]
    d.set_disksize(10000)
    assert d.disksize == 12288 and d.nr_pages == 3 and d.initialized
    assert errno_of(d.set_disksize, 1 << 20) == errno.EBUSY
    assert d.disksize == 12288
    assert errno_of(d.set_comp_algorithm, "zstd") == errno.EBUSY
    assert errno_of(d.set_algorithm_params, 0, CompParams(level=1)) == errno.EBUSY


def test_disksize_too_big_is_enomem(reg):
    d = reg.devices[0]
    assert errno_of(d.set_disksize, (1 << 64) - 1) == errno.ENOMEM  # PAGE_ALIGN wraps to 0
    assert not d.initialized


def test_reset_frees_everything_and_reverts(reg):
    d = reg.devices[0]
    d.set_comp_algorithm("zstd")
    d.set_comp_algorithm("deflate", 1)
    d.set_mem_limit(8 * MiB)
    d.set_disksize(2 * MiB)
    rng = random.Random(1)
    for i in range(256):
        d.write(i * PAGE, mixed_page(rng))
    assert reg.memory.nr_used > 0
    d.reset()
    assert reg.memory.nr_used == 0
    assert not d.initialized and d.disksize == 0 and d.limit_pages == 0
    assert d.comp_algs == [codecs.DEFAULT_ALGORITHM, None, None, None]
    s = d.stats()
    assert (
        s.pages_stored,
        s.compr_data_size,
        s.same_pages,
        s.huge_pages,
        s.huge_pages_since,
        s.max_used_pages,
    ) == (0, 0, 0, 0, 0, 0)
    d.set_disksize(MiB)  # usable again
    d.write(0, b"a" * PAGE)
    assert d.read(0, 4) == b"aaaa"


def test_reset_and_open(reg):
    d = reg.devices[0]
    d.set_disksize(MiB)
    d.write(0, text_page(random.Random(2)))
    d.open()
    assert errno_of(d.reset) == errno.EBUSY
    assert d.initialized and d.read(0, 10) != bytes(10)
    d.close()
    d.reset()
    assert errno_of(d.close) == errno.EBADF


def test_registry_ids_and_errors(reg):
    assert list(reg.devices) == [0]
    assert reg.hot_add() == 1 and reg.hot_add() == 2
    reg.hot_remove(1)
    assert reg.hot_add() == 1  # lowest free id (idr_alloc from 0)
    assert errno_of(reg.hot_remove, -1) == errno.EINVAL
    assert errno_of(reg.hot_remove, 7) == errno.ENODEV
    reg.devices[2].open()
    assert errno_of(reg.hot_remove, 2) == errno.EBUSY
    assert 2 in reg.devices
    reg.devices[2].close()
    reg.hot_remove(2)
    assert list(reg.devices) == [0, 1]


def test_registry_shares_memory_with_own_pools():
    mem = PhysicalMemory(max_pages=4096)
    r = Registry(memory=mem, num_devices=2)
    a, b = r.devices[0], r.devices[1]
    a.set_disksize(MiB)
    b.set_disksize(MiB)
    assert a.pool is not None and b.pool is not None
    assert a.pool is not b.pool and a.pool.memory is mem and b.pool.memory is mem
    rng = random.Random(3)
    for i in range(50):
        a.write(i * PAGE, text_page(rng))
        b.write(i * PAGE, random_page(rng))
    assert mem.nr_used == a.pool.total_pages + b.pool.total_pages
    r.hot_remove(1)  # removing resets: frames go back
    assert mem.nr_used == a.pool.total_pages
    a.reset()
    assert mem.nr_used == 0


def test_modern_kernel_geometry():
    """chain 8 + min-waste (what a differential test against the host kernel uses), lz4."""
    r = Registry(chain_size=8, chain_rule="min-waste")
    d = r.devices[0]
    d.set_comp_algorithm("lz4")
    d.set_disksize(MiB)
    assert d.pool is not None and d.pool.huge_class_size == 3625
    rng = random.Random(4)
    pages = [mixed_page(rng) for _ in range(64)]
    for i, p in enumerate(pages):
        d.write(i * PAGE, p)
    assert [d.read(i * PAGE, PAGE) for i in range(64)] == pages
    d.reset()
    assert Registry(chain_size=4).devices[0].chain_size == 4
    with pytest.raises(ValueError):
        Registry(chain_rule="bogus")


# ---------------------------------------------------------------------------- write path
def test_same_filled_pages_allocate_nothing(dev):
    words = [0, 0x6161616161616161, 0x0123456789ABCDEF]
    for i, w in enumerate(words):
        dev.write(i * PAGE, same_page(w))
    s = dev.stats()
    assert s.same_pages == 3 and s.pages_stored == 3 and s.compr_data_size == 0
    assert dev.pool.total_pages == 0
    for i, w in enumerate(words):
        assert dev.read(i * PAGE, PAGE) == same_page(w)
        h, f, _ = dev.slot_state(i)
        assert f & ZRAM_SAME and h == w  # the 8-byte word is the "handle"
    # a 4-byte period is an 8-byte fill too; a 16-byte period is not: it is compressed
    dev.write(4 * PAGE, b"\x01\x02\x03\x04" * 1024)
    assert dev.slot_state(4)[1] & ZRAM_SAME
    dev.discard(4 * PAGE, PAGE)
    dev.write(5 * PAGE, bytes(range(16)) * 256)
    assert not dev.slot_state(5)[1] & ZRAM_SAME and dev.stats().same_pages == 3
    # first/last word equal but the middle differs
    p = bytearray(same_page(7))
    p[2000] = 1
    dev.write(6 * PAGE, bytes(p))
    assert not dev.slot_state(6)[1] & ZRAM_SAME
    assert dev.read(6 * PAGE, PAGE) == bytes(p)


def test_huge_pages_stored_raw(dev):
    rng = random.Random(5)
    page = random_page(rng)
    dev.write(0, page)
    h, f, _ = dev.slot_state(0)
    assert f & ZRAM_HUGE and (f & 0x1FFF) == PAGE
    assert dev.pool.read_object(h, PAGE) == page  # raw bytes in the pool
    s = dev.stats()
    assert (s.huge_pages, s.huge_pages_since, s.compr_data_size) == (1, 1, PAGE)
    dev.write(0, text_page(rng))  # overwrite: no longer huge
    s = dev.stats()
    assert (s.huge_pages, s.huge_pages_since) == (0, 1)
    assert s.compr_data_size < PAGE and s.pages_stored == 1


def test_huge_threshold_is_pool_huge_class_size(dev):
    """A page whose compressed length is exactly huge_class_size is HUGE, one byte less is not."""
    hcs = dev.pool.huge_class_size
    assert hcs == 3257
    comp = dev._meta.comps[0]
    rng = random.Random(6)
    found: dict[int, bytes] = {}
    for _ in range(4000):
        n = rng.randrange(3200, 3260)
        page = rng.randbytes(n) + bytes(PAGE - n)
        ln = len(comp.compress(page))
        if ln in (hcs - 1, hcs):
            found.setdefault(ln, page)
        if len(found) == 2:
            break
    assert set(found) == {hcs - 1, hcs}
    dev.write(0, found[hcs])
    dev.write(PAGE, found[hcs - 1])
    assert dev.slot_state(0)[1] & ZRAM_HUGE
    f1 = dev.slot_state(1)[1]
    assert not f1 & ZRAM_HUGE and (f1 & 0x1FFF) == hcs - 1


def test_overwrite_frees_old_object(dev):
    rng = random.Random(7)
    for _ in range(30):
        for i in range(32):
            dev.write(i * PAGE, mixed_page(rng))
    settle(dev)
    s = dev.stats()
    assert s.pages_stored <= 32
    live = sum(1 for i in range(32) if dev.slot_state(i)[1] & 0x1FFF)
    assert dev.pool.total_pages <= 32 + 8
    assert s.compr_data_size == sum(dev.slot_state(i)[1] & 0x1FFF for i in range(32))
    assert live <= 32


def test_sub_block_io_any_offset(dev):
    rng = random.Random(8)
    model = bytearray(dev.disksize)
    for _ in range(200):
        off = rng.randrange(0, dev.disksize - 1)
        n = rng.randrange(1, min(3 * PAGE, dev.disksize - off) + 1)
        data = text_page(rng)[: n % PAGE] * (n // PAGE + 1)
        data = (data + rng.randbytes(n))[:n]
        assert dev.write(off, data) == n
        model[off : off + n] = data
        ro = rng.randrange(0, dev.disksize)
        rn = rng.randrange(0, 3 * PAGE)
        assert dev.read(ro, rn) == bytes(model[ro : ro + rn])
    assert device_hash(dev) == __import__("hashlib").sha256(model).hexdigest()


def test_io_at_the_end(dev):
    end = dev.disksize
    assert dev.write(end - 10, b"x" * 100) == 10  # short write at the end
    assert dev.read(end - 10, 100) == b"x" * 10  # short read
    assert dev.read(end, 10) == b""
    assert errno_of(dev.write, end, b"y") == errno.ENOSPC
    assert errno_of(dev.write, -1, b"y") == errno.EINVAL
    assert dev.write(0, b"") == 0


def test_discard_whole_blocks_only(dev):
    rng = random.Random(9)
    pages = [text_page(rng) for _ in range(8)]
    for i, p in enumerate(pages):
        dev.write(i * PAGE, p)
    # starts mid-block 1, ends mid-block 4: frees 2 and 3 only (partial edges untouched)
    dev.discard(PAGE + 100, 3 * PAGE)
    assert dev.read(PAGE, PAGE) == pages[1]
    assert dev.read(2 * PAGE, 2 * PAGE) == bytes(2 * PAGE)
    assert dev.read(4 * PAGE, PAGE) == pages[4]
    s = dev.stats()
    assert s.notify_free == 2 and s.pages_stored == 6
    # a request inside one block completes without freeing anything
    dev.discard(5 * PAGE + 1, PAGE - 1)
    assert dev.read(5 * PAGE, PAGE) == pages[5] and dev.stats().notify_free == 2
    # whole blocks at an aligned start; trailing partial block ignored
    dev.discard(6 * PAGE, PAGE + 5)
    assert dev.read(6 * PAGE, PAGE) == bytes(PAGE) and dev.read(7 * PAGE, PAGE) == pages[7]
    # notify_free counts every discarded block, written or not (as the kernel's loop does)
    dev.discard(100 * PAGE, 4 * PAGE)
    assert dev.stats().notify_free == 7
    # a long discard (the vectorised path) frees exactly the whole blocks in range
    pages2 = {i: mixed_page(rng) for i in range(200, 600, 3)}
    for i, p in pages2.items():
        dev.write(i * PAGE, p)
    stored = dev.stats().pages_stored
    dev.discard(300 * PAGE + 7, 200 * PAGE)  # whole blocks 301..499
    gone = [i for i in pages2 if 301 <= i <= 499]
    assert dev.stats().pages_stored == stored - len(gone)
    assert dev.stats().notify_free == 7 + 199
    for i, p in pages2.items():
        assert dev.read(i * PAGE, PAGE) == (bytes(PAGE) if i in gone else p)


def test_punch_hole_and_zero_range_read_back_zeros(dev):
    rng = random.Random(10)
    base = b"".join(text_page(rng) for _ in range(8))
    dev.write(0, base)
    model = bytearray(base)
    dev.punch_hole(PAGE + 100, 3 * PAGE)
    model[PAGE + 100 : 4 * PAGE + 100] = bytes(3 * PAGE)
    assert dev.read(0, len(base)) == bytes(model)
    dev.zero_range(10, 20)  # inside one block
    model[10:30] = bytes(20)
    assert dev.read(0, len(base)) == bytes(model)
    # aligned start, end inside the same block: that block is partial too
    dev.punch_hole(2 * PAGE, 1)
    dev.punch_hole(5 * PAGE, PAGE + 7)
    model[5 * PAGE : 6 * PAGE + 7] = bytes(PAGE + 7)
    assert dev.read(0, len(base)) == bytes(model)
    dev.write(8 * PAGE, b"\xcd")
    dev.punch_hole(8 * PAGE, 1)
    assert dev.read(8 * PAGE, PAGE) == bytes(PAGE)
    # an unwritten edge block stays unallocated
    dev.punch_hole(20 * PAGE + 5, 10)
    assert dev.slot_state(20) == (0, 0, 0)


# ---------------------------------------------------------------------------- mem_limit
def test_mem_limit_rejects_and_keeps_old_data(dev):
    rng = random.Random(11)
    old = text_page(rng)
    dev.write(0, old)
    settle(dev)
    used = dev.pool.total_pages
    dev.set_mem_limit(used * PAGE)
    before = dev.stats()
    fails = 0
    for i in range(1, 64):
        try:
            dev.write(i * PAGE, random_page(rng))
        except ZramError as exc:
            assert exc.errno == errno.EIO
            fails += 1
    assert fails > 0
    assert dev.stats().failed_writes == fails
    assert fails == 63  # every huge object needs a fresh page: all over the limit
    # overwrite of block 0 that does not fit: EIO and the old data stays
    with pytest.raises(ZramError) as ei:
        dev.write(0, random_page(rng))
    assert ei.value.errno == errno.EIO
    assert dev.read(0, PAGE) == old
    assert dev.stats().pages_stored == before.pages_stored
    # same-filled pages are never limited
    dev.write(200 * PAGE, same_page(5))
    assert dev.read(200 * PAGE, PAGE) == same_page(5)
    # raising the limit lets writes proceed
    dev.set_mem_limit(0)
    page = random_page(rng)
    dev.write(300 * PAGE, page)
    assert dev.read(300 * PAGE, PAGE) == page
    assert dev.pool.total_pages <= max(dev.stats().max_used_pages, dev.pool.total_pages)


def test_mem_limit_exact_old_block_intact(dev):
    rng = random.Random(12)
    a = text_page(rng)
    dev.write(0, a)
    settle(dev)
    dev.set_mem_limit(dev.pool.total_pages * PAGE)
    h_before = dev.slot_state(0)
    with pytest.raises(ZramError) as ei:
        dev.write(0, random_page(rng))  # a huge object needs a fresh page: over the limit
    assert ei.value.errno == errno.EIO
    assert dev.slot_state(0)[:2] == h_before[:2]
    assert dev.read(0, PAGE) == a


def test_mem_used_max(dev):
    rng = random.Random(13)
    for i in range(64):
        dev.write(i * PAGE, random_page(rng))
    peak = dev.stats().max_used_pages
    assert peak >= dev.pool.total_pages > 0
    dev.discard(0, 64 * PAGE)
    settle(dev)
    assert dev.stats().max_used_pages == peak
    dev.reset_mem_used_max()
    assert dev.stats().max_used_pages == dev.pool.total_pages


# ---------------------------------------------------------------------------- compaction
def test_compact_frees_fragmented_pages(dev):
    rng = random.Random(14)
    for i in range(512):
        dev.write(i * PAGE, half_page(rng))
    settle(dev)
    for i in range(0, 512, 4):  # free 3 of every 4
        dev.discard(i * PAGE + PAGE, 3 * PAGE)
    settle(dev)
    before = dev.pool.total_pages
    freed = dev.compact()
    settle(dev)
    assert freed > 0
    assert dev.stats().pages_compacted == dev.pool.stats.pages_compacted > 0
    assert dev.pool.total_pages < before


def test_memory_migration_keeps_data(reg, dev):
    rng = random.Random(15)
    pages = {}
    for i in range(400):
        pages[i] = mixed_page(rng)
        dev.write(i * PAGE, pages[i])
    for i in range(0, 400, 2):
        dev.discard(i * PAGE, PAGE)
        pages[i] = bytes(PAGE)
    settle(dev)
    dev.compact()
    result = reg.memory.compact()
    assert result is not None
    for i, p in pages.items():
        assert dev.read(i * PAGE, PAGE) == p


# ---------------------------------------------------------------------------- idle
def test_idle_all_and_age(dev):
    clock = FakeClock(5000)
    dev.clock = clock
    rng = random.Random(16)
    dev.write(0, text_page(rng))  # t=5000
    dev.write(PAGE, same_page(9))  # SAME: never idle
    clock.t = 5100
    dev.write(2 * PAGE, text_page(rng))  # t=5100
    clock.t = 5200
    dev.mark_idle(150)  # idle if ac_time < 5050
    assert dev.slot_state(0)[1] & ZRAM_IDLE
    assert not dev.slot_state(1)[1] & ZRAM_IDLE
    assert not dev.slot_state(2)[1] & ZRAM_IDLE
    dev.mark_idle(None)
    assert dev.slot_state(2)[1] & ZRAM_IDLE and not dev.slot_state(1)[1] & ZRAM_IDLE
    dev.read(2 * PAGE, 10)  # access clears IDLE
    assert not dev.slot_state(2)[1] & ZRAM_IDLE
    assert dev.slot_state(2)[2] == 5200
    dev.mark_idle(100)  # cutoff 5100: block 0 (5000) idle, not 2 (5200)
    assert dev.slot_state(0)[1] & ZRAM_IDLE and not dev.slot_state(2)[1] & ZRAM_IDLE
    clock.t = 5300
    dev.mark_idle(100)  # cutoff 5200 == ac_time of block 2: strict, not idle
    assert dev.slot_state(0)[1] & ZRAM_IDLE and not dev.slot_state(2)[1] & ZRAM_IDLE
    dev.mark_idle(99)
    assert dev.slot_state(2)[1] & ZRAM_IDLE
    dev.mark_idle(10_000)  # nothing that old: IDLE cleared (current kernels)
    assert not dev.slot_state(0)[1] & ZRAM_IDLE
    assert dev.slot_state(3) == (0, 0, 0)  # unallocated untouched


# ---------------------------------------------------------------------------- writeback
@pytest.fixture
def backing(tmp_path):
    p = tmp_path / "backing.img"
    p.write_bytes(bytes(64 * PAGE))
    return str(p)


def wb_dev(reg, backing, compressed=False) -> ZramDevice:
    d = reg.devices[0]
    d.set_backing_dev(backing)
    d.set_compressed_writeback(compressed)
    d.set_disksize(MiB)
    return d


@pytest.mark.parametrize("compressed", [False, True])
def test_writeback_huge_and_read_back(reg, backing, compressed):
    d = wb_dev(reg, backing, compressed)
    rng = random.Random(17)
    pages = [random_page(rng), text_page(rng), random_page(rng), same_page(3)]
    for i, p in enumerate(pages):
        d.write(i * PAGE, p)
    before = d.stats()
    d.writeback([(WB_HUGE, 0, d.nr_pages)])
    s = d.stats()
    assert s.bd_count == 2 and s.bd_writes == 2 and s.huge_pages == 0
    assert s.pages_stored == before.pages_stored
    assert s.compr_data_size == before.compr_data_size - 2 * PAGE
    assert d.slot_state(0)[1] & ZRAM_WB and d.slot_state(2)[1] & ZRAM_WB
    assert not d.slot_state(1)[1] & ZRAM_WB
    for i, p in enumerate(pages):
        assert d.read(i * PAGE, PAGE) == p
    assert d.stats().bd_reads == 2
    # overwriting a written-back block releases its backing block
    d.write(0, text_page(rng))
    assert d.stats().bd_count == 1
    d.discard(2 * PAGE, PAGE)
    assert d.stats().bd_count == 0


@pytest.mark.parametrize("compressed", [False, True])
def test_writeback_idle_page_index_ranges(reg, backing, compressed):
    d = wb_dev(reg, backing, compressed)
    rng = random.Random(18)
    pages = [text_page(rng) for _ in range(10)]
    for i, p in enumerate(pages):
        d.write(i * PAGE, p)
    d.writeback([(WB_IDLE, 0, d.nr_pages)])  # nothing idle yet
    assert d.stats().bd_writes == 0
    d.mark_idle(None)
    d.read(PAGE, PAGE)  # block 1 is no longer idle
    d.writeback([(0, 3, 4), (0, 5, 8)])  # page_index=3 page_indexes=5-7
    assert [bool(d.slot_state(i)[1] & ZRAM_WB) for i in range(10)] == [
        False,
        False,
        False,
        True,
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    d.writeback([(WB_IDLE, 0, d.nr_pages)])
    assert not d.slot_state(1)[1] & ZRAM_WB
    assert all(d.slot_state(i)[1] & ZRAM_WB for i in (0, 2, 4, 8, 9))
    assert d.stats().bd_writes == 9
    for i, p in enumerate(pages):
        assert d.read(i * PAGE, PAGE) == p
    # partial writes of a written-back block work (read from the file, rewrite in memory)
    d.write(4 * PAGE + 10, b"patch")
    assert d.read(4 * PAGE, PAGE) == pages[4][:10] + b"patch" + pages[4][15:]


def test_writeback_limit_and_enospc(reg, tmp_path):
    small = tmp_path / "small.img"
    small.write_bytes(bytes(3 * PAGE))
    d = wb_dev(reg, str(small))
    rng = random.Random(19)
    for i in range(6):
        d.write(i * PAGE, random_page(rng))
    d.set_writeback_limit_enable(True)
    assert errno_of(d.writeback, [(WB_HUGE, 0, d.nr_pages)]) == errno.EIO  # budget 0
    assert d.stats().bd_writes == 0
    d.set_writeback_limit(2)
    assert errno_of(d.writeback, [(WB_HUGE, 0, d.nr_pages)]) == errno.EIO  # 2 written, then out
    assert d.stats().bd_writes == 2 and d.bd_wb_limit == 0
    d.set_writeback_limit_enable(False)
    assert errno_of(d.writeback, [(WB_HUGE, 0, d.nr_pages)]) == errno.ENOSPC  # file holds 3
    assert d.stats().bd_count == 3
    flags = [d.slot_state(i)[1] for i in range(6)]
    assert sum(bool(f & ZRAM_WB) for f in flags) == 3
    assert not any(f & (1 << 16) for f in flags)  # PP_SLOT released


def test_writeback_incompressible_after_recompress(reg, backing):
    d = reg.devices[0]
    d.set_backing_dev(backing)
    d.set_comp_algorithm("zstd", 1)
    d.set_disksize(MiB)
    rng = random.Random(20)
    d.write(0, random_page(rng))
    d.recompress(mode=RECOMP_HUGE)
    assert d.slot_state(0)[1] & ZRAM_INCOMPRESSIBLE
    d.writeback([(WB_INCOMPRESSIBLE, 0, d.nr_pages)])
    assert d.slot_state(0)[1] & ZRAM_WB


def test_backing_dev_errors(reg, tmp_path):
    d = reg.devices[0]
    assert errno_of(d.set_backing_dev, str(tmp_path / "missing")) == errno.ENOENT
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert errno_of(d.set_backing_dev, str(empty)) == errno.EINVAL
    assert errno_of(d.set_backing_dev, str(tmp_path)) in (errno.ENOTBLK, errno.EISDIR)
    assert d.backing is None
    d.set_disksize(MiB)
    assert errno_of(d.writeback, [(WB_HUGE, 0, 1)]) == errno.ENODEV
    ok = tmp_path / "ok"
    ok.write_bytes(bytes(PAGE))
    assert errno_of(d.set_backing_dev, str(ok)) == errno.EBUSY


# ---------------------------------------------------------------------------- recompression
def test_recompress_huge_with_secondary(reg):
    d = reg.devices[0]
    d.set_comp_algorithm("lz4")
    d.set_comp_algorithm("zstd", 1)
    d.set_algorithm_params(1, CompParams(level=19))
    d.set_disksize(MiB)
    rng = random.Random(21)
    # pages lz4 leaves huge but zstd-19 gets below the huge class
    hcs = d.pool.huge_class_size
    pages = [rng.randbytes(PAGE), rng.randbytes(PAGE)]  # truly incompressible
    while len(pages) < 8:
        n = rng.randrange(2000, 3000)
        p = rng.randbytes(n) + text_page(rng)[: PAGE - n]
        if (
            len(d._meta.comps[0].compress(p)) >= hcs
            and len(d._meta.comps[1].compress(p)) < hcs - 200
        ):
            pages.append(p)
    for i, p in enumerate(pages):
        d.write(i * PAGE, p)
    before = d.stats()
    assert before.huge_pages == len(pages)
    d.recompress(mode=RECOMP_HUGE)
    s = d.stats()
    assert s.huge_pages < before.huge_pages
    assert s.compr_data_size < before.compr_data_size
    assert s.pages_stored == before.pages_stored
    for i, p in enumerate(pages):
        assert d.read(i * PAGE, PAGE) == p
        f = d.slot_state(i)[1]
        assert bool(f & ZRAM_INCOMPRESSIBLE) == bool(f & ZRAM_HUGE)  # random pages: marked
        if not f & ZRAM_HUGE:
            assert (f >> 20) & 3 == 1  # priority 1
    # a second pass has nothing left to do
    again = d.stats()
    d.recompress(mode=RECOMP_HUGE)
    assert d.stats().compr_data_size == again.compr_data_size


def test_recompress_threshold_max_pages_and_errors(reg):
    d = reg.devices[0]
    assert errno_of(d.recompress) == errno.EINVAL  # uninitialised
    d.set_comp_algorithm("lz4")
    d.set_comp_algorithm("deflate", 1)
    d.set_algorithm_params(1, CompParams(level=9))
    d.set_disksize(MiB)
    rng = random.Random(22)
    pages = [text_page(rng) for _ in range(20)]
    for i, p in enumerate(pages):
        d.write(i * PAGE, p)
    hcs = d.pool.huge_class_size
    assert errno_of(d.recompress, threshold=hcs) == errno.EINVAL
    assert errno_of(d.recompress, algo="zstd") == errno.EINVAL  # not configured
    assert errno_of(d.recompress, prio=2) == errno.EINVAL  # nothing at priority 2
    sizes = [d.slot_state(i)[1] & 0x1FFF for i in range(20)]
    d.recompress(max_pages=5, algo="deflate")
    changed = [i for i in range(20) if (d.slot_state(i)[1] >> 20) & 3 == 1]
    assert 0 < len(changed) <= 5
    thr = sorted(sizes)[10]
    d.recompress(threshold=thr)
    for i in range(20):
        f = d.slot_state(i)[1]
        if (f >> 20) & 3 == 1 and i not in changed:
            assert sizes[i] >= thr and (f & 0x1FFF) < thr
        assert d.read(i * PAGE, PAGE) == pages[i]


# ---------------------------------------------------------------------------- statistics
def test_counters_are_exact(dev):
    rng = random.Random(23)
    model = {}
    for _ in range(300):
        i = rng.randrange(64)
        p = mixed_page(rng)
        dev.write(i * PAGE, p)
        model[i] = p
    for i in rng.sample(sorted(model), 10):
        dev.discard(i * PAGE, PAGE)
        del model[i]
    settle(dev)
    s = dev.stats()
    flags = [dev.slot_state(i)[1] for i in range(64)]
    assert s.pages_stored == len(model)
    assert s.same_pages == sum(bool(f & ZRAM_SAME) for f in flags)
    assert s.huge_pages == sum(bool(f & ZRAM_HUGE) for f in flags)
    assert s.compr_data_size == sum(f & 0x1FFF for f in flags if not f & ZRAM_SAME)
    assert s.mem_used_pages == dev.pool.total_pages
    assert s.huge_pages_since >= s.huge_pages


# The device keeps hand-inlined copies of its page read and page store on the hot paths
# (`read`'s 4 KiB branch and `_read_pages`; `_write_page` and `_write_pages`), and one
# readable reference of each (`_load_page`, `_store_page`).  The twin below is driven through
# the references only; whatever a request does to data, slots and counters must not depend on
# which of the two did it.
def reference_write(d: ZramDevice, offset: int, data) -> int:
    """`ZramDevice.write` with every page stored by the reference: the request as `write`
    makes it (clamped, failed at the first failing page, accounted), its pages through
    `_write_unaligned`, which stores whole pages with `_store_page` and partial ones by
    read-modify-write (`_load_page` + `_store_page`)."""
    n = len(data)
    if n == 0:
        return 0
    if offset >= d.disksize:
        raise NoSpace("write past the end")
    end = min(offset + n, d.disksize)
    index = offset // PAGE
    t0 = time.perf_counter_ns()
    assert d._meta is not None
    try:
        d._write_unaligned(d._meta, index, offset, end, data)
    except ZramError as exc:
        d._write_failed(exc.block, exc)
    _account(
        d._stripes[index & STRIPE_MASK],
        WRITE_IOS,
        WRITE_SECTORS,
        WRITE_NS,
        end - offset,
        time.perf_counter_ns() - t0,
    )
    return end - offset


def reference_read(d: ZramDevice, offset: int, length: int) -> bytes:
    """`ZramDevice.read` with every page read by the reference `_load_page(touch=True)`."""
    if offset >= d.disksize or length == 0:
        return b""
    end = min(offset + length, d.disksize)
    first = offset // PAGE
    t0 = time.perf_counter_ns()
    parts = []
    assert d._meta is not None
    for index in range(first, (end + PAGE - 1) // PAGE):
        try:
            parts.append(d._load_page(d._meta, index, True)[0])
        except ZramError:
            with d._stripes[index & STRIPE_MASK].lock:
                d._stripes[index & STRIPE_MASK].counters[FAILED_READS] += 1
            raise IOFailure(f"read of block {index} failed") from None
    _account(
        d._stripes[first & STRIPE_MASK],
        READ_IOS,
        READ_SECTORS,
        READ_NS,
        end - offset,
        time.perf_counter_ns() - t0,
    )
    skip = offset - first * PAGE
    return b"".join(parts)[skip : skip + end - offset]


def corrupt(d: ZramDevice, index: int) -> None:
    """Overwrite the compressed object of slot `index` (in the pool, or on the backing device
    after compressed writeback) with bytes no decompressor accepts; other slots are left."""
    h, f, _ = d.slot_state(index)
    size = f & SIZE_MASK
    if not size or f & (ZRAM_SAME | ZRAM_HUGE):
        return
    if f & ZRAM_WB:
        assert d.backing is not None
        os.pwrite(d.backing.fd, b"\xff" * size, h * PAGE)
    else:
        assert d.pool is not None
        d.pool.write_object(h, b"\xff" * size)


def outcome(fn, *args, **kw):
    """What a request returned, or the errno it raised."""
    try:
        return "ok", fn(*args, **kw)
    except ZramError as exc:
        return "errno", exc.errno


def assert_twins_agree(fast: ZramDevice, ref: ZramDevice) -> None:
    """The same slots (flags, handles, access times), pool size and counters: every field of
    mm_stat, io_stat, bd_stat and the block stat (time spent aside)."""
    assert fast._meta is not None and ref._meta is not None
    a, b = fast._meta.table, ref._meta.table
    for column in ("np_flags", "np_ac_time", "np_handle"):
        differ = np.flatnonzero(getattr(a, column) != getattr(b, column))
        assert not differ.size, f"{column} differs at slots {differ[:8].tolist()}"
    sa, sb = fast.stats(), ref.stats()
    timed = {READ_NS, WRITE_NS}
    assert [v for k, v in enumerate(sa.counters) if k not in timed] == [
        v for k, v in enumerate(sb.counters) if k not in timed
    ]
    sa.counters = sb.counters = []
    assert sa == sb


@pytest.mark.parametrize("seed", range(8))
def test_hot_paths_agree_with_the_reference_page_read_and_store(tmp_path, seed):
    """Random requests on twin devices, one served by the device as it is (its inlined hot
    copies), the other by the reference page read and store: every request returns the same
    (data or errno), and after it both hold the same slots, flags and counters.  The pages are
    of every kind (zero, same-filled, text, half-random, incompressible/HUGE), written whole,
    as runs (bytes and not), and partially, over slots of every kind (SAME, HUGE, compressed
    at priority 0 or 1 after recompression, written back plainly or compressed, discarded),
    with mem_limit hits (odd seeds) or a pool out of frames (seeds 2 and 6) on the way."""
    rng = random.Random(seed)
    clock = FakeClock(1000)
    twins = []
    for name in ("fast", "ref"):
        backing = tmp_path / f"{name}.img"
        backing.write_bytes(bytes(48 * PAGE))
        r = Registry(memory=PhysicalMemory(max_pages=40 if seed % 4 == 2 else 1 << 14))
        d = r.devices[0]
        d.clock = clock
        d.set_comp_algorithm("lz4")
        d.set_comp_algorithm("zstd", 1)
        d.set_backing_dev(str(backing))
        d.set_compressed_writeback(seed % 3 == 0)
        d.set_disksize(MiB)
        twins.append(d)
    fast, ref = twins
    npages = fast.nr_pages
    kinds = [
        text_page,
        random_page,
        half_page,
        lambda g: same_page(g.randrange(3)),
        lambda g: bytes(PAGE),
        mixed_page,
    ]

    def pages(n: int) -> bytes:
        return b"".join(rng.choice(kinds)(rng) for _ in range(n))

    def write_both(offset: int, buf: bytes, payload=None) -> None:
        """`payload` (default `buf`) to the fast twin, `buf` to the reference one."""
        got = outcome(fast.write, offset, buf if payload is None else payload)
        assert got == outcome(reference_write, ref, offset, buf)

    def read_both(offset: int, n: int) -> None:
        assert outcome(fast.read, offset, n) == outcome(reference_read, ref, offset, n)

    for _ in range(300):
        clock.t += 1
        op = rng.randrange(100)
        if op < 25:  # one page: read()'s and write's 4 KiB paths
            i = rng.randrange(npages)
            if rng.random() < 0.5:
                buf = pages(1)
                write_both(i * PAGE, buf, buf if rng.random() < 0.8 else bytearray(buf))
            else:
                read_both(i * PAGE, PAGE)
        elif op < 50:  # runs of pages: _write_pages, _read_pages
            n = rng.randrange(2, 33)
            i = rng.randrange(npages - n + 1)
            if rng.random() < 0.5:
                buf = pages(n)
                # FUSE gives bytes; other callers may not
                write_both(i * PAGE, buf, buf if rng.random() < 0.5 else bytearray(buf))
            else:
                read_both(i * PAGE, n * PAGE)
        elif op < 65:  # partial pages
            off = rng.randrange(MiB - 1)
            n = rng.randrange(1, min(3 * PAGE, MiB - off) + 1)
            if rng.random() < 0.5:
                write_both(off, pages(1 + n // PAGE)[:n])
            else:
                read_both(off, n)
        elif op < 75:
            off, n = rng.randrange(MiB), rng.randrange(1, 40 * PAGE)
            for d in twins:
                d.discard(off, n)
        elif op < 82:
            extra = rng.choice([None, 0, 1, 4]) if seed % 2 else None
            for d in twins:
                assert d.pool is not None
                d.set_mem_limit(0 if extra is None else (d.pool.total_pages + extra) * PAGE)
        elif op < 87:
            for d in twins:
                d.mark_idle(None)
        elif op < 93:
            mode = rng.choice([WB_HUGE, WB_IDLE, WB_HUGE | WB_IDLE])
            lo = rng.randrange(npages)
            hi = min(npages, lo + rng.randrange(1, 64))
            assert outcome(fast.writeback, [(mode, lo, hi)]) == outcome(
                ref.writeback, [(mode, lo, hi)]
            )
        elif op < 97:
            mode = rng.choice([0, RECOMP_HUGE])
            assert outcome(fast.recompress, mode=mode, max_pages=8) == outcome(
                ref.recompress, mode=mode, max_pages=8
            )
        else:  # a compressed object goes bad: EIO, and read as every path does
            assert fast._meta is not None
            f = fast._meta.table.np_flags
            sized = (f & SIZE_MASK) != 0
            objects = np.flatnonzero(sized & ((f & (ZRAM_SAME | ZRAM_HUGE)) == 0))
            on_disk = np.flatnonzero(sized & ((f & ZRAM_WB) != 0))
            if not objects.size:
                continue
            i = int(rng.choice(on_disk if on_disk.size and rng.random() < 0.5 else objects))
            for d in twins:
                corrupt(d, i)
                d.mark_idle(None)
            lo = rng.randrange(max(0, i - 3), i + 1)
            off, n = rng.choice(
                [
                    (i * PAGE, PAGE),
                    (lo * PAGE, (i - lo + 2) * PAGE),
                    (i * PAGE + 100, 50),
                    (lo * PAGE + 7, (i - lo + 1) * PAGE),
                ]
            )
            read_both(off, n)
        assert_twins_agree(fast, ref)
    for i in range(npages):
        assert outcome(fast._load_page, fast._meta, i, False) == outcome(
            ref._load_page, ref._meta, i, False
        )
    s = fast.stats()
    assert s.same_pages and s.huge_pages_since and s.bd_writes and s.notify_free
    if seed % 2 or seed % 4 == 2:
        assert s.failed_writes, "no write ran into mem_limit or out of frames"


@pytest.mark.parametrize("limit", ["frames", "mem_limit"])
def test_multi_page_write_that_runs_out_of_memory_keeps_the_rest(limit):
    """A 32-page write whose pool runs out of frames (or reaches mem_limit) halfway: EIO for
    the request, failed_writes once, the pages before the failing one written, it and the
    ones after it unchanged (a bio whose segment fails), and the counters match the slots."""
    rng = random.Random(32)
    r = Registry(memory=PhysicalMemory(max_pages=24 if limit == "frames" else 1 << 14))
    d = r.devices[0]
    d.set_disksize(MiB)
    if limit == "mem_limit":
        d.set_mem_limit(24 * PAGE)
    old = [text_page(rng) for _ in range(32)]
    for k in range(4):
        d.write(k * PAGE, old[k])
    new = [random_page(rng) for _ in range(32)]  # HUGE: one frame each
    assert errno_of(d.write, 0, b"".join(new)) == errno.EIO
    s = d.stats()
    assert s.failed_writes == 1
    got = [d.read(k * PAGE, PAGE) for k in range(32)]
    done = next(k for k in range(32) if got[k] != new[k])
    assert 0 < done < 32
    for k in range(done, 32):
        assert got[k] == (old[k] if k < 4 else bytes(PAGE))
    settle(d)
    s = d.stats()
    flags = [d.slot_state(k)[1] for k in range(32)]
    assert s.pages_stored == sum(1 for f in flags if f)
    assert s.huge_pages == sum(bool(f & ZRAM_HUGE) for f in flags) == done
    assert s.compr_data_size == sum(f & 0x1FFF for f in flags)
    assert d.pool is not None and s.mem_used_pages == d.pool.total_pages


def test_failed_reads_counted_on_corruption(dev):
    rng = random.Random(24)
    dev.write(0, text_page(rng))
    h, f, _ = dev.slot_state(0)
    dev.pool.write_object(h, b"\xff" * (f & 0x1FFF))  # corrupt the stored object
    assert errno_of(dev.read, 0, PAGE) == errno.EIO
    assert dev.stats().failed_reads == 1
    assert errno_of(dev.write, 10, b"x") == errno.EIO  # partial write needs the old page
    assert dev.stats().failed_writes == 1
    dev.write(0, text_page(rng))  # a full overwrite repairs it
    dev.read(0, PAGE)


@pytest.mark.parametrize(
    "request_pages", [(0, 4), (2, 1), (1, 2)], ids=["multi-page", "4KiB", "unaligned"]
)
def test_failed_read_marks_only_pages_before_the_bad_one(dev, request_pages):
    """A read whose page 2 cannot be decompressed (a 4-page read, the page alone, a read from
    the middle of page 1 into page 2): EIO for the request, failed_reads + 1; the pages read
    before the bad one were accessed (IDLE cleared, ac_time set), the bad one and the ones
    after were not — zram_bio_read() marks a page accessed only once it was read."""
    first, count = request_pages
    clock = FakeClock(5000)
    dev.clock = clock
    rng = random.Random(25)
    pages = [text_page(rng) for _ in range(4)]
    dev.write(0, b"".join(pages))
    dev.mark_idle(None)
    clock.t = 6000
    h, f, _ = dev.slot_state(2)
    dev.pool.write_object(h, b"\xff" * (f & 0x1FFF))
    before = dev.stats()
    offset = first * PAGE + (100 if request_pages == (1, 2) else 0)
    assert errno_of(dev.read, offset, count * PAGE - (offset - first * PAGE)) == errno.EIO
    after = dev.stats()
    assert after.failed_reads == before.failed_reads + 1
    marked = [
        not dev.slot_state(i)[1] & ZRAM_IDLE and dev.slot_state(i)[2] == 6000 for i in range(4)
    ]
    assert marked == [first <= i < 2 for i in range(4)]
    assert dev.read(0, 2 * PAGE) == pages[0] + pages[1]


# ---------------------------------------------------------------------------- slot table cost
def test_slot_metadata_at_most_24_bytes():
    assert SLOT_BYTES <= 24
    t = SlotTable(1000)
    assert t.handle.itemsize + t.flags.itemsize + t.ac_time.itemsize == SLOT_BYTES
    assert isinstance(t.np_flags, np.ndarray) and t.np_flags.base is not None


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_100gb_device_costs_next_to_nothing():
    r = Registry(memory=PhysicalMemory(max_pages=1 << 14))
    d = r.devices[0]
    before = _rss_kib()
    d.set_disksize(100 * (1 << 30))  # LTP zram02's 100 GB
    d.set_mem_limit(1 << 20)
    d.write(0, text_page(random.Random(25)))  # mkswap-like header write
    d.write(d.disksize - PAGE, same_page(1))
    assert d.read(50 * (1 << 30), 8) == bytes(8)
    grown = _rss_kib() - before
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
    d.mark_idle(None)  # a full-table scan stays cheap too
    d.discard(0, d.disksize)  # mkfs-style whole-device discard
    s = d.stats()
    assert s.pages_stored == 0 and s.notify_free == d.nr_pages
    assert _rss_kib() - before < 64 * 1024
    d.reset()


def test_stats_survive_reads_of_unwritten_space_without_touching_table(reg):
    d = reg.devices[0]
    d.set_disksize(64 * MiB)
    d.read(0, 8 * MiB)
    assert d.stats().pages_stored == 0
    assert all(d.slot_state(i) == (0, 0, 0) for i in range(0, 2048, 97))


def test_device_hash_unchanged_by_read_only_activity(dev):
    rng = random.Random(26)
    for i in range(40):
        dev.write(i * PAGE, mixed_page(rng))
    h = device_hash(dev)
    dev.mark_idle(None)
    dev.compact()
    assert device_hash(dev) == h


def test_os_file_is_not_left_open_after_reset(reg, backing):
    d = wb_dev(reg, backing)
    assert d.backing is not None
    fd = d.backing.fd
    d.reset()
    assert d.backing is None
    with pytest.raises(OSError):
        os.fstat(fd)


# ---------------------------------------------------------------------------- garbage
def test_data_path_leaves_no_cyclic_garbage(reg):
    """Every object the data path drops goes by reference counting.  The daemon runs the
    cycle collector rarely (zramfs.cli._tune_gc), so anything written, overwritten, discarded,
    compacted or reset that lingered in a reference cycle kept its memory until the next full
    collection (freed zspages once did: the daemon's RSS grew with every fill/discard cycle)."""
    import gc

    d = reg.devices[0]
    d.set_disksize(4 * MiB)
    rng = random.Random(27)
    kinds = (
        lambda: random_page(rng),
        lambda: half_page(rng),
        lambda: text_page(rng),
        lambda: same_page(rng.randrange(3)),
    )

    def cycle() -> None:
        n = d.nr_pages
        for i in range(n):
            d.write(i * PAGE, kinds[i % 4]())
        for _ in range(n // 2):  # overwrites, partial writes
            i = rng.randrange(n)
            d.write(i * PAGE + rng.randrange(2) * 512, kinds[rng.randrange(4)]()[:3584])
        for i in range(0, n, 7):
            d.discard(i * PAGE, 3 * PAGE)  # holes: fragmentation to compact
        d.compact()
        d.read(0, 16 * PAGE)
        d.read(PAGE + 100, 3 * PAGE)
        d.punch_hole(0, n * PAGE)
        settle(d)

    cycle()  # warm caches, thread-locals, pools
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(4):
            cycle()
        grown = len(gc.get_objects()) - before
        # reset frees the pool by reference counting too; only its fullness-list heads (one
        # self-linked sentinel per list, like the kernel's) wait for the collector
        d.reset()
        d.set_disksize(4 * MiB)
        cycle()
        heads = 4 * len(d.pool.classes)
        grown_reset = len(gc.get_objects()) - before - grown
    finally:
        gc.enable()
    # a freed zspage in a cycle alone was 4 tracked objects; 4 cycles free thousands of them
    # (what does grow on the first cycles: isinstance() caches of the abc module, a few dozen)
    assert grown < 100, f"{grown} more gc-tracked objects after 4 fill/free cycles"
    assert grown_reset < heads + 100, f"{grown_reset} more after a reset ({heads} list heads)"
