"""ZramDevice and Registry: zram's block device and zram-control, on the allocator.

Owns what drivers/block/zram/zram_drv.c does (zram.md §1–§5):

* lifecycle: uninitialised until `disksize` is set; `reset` frees everything (EBUSY while
  the image is open); what cannot change after init answers EBUSY;
* the data path: same-filled pages (no allocation), compression outside the slot lock,
  HUGE pages stored raw once the compressed length reaches the pool's huge_class_size,
  malloc + copy, swap the slot under its lock, free the old object last; sub-block I/O by
  read-modify-write; discard exactly like zram_bio_discard; punch_hole / zero_range;
* mem_limit / mem_used_max, idle marking with access times, writeback to a backing file
  (and reads served from it), recompression with secondary algorithms, compaction;
* the statistics behind mm_stat, io_stat, bd_stat, debug_stat and the block-layer stat.

Parsing and formatting of attribute text lives in `zramfs.attrs`; the methods here take
typed values and raise `ZramError` with the kernel's errno for what the *state* forbids.

Concurrency: the kernel's per-entry lock becomes a striped lock (`zramfs.slots`); a slot
is only read or changed under its stripe, and the counters that change with a slot are
kept per stripe, so the data path takes no device-wide lock.  Configuration changes take
`dev_lock` (the kernel's init_lock/dev_lock) and never run on the data path.  Compression
happens before the slot lock is taken, like zram_write_page(); a single-page read
decompresses under the lock, like zram_read_page(), while a multi-page read copies each object
out under its lock and decompresses after dropping it.  Sub-block writes check a per-
stripe generation number when they commit, so two partial writers of one block never
lose each other's bytes while both still compress outside the lock.
"""
from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field

import numpy as np

from allocator import OutOfMemory, PhysicalMemory, Pool
from allocator.locks import LEAF_RANK, LockClass, Mutex
from allocator.sizeclass import build_class_table

from . import codecs
from .errors import (DeviceBusy, InvalidInput, IOFailure, NoMemory, NoSpace, NoSuchDevice,
                     NotBlockDevice, ZramError)
from .slots import (ACCESS_CLEARED, BD_COUNT, BD_READS, BD_WRITES, COMPR_DATA_SIZE, FAILED_READS,
                    FAILED_WRITES, FLUSH_IOS, GENERATION, HUGE_PAGES, HUGE_PAGES_SINCE, MAX_USED,
                    MISS_FREE, NOTIFY_FREE, NR_COUNTERS, PAGE_SHIFT, PAGE_SIZE,
                    PAGES_STORED, READ_IOS, READ_NS, READ_SECTORS, SAME_PAGES, SIZE_MASK,
                    STRIPE_MASK, WRITE_IOS, WRITE_NS, WRITE_SECTORS, ZRAM_COMP_PRIORITY_MASK,
                    ZRAM_COMP_PRIORITY_SHIFT, ZRAM_HUGE, ZRAM_IDLE, ZRAM_INCOMPRESSIBLE,
                    ZRAM_PP_SLOT, ZRAM_SAME, ZRAM_WB, SlotTable, Stripe, new_stripes)

__all__ = ["ZramDevice", "Registry", "ZramError", "CompParams", "DeviceStats",
           "ZRAM_MAX_COMPS", "WB_IDLE", "WB_HUGE", "WB_INCOMPRESSIBLE", "RECOMP_IDLE", "RECOMP_HUGE"]

SECTOR_SHIFT = 9
ZRAM_PRIMARY_COMP = 0
ZRAM_SECONDARY_COMP = 1
ZRAM_MAX_COMPS = 4

# The device's lock classes; their ranks are rows of the stack's lock order, written once in
# allocator/locks.py (the slot locks' class is zramfs.slots.STRIPE_LOCK).
REGISTRY_LOCK = LockClass("zram-control", 2)
COMPACT_LOCK = LockClass("&zram->compact", 3)
INIT_LOCK = LockClass("&zram->init_lock", 4)
BITMAP_LOCK = LockClass("&zram->bitmap_lock", LEAF_RANK)
U64 = (1 << 64) - 1

# writeback / recompress mode bits (the kernel's IDLE_WRITEBACK, HUGE_WRITEBACK, ...)
WB_IDLE = 1
WB_HUGE = 2
WB_INCOMPRESSIBLE = 4
RECOMP_IDLE = 1
RECOMP_HUGE = 2

_ZERO_PAGE = bytes(PAGE_SIZE)
_SAME_FILL_CACHE: dict[int, bytes] = {0: _ZERO_PAGE}


def _account(stripe: Stripe, ios: int, sectors: int, ticks: int, nbytes: int, ns: int) -> None:
    """The block layer's per-request accounting (ios, sectors, time), in the stripe of the
    request's first page.  Single-page requests do it inline, inside their commit."""
    with stripe.lock:
        c = stripe.counters
        c[ios] += 1
        c[sectors] += (nbytes + 511) >> SECTOR_SHIFT
        c[ticks] += ns


def _fill_page(word: int) -> bytes:
    """The page a SAME slot holds: its 8-byte word repeated (memset_l)."""
    page = _SAME_FILL_CACHE.get(word)
    if page is None:
        page = word.to_bytes(8, "little") * (PAGE_SIZE // 8)
        if len(_SAME_FILL_CACHE) < 256:
            _SAME_FILL_CACHE[word] = page
    return page


@dataclass
class CompParams:
    """algorithm_params of one priority (zcomp_params): unset fields mean backend defaults."""

    level: int | None = None
    dictionary: bytes | None = None
    winbits: int | None = None


@dataclass
class DeviceStats:
    """A snapshot of struct zram_stats plus the pool numbers mm_stat shows."""

    pages_stored: int = 0
    compr_data_size: int = 0
    mem_used_pages: int = 0
    limit_pages: int = 0
    max_used_pages: int = 0
    same_pages: int = 0
    pages_compacted: int = 0
    huge_pages: int = 0
    huge_pages_since: int = 0
    failed_reads: int = 0
    failed_writes: int = 0
    notify_free: int = 0
    miss_free: int = 0
    bd_count: int = 0
    bd_reads: int = 0
    bd_writes: int = 0
    counters: list[int] = field(default_factory=list)  # raw per-index sums (block stat etc.)


class _BackingDev:
    """An open backing file: its blocks, and a bitmap of the ones in use (bd bitmap)."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:  # filp_open's error is returned as is
            raise ZramError(f"{path}: {exc.strerror}", err=exc.errno) from None
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISBLK(st.st_mode):
                size = os.lseek(fd, 0, os.SEEK_END)
            elif stat_mod.S_ISREG(st.st_mode):
                # The kernel accepts only block devices; a plain file is what user space has.
                size = st.st_size
            else:
                raise NotBlockDevice(f"{path}: not a block device or regular file")
            if size >> PAGE_SHIFT == 0:
                # "Refuse to use zero sized device (also prevents self reference)"
                raise InvalidInput(f"{path}: zero-sized backing device")
        except BaseException:
            os.close(fd)
            raise
        self.path = path
        self.fd = fd
        self.nr_blocks = size >> PAGE_SHIFT
        self.bitmap = bytearray(self.nr_blocks)
        self._hint = 0
        self._lock = Mutex(BITMAP_LOCK)

    def alloc_block(self) -> int | None:
        """Lowest free block (find_next_zero_bit from 0, as in current kernels), or None."""
        with self._lock:
            blk = self.bitmap.find(0, self._hint)
            if blk < 0:
                self._hint = self.nr_blocks
                return None
            self.bitmap[blk] = 1
            self._hint = blk + 1
            return blk

    def free_block(self, blk: int) -> None:
        with self._lock:
            self.bitmap[blk] = 0
            if blk < self._hint:
                self._hint = blk

    def read_block(self, blk: int) -> bytes:
        data = os.pread(self.fd, PAGE_SIZE, blk << PAGE_SHIFT)
        if len(data) != PAGE_SIZE:
            raise IOFailure(f"short read of backing block {blk}")
        return data

    def write_block(self, blk: int, data: bytes) -> None:
        if os.pwrite(self.fd, data, blk << PAGE_SHIFT) != len(data):
            raise IOFailure(f"short write of backing block {blk}")

    def close(self) -> None:
        os.close(self.fd)


class _Meta:
    """Everything disksize creates and reset destroys (zram_meta_alloc + the comps)."""

    def __init__(self, nr_pages: int, pool: Pool, comps: list[codecs.Codec | None],
                 table: SlotTable) -> None:
        self.nr_pages = nr_pages
        self.pool = pool
        self.comps = comps
        self.table = table
        self.huge_class_size = pool.huge_class_size
        #: zs_lookup_class_index() for recompression: the pool's own class table
        self.class_table = pool.table
        self.num_active_comps = sum(1 for c in comps if c is not None)


class ZramDevice:
    """One zram device: configuration, slot table, pool, codecs and counters."""

    def __init__(self, dev_id: int, *, memory: PhysicalMemory, chain_size: int = 4,
                 chain_rule: str = "max-used") -> None:
        self.id = dev_id
        self.name = f"zram{dev_id}"
        self.memory = memory
        self.chain_size = chain_size
        self.chain_rule = chain_rule
        #: the kernel's init_lock / dev_lock: serialises configuration, never on the data path
        self.dev_lock = Mutex(INIT_LOCK)
        #: one compaction at a time; reset waits for it (see compact())
        self._compact_lock = Mutex(COMPACT_LOCK)
        #: the access-time clock (seconds); CLOCK_BOOTTIME like ac_time, replaceable in tests
        self.clock = _boottime
        self.open_count = 0
        self._claimed = False
        self.disksize = 0
        self.pool: Pool | None = None
        self._meta: _Meta | None = None
        self.comp_algs: list[str | None] = [codecs.DEFAULT_ALGORITHM, None, None, None]
        self.comp_params: list[CompParams] = [CompParams() for _ in range(ZRAM_MAX_COMPS)]
        self.limit_pages = 0
        self._max_used_floor = 0
        self.backing: _BackingDev | None = None
        self.wb_limit_enable = False
        self.bd_wb_limit = 0
        self.wb_batch_size = 32
        self.compressed_writeback = False
        # The 1024 slot-lock stripes with their counters cost ~350 KiB: an uninitialised
        # device (hot_add in a loop, --devices N) has none until disksize creates them (or
        # a flush counts one), and reset drops them again; every counter is zero then, as
        # after zram_reset_device()'s memset of zram->stats.
        self._stripes: list[Stripe] = _NO_STRIPES

    # ------------------------------------------------------------------ lifecycle
    @property
    def initialized(self) -> bool:
        return self._meta is not None

    @property
    def nr_pages(self) -> int:
        return self.disksize >> PAGE_SHIFT

    def open(self) -> None:
        """A user of the image (FUSE open, loop attach); reset/hot_remove answer EBUSY meanwhile."""
        with self.dev_lock:
            if self._claimed:  # zram_open() during a reset
                raise DeviceBusy(f"{self.name} is being reset")
            self.open_count += 1

    def close(self) -> None:
        with self.dev_lock:
            if self.open_count <= 0:
                raise ZramError(f"{self.name} is not open", err=errno.EBADF)
            self.open_count -= 1

    def set_disksize(self, nbytes: int) -> None:
        """disksize_store after memparse (nbytes != 0): allocate table, pool and compressors."""
        if nbytes == 0:
            raise InvalidInput("disksize: zero")
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Cannot change disksize for initialized device")
            disksize = (nbytes + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & U64  # PAGE_ALIGN, u64 wrap
            if disksize == 0:
                raise NoMemory("disksize overflows")
            nr_pages = disksize >> PAGE_SHIFT
            table = SlotTable(nr_pages)
            comps: list[codecs.Codec | None] = [None] * ZRAM_MAX_COMPS
            for prio, name in enumerate(self.comp_algs):
                if name is None:
                    continue
                p = self.comp_params[prio]
                try:
                    comps[prio] = codecs.get_codec(name, level=p.level, dictionary=p.dictionary,
                                                   winbits=p.winbits)
                except ZramError as exc:
                    table.release()
                    raise InvalidInput(f"Cannot initialise {name} compressing backend: {exc.strerror}") from None
            try:
                pool = Pool(self.name, memory=self.memory, chain_size=self.chain_size,
                            chain_rule=self.chain_rule)
            except (MemoryError, OutOfMemory):
                table.release()
                raise NoMemory("Error creating memory pool") from None
            # Stripes before meta: the data path reads self._meta first, then the stripes.
            # (A flush may have created them already: keep its count.)
            if not self._stripes:
                self._stripes = new_stripes()
            self._meta = _Meta(nr_pages, pool, comps, table)
            self.pool = pool
            self.disksize = disksize

    def reset(self) -> None:
        """reset_store: EBUSY while open; otherwise zram_reset_device() (current kernels)."""
        with self.dev_lock:
            if self.open_count > 0 or self._claimed:
                raise DeviceBusy(f"{self.name} is open")
            self._claimed = True
        try:
            # A compaction in progress works on the pool outside dev_lock: wait for it.
            with self._compact_lock, self.dev_lock:
                self._reset_device()
        finally:
            with self.dev_lock:
                self._claimed = False

    def _reset_device(self) -> None:
        # Latest semantics (zram.md §2.3): everything is reverted even on an uninitialised
        # device; wb_limit_enable, bd_wb_limit, wb_batch_size and compressed_writeback are
        # fields of struct zram, not of its stats, and survive.
        self.limit_pages = 0
        meta, self._meta = self._meta, None
        self.pool = None
        self.disksize = 0
        if meta is not None:
            self._meta_free(meta)
        self.comp_algs = [codecs.DEFAULT_ALGORITHM, None, None, None]
        self.comp_params = [CompParams() for _ in range(ZRAM_MAX_COMPS)]
        # Dropping the stripes zeroes every counter and gives their memory back.  Nothing
        # uses them concurrently: reset refuses while the image is open, and stats() works
        # on the list it read.
        self._stripes = _NO_STRIPES
        self._max_used_floor = 0
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def _meta_free(self, meta: _Meta) -> None:
        """zram_meta_free(): free every slot, then destroy the pool.

        zs_destroy_pool() does not free live objects (5.17 reports and leaks them), and
        the frames belong to the registry's shared PhysicalMemory, so every stored object
        must go back first.
        """
        t = meta.table
        with self._all_stripes():
            for index in np.flatnonzero(t.allocated_mask()).tolist():
                self._slot_free(meta, index, self._stripes[index & STRIPE_MASK].counters)
        meta.pool.destroy()
        self.memory.drop_free_frames()   # a reset gives the memory back now, not in a batch
        t.release()

    # ------------------------------------------------------------------ configuration
    def set_comp_algorithm(self, name: str, prio: int = ZRAM_PRIMARY_COMP) -> None:
        """comp_algorithm / recomp_algorithm after name validation: EBUSY once initialised."""
        if name not in codecs.AVAILABLE:
            raise InvalidInput(f"unknown algorithm {name!r}")
        if not 0 <= prio < ZRAM_MAX_COMPS:
            raise InvalidInput(f"priority {prio} out of range")
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't change algorithm for initialized device")
            self.comp_algs[prio] = name

    def find_priority(self, algo: str) -> int | None:
        for prio, name in enumerate(self.comp_algs):
            if name == algo:
                return prio
        return None

    def set_algorithm_params(self, prio: int, params: CompParams) -> None:
        """algorithm_params: replace every parameter of one priority (comp_params_reset first)."""
        if not 0 <= prio < ZRAM_MAX_COMPS:
            raise InvalidInput(f"priority {prio} out of range")
        with self.dev_lock:
            if self._meta is not None:  # 241f9005b1c8 "zram: do not permit params change after init"
                raise DeviceBusy("Can't change algorithm params for initialized device")
            self.comp_params[prio] = params

    def set_mem_limit(self, nbytes: int) -> None:
        """mem_limit_store: any time; stored in pages, rounded up; 0 = no limit."""
        with self.dev_lock:
            self.limit_pages = ((nbytes + PAGE_SIZE - 1) & U64) >> PAGE_SHIFT

    def reset_mem_used_max(self) -> None:
        """mem_used_max_store('0'): the peak becomes the current pool size (no-op uninitialised)."""
        with self.dev_lock:
            meta = self._meta
            if meta is None:
                return
            self._max_used_floor = meta.pool.total_pages
            for s in self._stripes:
                with s.lock:
                    s.counters[MAX_USED] = 0

    def set_backing_dev(self, path: str) -> None:
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't setup backing device for initialized device")
            new = _BackingDev(path)
            old, self.backing = self.backing, new
            if old is not None:
                old.close()

    def set_writeback_limit(self, units: int) -> None:
        with self.dev_lock:
            self.bd_wb_limit = units  # 4 KiB units; PAGE_SIZE/4096 == 1 so no rounding here

    def set_writeback_limit_enable(self, enable: bool) -> None:
        with self.dev_lock:
            self.wb_limit_enable = bool(enable)

    def set_writeback_batch_size(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("writeback_batch_size: zero")
        with self.dev_lock:
            self.wb_batch_size = n

    def set_compressed_writeback(self, enable: bool) -> None:
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't change compressed writeback for initialized device")
            self.compressed_writeback = bool(enable)

    # ------------------------------------------------------------------ slot helpers
    def _require_meta(self) -> _Meta:
        meta = self._meta
        if meta is None:
            raise InvalidInput(f"{self.name} is not initialized")
        return meta

    def _slot_free(self, meta: _Meta, index: int, c: list[int]) -> None:
        """slot_free(): release whatever the slot holds; caller holds the slot's stripe.

        `c` is the stripe's counter list (the same stripe the caller holds).
        """
        t = meta.table
        f = t.flags[index]
        if f == 0 and t.handle[index] == 0:
            return  # never written: nothing stored, counters untouched
        t.ac_time[index] = 0
        t.flags[index] = 0
        h = t.handle[index]
        t.handle[index] = 0
        if f & ZRAM_WB:
            # A written-back slot may keep HUGE/size bits (compressed writeback) only as
            # read-path markers; its memory was already accounted out at writeback.
            backing = self.backing
            if backing is not None:
                backing.free_block(h)
            c[BD_COUNT] -= 1
        elif f & ZRAM_SAME:
            c[SAME_PAGES] -= 1
        else:
            if f & ZRAM_HUGE:
                c[HUGE_PAGES] -= 1
            meta.pool.free(h)
            c[COMPR_DATA_SIZE] -= f & SIZE_MASK
        c[PAGES_STORED] -= 1

    def _decode_locked(self, meta: _Meta, index: int, f: int, h: int) -> tuple[bytes, int]:
        """Under the slot lock: the slot's bytes and the priority to decompress them with.

        Returns (page, -1) when the bytes already are the page (SAME, HUGE, unallocated,
        plain written-back blocks), else (compressed object, priority).
        """
        if f & ZRAM_WB:
            backing = self.backing
            if backing is None:
                raise IOFailure("written-back block without a backing device")
            data = backing.read_block(h)
            self._stripes[index & STRIPE_MASK].counters[BD_READS] += 1
            size = f & SIZE_MASK
            if size and not (f & ZRAM_HUGE):  # compressed writeback: object bytes on disk
                return data[:size], (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
            return data, -1
        if f & ZRAM_SAME or not h:
            return _fill_page(h), -1
        size = f & SIZE_MASK
        if f & ZRAM_HUGE:
            return meta.pool.read_object(h, PAGE_SIZE), -1
        return meta.pool.read_object(h, size), (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT

    def _decompress(self, meta: _Meta, data: bytes, prio: int) -> bytes:
        if prio < 0:
            return data
        comp = meta.comps[prio]
        if comp is None:
            raise IOFailure(f"no compressor for priority {prio}")
        return comp.decompress(data, PAGE_SIZE)

    def _load_page(self, meta: _Meta, index: int, touch: bool) -> tuple[bytes, int]:
        """zram_read_page(): the page at `index` and the stripe generation it was read at.

        With `touch` the slot is marked accessed (mark_slot_accessed: IDLE and PP_SLOT
        cleared, ac_time set) like a bio read; the RMW read of a partial write does not.
        """
        t = meta.table
        stripe = self._stripes[index & STRIPE_MASK]
        with stripe.lock:
            f = t.flags[index]
            h = t.handle[index]
            gen = stripe.counters[GENERATION]
            if f == 0 and h == 0:
                return _ZERO_PAGE, gen
            data, prio = self._decode_locked(meta, index, f, h)
            if touch:
                t.flags[index] = f & ~ACCESS_CLEARED
                t.ac_time[index] = int(self.clock())
        return (self._decompress(meta, data, prio) if prio >= 0 else data), gen

    def _read_pages(self, meta: _Meta, index: int, count: int) -> list[bytes]:
        """zram_bio_read() of whole pages: `_load_page(touch=True)` for each, in one frame.

        The hot loop of every multi-page read (128 KiB requests: a quarter of its CPU was
        Python call overhead).  Each page is read exactly as `_load_page` does it — its slot
        lock held while the object is copied out of the pool (zs_map_object RO), the
        decompression after the lock is dropped — so concurrency is unchanged.  On an error
        `index` of the failing page is in the exception's ``block`` attribute.
        """
        t = meta.table
        flags, handles, ac_time = t.flags, t.handle, t.ac_time
        stripes = self._stripes
        read_object = meta.pool.read_object
        comps = meta.comps
        now = int(self.clock())
        keep = ~ACCESS_CLEARED
        out: list[bytes] = []
        append = out.append
        i = index
        try:
            for i in range(index, index + count):
                with stripes[i & STRIPE_MASK].lock:
                    f = flags[i]
                    h = handles[i]
                    if not f & (ZRAM_WB | ZRAM_SAME | ZRAM_HUGE) and h:
                        data = read_object(h, f & SIZE_MASK)       # compressed object
                    elif f == 0 and h == 0:
                        append(_ZERO_PAGE)                         # never written: no touch
                        continue
                    else:
                        data, prio = self._decode_locked(meta, i, f, h)
                        flags[i] = f & keep
                        ac_time[i] = now
                        append(data if prio < 0 else self._decompress(meta, data, prio))
                        continue
                    flags[i] = f & keep
                    ac_time[i] = now
                prio = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
                comp = comps[prio]
                append(comp.decompress(data, PAGE_SIZE) if comp is not None
                       else self._decompress(meta, data, prio))   # raises: no compressor
        except ZramError as exc:
            exc.block = i
            raise
        return out

    def _store_page(self, meta: _Meta, index: int, page: bytes, expect_gen: int | None = None,
                    t0: int = 0) -> bool:
        """zram_write_page() for one full page; False if `expect_gen` no longer matches.

        Raises IOFailure (EIO) when the pool is full or the write would pass mem_limit; the
        slot then keeps its old content.  With `t0` (a 4 KiB request's perf_counter_ns
        start) the request's io_stat/stat accounting is done in the commit's critical
        section, so a single-page write takes its stripe once (nothing can fail after it).
        """
        t = meta.table
        stripe = self._stripes[index & STRIPE_MASK]
        first = page[:8]
        # page_same_filled(): compare the first word with the last one first (fast reject),
        # then the whole page with the word repeated.  No allocation, no mem_limit check.
        if page[-8:] == first and page == first * (PAGE_SIZE // 8):
            word = int.from_bytes(first, "little")
            with stripe.lock:
                c = stripe.counters
                if expect_gen is not None and c[GENERATION] != expect_gen:
                    return False
                self._slot_free(meta, index, c)
                t.handle[index] = word
                t.flags[index] = ZRAM_SAME
                t.ac_time[index] = int(self.clock())
                c[SAME_PAGES] += 1
                c[PAGES_STORED] += 1
                c[GENERATION] += 1
                if t0:
                    c[WRITE_IOS] += 1
                    c[WRITE_SECTORS] += PAGE_SIZE >> SECTOR_SHIFT
                    c[WRITE_NS] += _perf_ns() - t0
            return True

        comp = meta.comps[ZRAM_PRIMARY_COMP].compress(page)   # outside the slot lock
        comp_len = len(comp)
        if comp_len >= meta.huge_class_size:
            # write_incompressible_page(): keep the raw page, a whole PAGE_SIZE object
            data, size, newflags = page, PAGE_SIZE, ZRAM_HUGE | PAGE_SIZE
        else:
            data, size, newflags = comp, comp_len, comp_len
        pool = meta.pool
        try:
            handle = pool.malloc(size)
        except OutOfMemory:
            raise IOFailure(f"{self.name}: out of memory for a {size}-byte object") from None
        # zram_can_store_page(): right after zs_malloc, against the pool's page count.
        alloced = pool.total_pages
        limit = self.limit_pages
        if limit and alloced > limit:
            pool.free(handle)
            with stripe.lock:
                c = stripe.counters
                if alloced > c[MAX_USED]:
                    c[MAX_USED] = alloced
            raise IOFailure(f"{self.name}: mem_limit reached")
        pool.write_object(handle, data)
        with stripe.lock:
            c = stripe.counters
            if alloced > c[MAX_USED]:
                c[MAX_USED] = alloced
            if expect_gen is not None and c[GENERATION] != expect_gen:
                stale = True
            else:
                stale = False
                # slot_free(): the old object goes only now.  The common case (a compressed
                # object or nothing) inline; the slot's fields are all overwritten below.
                old_f = t.flags[index]
                if old_f & (ZRAM_WB | ZRAM_SAME | ZRAM_HUGE):
                    self._slot_free(meta, index, c)
                elif old_f or t.handle[index]:
                    pool.free(t.handle[index])
                    c[COMPR_DATA_SIZE] -= old_f & SIZE_MASK
                    c[PAGES_STORED] -= 1
                t.handle[index] = handle
                t.flags[index] = newflags
                t.ac_time[index] = int(self.clock())
                c[COMPR_DATA_SIZE] += size
                c[PAGES_STORED] += 1
                if size == PAGE_SIZE:
                    c[HUGE_PAGES] += 1
                    c[HUGE_PAGES_SINCE] += 1
                c[GENERATION] += 1
                if t0:
                    c[WRITE_IOS] += 1
                    c[WRITE_SECTORS] += PAGE_SIZE >> SECTOR_SHIFT
                    c[WRITE_NS] += _perf_ns() - t0
        if stale:
            pool.free(handle)
            return False
        return True

    # ------------------------------------------------------------------ data path
    def read(self, offset: int, length: int) -> bytes:
        """Read like a file: zeros for unwritten blocks, short at the end of the disk.

        A block that cannot be decompressed fails the whole request with EIO
        (failed_reads++), as a bio with one failing segment does.
        """
        meta = self._meta
        if offset < 0 or length < 0:
            raise InvalidInput("negative offset or length")
        if meta is None or offset >= self.disksize or length == 0:
            return b""
        end = min(offset + length, self.disksize)
        index = offset >> PAGE_SHIFT
        first_stripe = self._stripes[index & STRIPE_MASK]
        t0 = _perf_ns()
        try:
            if not offset & (PAGE_SIZE - 1) and end - offset == PAGE_SIZE:
                # One full page: _load_page inlined, and decompressed under the slot lock as
                # zram_read_page() does (zram_read_from_zspool runs between slot lock and
                # unlock), so the request is accounted in the same critical section.
                t = meta.table
                with first_stripe.lock:
                    f = t.flags[index]
                    h = t.handle[index]
                    if f == 0 and h == 0:
                        data = _ZERO_PAGE
                    else:
                        data, prio = self._decode_locked(meta, index, f, h)
                        if prio >= 0:
                            data = self._decompress(meta, data, prio)
                        t.flags[index] = f & ~ACCESS_CLEARED
                        t.ac_time[index] = int(self.clock())
                    c = first_stripe.counters
                    c[READ_IOS] += 1
                    c[READ_SECTORS] += PAGE_SIZE >> SECTOR_SHIFT
                    c[READ_NS] += _perf_ns() - t0
                    return data
            elif not (offset | end) & (PAGE_SIZE - 1):
                out = b"".join(self._read_pages(meta, index, (end - offset) >> PAGE_SHIFT))
            else:
                parts = []
                pos = offset
                while pos < end:
                    page = self._load_page(meta, index, True)[0]
                    off = pos & (PAGE_SIZE - 1)
                    n = min(PAGE_SIZE - off, end - pos)
                    parts.append(page if n == PAGE_SIZE else page[off:off + n])
                    pos += n
                    index += 1
                out = b"".join(parts)
        except ZramError as exc:
            index = getattr(exc, "block", index)
            with self._stripes[index & STRIPE_MASK].lock:
                self._stripes[index & STRIPE_MASK].counters[FAILED_READS] += 1
            if exc.errno == errno.EIO:
                raise
            raise IOFailure(f"{self.name}: read of block {index} failed: {exc.strerror}") from None
        _account(first_stripe, READ_IOS, READ_SECTORS, READ_NS, end - offset, _perf_ns() - t0)
        return out

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write at any offset/length; partial blocks by read-modify-write.

        Returns the number of bytes written (short when the request runs past disksize);
        ENOSPC when it starts at or past the end.  A page that cannot be stored (mem_limit,
        pool full) fails the request with EIO after the pages before it were written, like
        a bio whose segment fails; that page keeps its old content.
        """
        meta = self._meta
        if offset < 0:
            raise InvalidInput("negative offset")
        n = len(data)
        if n == 0:
            return 0
        if meta is None or offset >= self.disksize:
            raise NoSpace(f"{self.name}: write at {offset} past the end of the device")
        end = min(offset + n, self.disksize)
        index = offset >> PAGE_SHIFT
        t0 = _perf_ns()
        if not offset & (PAGE_SIZE - 1) and end - offset == PAGE_SIZE and type(data) is bytes:
            # one full page: accounted inside _store_page's commit (one stripe round trip)
            try:
                self._store_page(meta, index, data, None, t0)
            except ZramError as exc:
                self._write_failed(index, exc)
            return PAGE_SIZE
        first_stripe = self._stripes[index & STRIPE_MASK]
        try:
            if not (offset | end) & (PAGE_SIZE - 1):
                self._write_pages(meta, index, data, (end - offset) >> PAGE_SHIFT)
            else:
                self._write_unaligned(meta, index, offset, end, data)
        except ZramError as exc:
            self._write_failed(getattr(exc, "block", index), exc)
        _account(first_stripe, WRITE_IOS, WRITE_SECTORS, WRITE_NS, end - offset, _perf_ns() - t0)
        return end - offset

    def _write_pages(self, meta: _Meta, index: int, data, count: int) -> None:
        """zram_bio_write() of whole pages: `_store_page` for each, in one frame.

        The hot loop of every multi-page write (128 KiB requests), as `_read_pages` is of
        reads.  Each page is stored exactly as `_store_page` stores it — compressed outside
        the slot lock, zs_malloc + copy, the slot swapped under its stripe and the old
        object freed last — so locking and statistics are unchanged; same-filled pages and
        writes under a mem_limit go through `_store_page` itself, an old slot that is
        SAME/HUGE/written back through `_slot_free`.  On an error the failing page's index
        is in the exception's ``block`` attribute; the pages before it are written.
        """
        t = meta.table
        flags, handles, ac_time = t.flags, t.handle, t.ac_time
        stripes = self._stripes
        pool = meta.pool
        malloc, write_object, free = pool.malloc, pool.write_object, pool.free
        compress = meta.comps[ZRAM_PRIMARY_COMP].compress
        huge_size = meta.huge_class_size
        now = int(self.clock())
        if type(data) is not bytes:
            data = bytes(data)
        i = index
        try:
            for i in range(index, index + count):
                off = (i - index) << PAGE_SHIFT
                page = data[off:off + PAGE_SIZE]
                first = page[:8]
                if (page[-8:] == first and page == first * (PAGE_SIZE // 8)) or self.limit_pages:
                    # same-filled (no allocation), or a mem_limit to check after zs_malloc:
                    # read per page, as the kernel does, since it may change meanwhile
                    self._store_page(meta, i, page)
                    continue
                comp = compress(page)                         # outside the slot lock
                size = len(comp)
                if size >= huge_size:
                    comp, size = page, PAGE_SIZE              # write_incompressible_page()
                try:
                    handle = malloc(size)
                except OutOfMemory:
                    raise IOFailure(f"{self.name}: out of memory for a {size}-byte object") from None
                alloced = pool.total_pages
                write_object(handle, comp)
                stripe = stripes[i & STRIPE_MASK]
                with stripe.lock:
                    c = stripe.counters
                    if alloced > c[MAX_USED]:
                        c[MAX_USED] = alloced
                    old_f = flags[i]
                    if old_f & (ZRAM_WB | ZRAM_SAME | ZRAM_HUGE):
                        self._slot_free(meta, i, c)
                    elif old_f or handles[i]:
                        free(handles[i])
                        c[COMPR_DATA_SIZE] -= old_f & SIZE_MASK
                        c[PAGES_STORED] -= 1
                    handles[i] = handle
                    c[COMPR_DATA_SIZE] += size
                    c[PAGES_STORED] += 1
                    if size == PAGE_SIZE:
                        flags[i] = ZRAM_HUGE | PAGE_SIZE
                        c[HUGE_PAGES] += 1
                        c[HUGE_PAGES_SINCE] += 1
                    else:
                        flags[i] = size
                    ac_time[i] = now
                    c[GENERATION] += 1
        except ZramError as exc:
            exc.block = i
            raise

    def _write_unaligned(self, meta: _Meta, index: int, offset: int, end: int, data) -> None:
        """A write with a partial first or last page: whole pages stored, edges by RMW.

        On an error the failing page's index is in the exception's ``block`` attribute.
        """
        mv = memoryview(data)
        pos = offset
        try:
            while pos < end:
                off = pos & (PAGE_SIZE - 1)
                chunk = min(PAGE_SIZE - off, end - pos)
                src = mv[pos - offset: pos - offset + chunk]
                if chunk == PAGE_SIZE:
                    self._store_page(meta, index, bytes(src))
                else:
                    self._write_partial(meta, index, off, src)
                pos += chunk
                index += 1
        except ZramError as exc:
            exc.block = index
            raise

    def _write_failed(self, index: int, exc: ZramError) -> None:
        """One failing segment fails the bio: failed_writes++, and the request raises EIO."""
        stripe = self._stripes[index & STRIPE_MASK]
        with stripe.lock:
            stripe.counters[FAILED_WRITES] += 1
        if exc.errno == errno.EIO:
            raise exc
        raise IOFailure(f"{self.name}: write of block {index} failed: {exc.strerror}") from None

    def _write_partial(self, meta: _Meta, index: int, off: int, src) -> None:
        """zram_bvec_write_partial(): read the page, overlay, store; retry if it changed."""
        tries = 0
        while True:
            old, gen = self._load_page(meta, index, False)
            new = b"".join((old[:off], src, old[off + len(src):]))
            if self._store_page(meta, index, new, expect_gen=gen):
                return
            tries += 1
            if tries > 3:
                time.sleep(0)  # let the competing writer finish its commit

    def discard(self, offset: int, length: int) -> None:
        """zram_bio_discard(): free whole blocks only; partial first/last blocks untouched."""
        meta = self._meta
        if meta is None or length <= 0 or offset >= self.disksize:
            return
        n = min(length, self.disksize - offset)
        index = offset >> PAGE_SHIFT
        off = offset & (PAGE_SIZE - 1)
        if off:
            # Re-compressing a partly discarded block would not save memory: skip it.
            if n <= PAGE_SIZE - off:
                return
            n -= PAGE_SIZE - off
            index += 1
        t = meta.table
        count = n >> PAGE_SHIFT
        if count <= 64:
            candidates = range(index, index + count)
        else:
            # mkfs discards the whole device: visit only slots that hold something (a slot
            # written after this scan was written after the discard, a valid order) and
            # count notify_free for every block in one go, as the kernel's loop would.
            candidates = []
            for lo in range(index, index + count, 1 << 20):   # bounded temporaries
                hi = min(index + count, lo + (1 << 20))
                used = (t.np_flags[lo:hi] != 0) | (t.np_handle[lo:hi] != 0)
                candidates += (np.flatnonzero(used) + lo).tolist()
            stripe = self._stripes[index & STRIPE_MASK]
            with stripe.lock:
                stripe.counters[NOTIFY_FREE] += count - len(candidates)
        for i in candidates:
            stripe = self._stripes[i & STRIPE_MASK]
            with stripe.lock:
                c = stripe.counters
                if t.flags[i] or t.handle[i]:
                    self._slot_free(meta, i, c)
                    c[GENERATION] += 1
                c[NOTIFY_FREE] += 1

    def punch_hole(self, offset: int, length: int) -> None:
        """fallocate(PUNCH_HOLE): discard whole blocks and zero the partial edges.

        A file must read back zeros over the whole hole, so unlike a block discard the
        edges are rewritten (read-modify-write); unwritten edge blocks stay unallocated.
        """
        meta = self._meta
        if meta is None or length <= 0 or offset >= self.disksize:
            return
        end = min(offset + length, self.disksize)
        self.discard(offset, end - offset)
        mask = PAGE_SIZE - 1
        head_block_end = (offset | mask) + 1
        # the first block is partial when the hole starts inside it or ends before its end
        if offset & mask or end < head_block_end:
            self._zero_edge(meta, offset, min(end, head_block_end))
        # the last block is partial when the hole ends inside a later block
        if end & mask and (end & ~mask) >= head_block_end:
            self._zero_edge(meta, end & ~mask, end)

    zero_range = punch_hole

    def _zero_edge(self, meta: _Meta, start: int, end: int) -> None:
        index = start >> PAGE_SHIFT
        t = meta.table
        if not t.flags[index] and not t.handle[index]:
            return  # reads as zeros already; do not allocate for it
        self._write_partial(meta, index, start & (PAGE_SIZE - 1), _ZERO_PAGE[: end - start])

    def flush(self) -> None:
        """REQ_PREFLUSH: nothing to write out (zram is synchronous); counted in `stat`."""
        stripe = self._ensure_stripes()[0]
        with stripe.lock:
            stripe.counters[FLUSH_IOS] += 1

    # ------------------------------------------------------------------ maintenance
    def compact(self) -> int:
        """compact_store: EINVAL when uninitialised, else zs_compact(); pages freed.

        compact_store holds init_lock for *read* during zs_compact, so only a reset (the
        writer) waits for it.  Here dev_lock is exclusive, so the pass runs outside it, under
        the device's compaction lock, which reset takes before it tears the pool down: open,
        close, configuration and statistics go on meanwhile.
        """
        with self._compact_lock:
            with self.dev_lock:
                pool = self._require_meta().pool
            return pool.compact()

    def _ensure_stripes(self) -> list[Stripe]:
        """The stripes, created first if the device has none (flush on an uninitialised one)."""
        stripes = self._stripes
        if not stripes:
            with self.dev_lock:
                if not self._stripes:
                    self._stripes = new_stripes()
                stripes = self._stripes
        return stripes

    def _all_stripes(self) -> "_AllStripes":
        """Hold every slot lock (in index order) for a vectorised table scan."""
        return _AllStripes(self._stripes)

    def mark_idle(self, age_seconds: int | None) -> None:
        """idle_store: `all` (age None) or slots not accessed for `age_seconds`.

        Current kernels' mark_idle(): unallocated, WB and SAME slots are skipped; the others
        get IDLE when idle and lose it when not.
        """
        with self.dev_lock:
            meta = self._require_meta()
            t = meta.table
            with self._all_stripes():
                f = t.np_flags
                eligible = ((f & SIZE_MASK) != 0) & ((f & (ZRAM_WB | ZRAM_SAME)) == 0)
                if age_seconds is None:
                    idle = eligible
                else:
                    # ktime_after(cutoff, ac_time): strictly older than now - age
                    cutoff = int(self.clock()) - age_seconds
                    idle = eligible & (t.np_ac_time.astype(np.int64) < cutoff)
                f[idle] |= np.uint32(ZRAM_IDLE)
                f[eligible & ~idle] &= np.uint32(~ZRAM_IDLE & 0xFFFFFFFF)

    # ---- writeback (zram.md §4.1)
    def writeback(self, requests: list[tuple[int, int, int]]) -> None:
        """writeback_store after parsing: `requests` = [(mode, lo, hi)] scans, in order.

        Slots selected by all scans are written largest object first; raises EIO when the
        writeback budget is exhausted, ENOSPC when the backing device is full (after
        writing what fitted), or the last I/O error.
        """
        with self.dev_lock:
            meta = self._require_meta()
            backing = self.backing
            if backing is None:
                raise NoSuchDevice(f"{self.name} has no backing device")
            t = meta.table
            selected: list[np.ndarray] = []
            with self._all_stripes():
                for mode, lo, hi in requests:
                    f = t.np_flags[lo:hi]
                    # scan_slots_for_writeback: allocated, not SAME, not WB (== has a size)
                    ok = (f & SIZE_MASK) != 0
                    ok &= (f & (ZRAM_WB | ZRAM_SAME)) == 0
                    if mode & WB_IDLE:
                        ok &= (f & ZRAM_IDLE) != 0
                    if mode & WB_HUGE:
                        ok &= (f & ZRAM_HUGE) != 0
                    if mode & WB_INCOMPRESSIBLE:
                        ok &= (f & ZRAM_INCOMPRESSIBLE) != 0
                    idx = np.flatnonzero(ok) + lo
                    t.np_flags[idx] |= np.uint32(ZRAM_PP_SLOT)
                    selected.append(idx)
            if not selected:
                return
            idx = np.unique(np.concatenate(selected))
            # zram_pp_ctl buckets by size/64, served from the largest bucket down
            order = np.argsort(-((t.np_flags[idx] & SIZE_MASK) // 64), kind="stable")
            err: ZramError | None = None
            pending = [int(i) for i in idx[order]]
            for pos, index in enumerate(pending):
                if self.wb_limit_enable and self.bd_wb_limit == 0:
                    err = IOFailure("writeback limit exhausted")
                    break
                blk = backing.alloc_block()
                if blk is None:
                    err = NoSpace("backing device is full")
                    break
                stripe = self._stripes[index & STRIPE_MASK]
                with stripe.lock:
                    stripe.counters[BD_COUNT] += 1
                    f = t.flags[index]
                    if not f & ZRAM_PP_SLOT:  # accessed or freed since the scan
                        backing.free_block(blk)
                        stripe.counters[BD_COUNT] -= 1
                        continue
                    h = t.handle[index]
                    try:
                        data, prio = self._decode_locked(meta, index, f, h)
                        if not self.compressed_writeback:
                            data = self._decompress(meta, data, prio)
                    except ZramError as exc:
                        backing.free_block(blk)
                        stripe.counters[BD_COUNT] -= 1
                        t.flags[index] = f & ~ZRAM_PP_SLOT
                        err = exc
                        continue
                try:
                    backing.write_block(blk, data.ljust(PAGE_SIZE, b"\0"))
                except (OSError, ZramError) as exc:
                    with stripe.lock:
                        backing.free_block(blk)
                        stripe.counters[BD_COUNT] -= 1
                        t.flags[index] &= ~ZRAM_PP_SLOT
                    err = IOFailure(f"backing write failed: {exc}")
                    continue
                if self.wb_limit_enable:
                    self.bd_wb_limit -= 1
                with stripe.lock:  # zram_writeback_complete()
                    c = stripe.counters
                    c[BD_WRITES] += 1
                    f = t.flags[index]
                    if not f & ZRAM_PP_SLOT:
                        backing.free_block(blk)
                        c[BD_COUNT] -= 1
                        continue
                    keep = f & (SIZE_MASK | ZRAM_COMP_PRIORITY_MASK | ZRAM_HUGE)
                    self._slot_free(meta, index, c)   # frees the object, drops HUGE/IDLE
                    t.handle[index] = blk
                    # compressed writeback keeps size, priority and HUGE so reads can decode
                    t.flags[index] = ZRAM_WB | (keep if self.compressed_writeback else 0)
                    c[PAGES_STORED] += 1
                    c[GENERATION] += 1
            # release_pp_ctl(): whatever was selected but not written loses PP_SLOT
            rest = np.asarray(pending, dtype=np.int64)
            if rest.size:
                with self._all_stripes():
                    t.np_flags[rest] &= np.uint32(~ZRAM_PP_SLOT & 0xFFFFFFFF)
            if err is not None:
                raise err

    # ---- recompression (zram.md §5)
    def recompress(self, *, mode: int = 0, threshold: int = 0, max_pages: int = U64,
                   algo: str | None = None, prio: int | None = None) -> None:
        """recompress_store after parsing (current kernels, chained recompression)."""
        with self.dev_lock:
            meta = self._require_meta()
            if threshold and threshold >= meta.huge_class_size:
                raise InvalidInput(f"threshold {threshold} >= huge_class_size")
            num_active = meta.num_active_comps
            lo = ZRAM_SECONDARY_COMP
            hi = num_active
            if prio is not None:
                lo = max(prio, ZRAM_SECONDARY_COMP)   # priority=0 is turned into 1
                hi = lo + 1
            if algo is not None:
                found = None
                for p in range(ZRAM_SECONDARY_COMP, ZRAM_MAX_COMPS):
                    if self.comp_algs[p] == algo and meta.comps[p] is not None:
                        found = p
                        break
                if found is None:
                    raise InvalidInput(f"algorithm {algo!r} is not configured for recompression")
                lo, hi = max(lo, found), found + 1
            hi = min(hi, num_active)
            if lo >= hi:
                raise InvalidInput("no secondary algorithm to recompress with")
            t = meta.table
            with self._all_stripes():
                f = t.np_flags
                ok = (f & SIZE_MASK) != 0
                ok &= (f & (ZRAM_WB | ZRAM_SAME | ZRAM_INCOMPRESSIBLE)) == 0
                if mode & RECOMP_IDLE:
                    ok &= (f & ZRAM_IDLE) != 0
                if mode & RECOMP_HUGE:
                    ok &= (f & ZRAM_HUGE) != 0
                cur = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
                ok &= (cur + 1) < hi   # "already compressed with same or higher priority"
                idx = np.flatnonzero(ok)
                f[idx] |= np.uint32(ZRAM_PP_SLOT)
            order = np.argsort(-((t.np_flags[idx] & SIZE_MASK) // 64), kind="stable")
            budget = max_pages
            err: ZramError | None = None
            for index in (int(i) for i in idx[order]):
                if budget == 0:
                    break
                try:
                    budget -= self._recompress_slot(meta, index, lo, hi, threshold)
                except ZramError as exc:
                    err = exc
                    break
            with self._all_stripes():
                f = t.np_flags
                f[idx] &= np.uint32(~ZRAM_PP_SLOT & 0xFFFFFFFF)
            if err is not None:
                raise err

    def _recompress_slot(self, meta: _Meta, index: int, lo: int, hi: int, threshold: int) -> int:
        """recompress_slot(): returns the budget used (0 when skipped, 1 otherwise)."""
        t = meta.table
        stripe = self._stripes[index & STRIPE_MASK]
        ct = meta.class_table
        with stripe.lock:
            f = t.flags[index]
            if not f & ZRAM_PP_SLOT:
                return 0
            t.flags[index] = f = f & ~ZRAM_PP_SLOT
            old_len = f & SIZE_MASK
            if threshold and old_len < threshold:
                return 0
            h = t.handle[index]
            data, cur = self._decode_locked(meta, index, f, h)
            page = self._decompress(meta, data, cur)
            f &= ~ZRAM_IDLE
            t.flags[index] = f
            cur = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
            old_class = ct.class_for_alloc(old_len).index
            best = None
            last = lo
            for p in range(max(lo, cur + 1), hi):
                comp = meta.comps[p]
                if comp is None:
                    continue
                last = p
                out = comp.compress(page)
                if out and len(out) < meta.huge_class_size \
                        and ct.class_for_alloc(len(out)).index < old_class \
                        and (not threshold or len(out) < threshold):
                    best = (p, out)
                    break
            if best is None:
                if last >= meta.num_active_comps - 1:
                    t.flags[index] = f | ZRAM_INCOMPRESSIBLE
                return 1
            p, out = best
            try:
                handle = meta.pool.malloc(len(out))
            except OutOfMemory:
                raise NoMemory("zs_malloc failed during recompression") from None
            meta.pool.write_object(handle, out)
            ac = t.ac_time[index]
            c = stripe.counters
            self._slot_free(meta, index, c)
            t.handle[index] = handle
            t.flags[index] = len(out) | (p << ZRAM_COMP_PRIORITY_SHIFT) | (f & ZRAM_IDLE)
            t.ac_time[index] = ac
            c[COMPR_DATA_SIZE] += len(out)
            c[PAGES_STORED] += 1
            c[GENERATION] += 1
            return 1

    # ------------------------------------------------------------------ statistics
    def stats(self) -> DeviceStats:
        stripes = self._stripes
        if stripes:
            sums = [sum(col) for col in zip(*(s.counters for s in stripes))]
            max_used = max(self._max_used_floor, max(s.counters[MAX_USED] for s in stripes))
        else:
            sums = [0] * NR_COUNTERS
            max_used = self._max_used_floor
        meta = self._meta
        pool = meta.pool if meta is not None else None
        return DeviceStats(
            pages_stored=sums[PAGES_STORED], compr_data_size=sums[COMPR_DATA_SIZE],
            mem_used_pages=pool.total_pages if pool is not None else 0,
            limit_pages=self.limit_pages, max_used_pages=max_used, same_pages=sums[SAME_PAGES],
            pages_compacted=pool.stats.pages_compacted if pool is not None else 0,
            huge_pages=sums[HUGE_PAGES], huge_pages_since=sums[HUGE_PAGES_SINCE],
            failed_reads=sums[FAILED_READS], failed_writes=sums[FAILED_WRITES],
            notify_free=sums[NOTIFY_FREE], miss_free=sums[MISS_FREE], bd_count=sums[BD_COUNT],
            bd_reads=sums[BD_READS], bd_writes=sums[BD_WRITES], counters=sums)

    def slot_state(self, index: int) -> tuple[int, int, int]:
        """(handle, flags word, ac_time) of one slot, for block_state and tests."""
        meta = self._require_meta()
        with self._stripes[index & STRIPE_MASK].lock:
            t = meta.table
            return t.handle[index], t.flags[index], t.ac_time[index]


class _AllStripes:
    def __init__(self, stripes: list[Stripe]) -> None:
        self._stripes = stripes

    def __enter__(self) -> None:
        for s in self._stripes:
            s.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for s in reversed(self._stripes):
            s.lock.release()


#: the stripes of a device that has none (never mutated; see ZramDevice.__init__)
_NO_STRIPES: list[Stripe] = []

#: seconds since boot (CLOCK_BOOTTIME, what ac_time uses); a C-level partial, no Python frame
_boottime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
_perf_ns = time.perf_counter_ns


class Registry:
    """zram-control: the devices of one mount, sharing one PhysicalMemory."""

    def __init__(self, *, memory: PhysicalMemory | None = None, chain_size: int = 4,
                 chain_rule: str = "max-used", num_devices: int = 1) -> None:
        self.memory = memory if memory is not None else PhysicalMemory()
        self.chain_size = chain_size
        self.chain_rule = chain_rule
        build_class_table(PAGE_SIZE, chain_size, chain_rule)  # bad parameters fail here
        self.devices: dict[int, ZramDevice] = {}
        self._lock = Mutex(REGISTRY_LOCK)
        for _ in range(num_devices):
            self.hot_add()

    def hot_add(self) -> int:
        """Create an uninitialised device with the lowest free id (idr_alloc from 0)."""
        with self._lock:
            dev_id = 0
            while dev_id in self.devices:
                dev_id += 1
            dev = ZramDevice(dev_id, memory=self.memory, chain_size=self.chain_size,
                             chain_rule=self.chain_rule)
            self.devices = dict(sorted([*self.devices.items(), (dev_id, dev)]))
            return dev_id

    def hot_remove(self, dev_id: int) -> None:
        """EINVAL negative id, ENODEV unknown, EBUSY while open; else reset and remove."""
        if dev_id < 0:
            raise InvalidInput(f"negative device id {dev_id}")
        with self._lock:
            dev = self.devices.get(dev_id)
            if dev is None:
                raise NoSuchDevice(f"no zram{dev_id}")
            dev.reset()   # EBUSY while open; zram_remove() resets before deleting the disk
            # copy-on-write, like hot_add: readers iterating the old dict are never disturbed
            self.devices = {k: v for k, v in self.devices.items() if k != dev_id}

    def __getitem__(self, dev_id: int) -> ZramDevice:
        return self.devices[dev_id]
