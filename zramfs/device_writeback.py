"""Writeback, idle marking and the backing device of a zram device (CONFIG_ZRAM_WRITEBACK).

Owns the backing file and its block bitmap (backing_dev_store, alloc_block_bdev /
free_block_bdev), the writeback budget and knobs (writeback_limit, writeback_limit_enable,
writeback_batch_size, compressed_writeback), idle marking with access times (idle_store,
mark_idle) and writeback_store itself: scan_slots_for_writeback, the zram_pp_ctl
largest-first order, zram_writeback_slots and zram_writeback_complete.  Reading a
written-back slot back (read_from_bdev) and freeing its block on overwrite or discard
(slot_free) are the I/O path's, in `zramfs.device_io`.
"""

from __future__ import annotations

import os
import stat as stat_mod

import numpy as np
from mypy_extensions import mypyc_attr

from allocator.locks import LEAF_RANK, LockClass, Mutex

from .device_io import IOPathMixin
from .errors import (
    DeviceBusy,
    InvalidInput,
    IOFailure,
    NoSpace,
    NoSuchDevice,
    NotBlockDevice,
    ZramError,
)
from .slots import (
    BD_COUNT,
    BD_WRITES,
    GENERATION,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_STORED,
    SIZE_MASK,
    STRIPE_MASK,
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_PP_SLOT,
    ZRAM_SAME,
    ZRAM_WB,
)

#: the backing device's bitmap lock: a leaf in the stack's lock order (allocator/locks.py)
BITMAP_LOCK = LockClass("&zram->bitmap_lock", LEAF_RANK)

# writeback mode bits (the kernel's IDLE_WRITEBACK, HUGE_WRITEBACK, INCOMPRESSIBLE_WRITEBACK)
WB_IDLE = 1
WB_HUGE = 2
WB_INCOMPRESSIBLE = 4


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


@mypyc_attr(native_class=False)
class WritebackMixin(IOPathMixin):
    """Backing device, writeback and idle marking of `ZramDevice`."""

    wb_limit_enable: bool
    bd_wb_limit: int
    wb_batch_size: int
    compressed_writeback: bool

    def set_backing_dev(self, path: str) -> None:
        """backing_dev_store: EBUSY once initialised; the old backing file is closed."""
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't setup backing device for initialized device")
            new = _BackingDev(path)
            old, self.backing = self.backing, new
            if old is not None:
                old.close()

    def set_writeback_limit(self, units: int) -> None:
        """writeback_limit_store: the budget, in 4 KiB units, writeback may still use."""
        with self.dev_lock:
            self.bd_wb_limit = units  # 4 KiB units; PAGE_SIZE/4096 == 1 so no rounding here

    def set_writeback_limit_enable(self, enable: bool) -> None:
        """writeback_limit_enable_store: whether writeback spends the budget."""
        with self.dev_lock:
            self.wb_limit_enable = bool(enable)

    def set_writeback_batch_size(self, n: int) -> None:
        """writeback_batch_size_store: EINVAL for 0 (kept and shown; writes are synchronous)."""
        if n == 0:
            raise InvalidInput("writeback_batch_size: zero")
        with self.dev_lock:
            self.wb_batch_size = n

    def set_compressed_writeback(self, enable: bool) -> None:
        """compressed_writeback_store: EBUSY once initialised."""
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't change compressed writeback for initialized device")
            self.compressed_writeback = bool(enable)

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

    # ---- writeback (docs/zram.md, "Writeback, idle and the backing device")
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
                    fl = t.np_flags[lo:hi]  # the scanned flags (f below is one slot's)
                    # scan_slots_for_writeback: allocated, not SAME, not WB (== has a size)
                    ok = (fl & SIZE_MASK) != 0
                    ok &= (fl & (ZRAM_WB | ZRAM_SAME)) == 0
                    if mode & WB_IDLE:
                        ok &= (fl & ZRAM_IDLE) != 0
                    if mode & WB_HUGE:
                        ok &= (fl & ZRAM_HUGE) != 0
                    if mode & WB_INCOMPRESSIBLE:
                        ok &= (fl & ZRAM_INCOMPRESSIBLE) != 0
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
            for index in pending:
                if self.wb_limit_enable and self.bd_wb_limit == 0:
                    err = IOFailure("writeback limit exhausted")
                    break
                blk = backing.alloc_block()
                if blk is None:
                    err = NoSpace("backing device is full")
                    break
                stripe = self._stripes[index & STRIPE_MASK]
                # (`skip`, not a `continue` inside the `with`: mypyc compiles none there)
                skip = False
                data = b""
                with stripe.lock:
                    stripe.counters[BD_COUNT] += 1
                    f = t.flags[index]
                    if not f & ZRAM_PP_SLOT:  # accessed or freed since the scan
                        backing.free_block(blk)
                        stripe.counters[BD_COUNT] -= 1
                        skip = True
                    else:
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
                            skip = True
                if skip:
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
                    if not f & ZRAM_PP_SLOT:  # accessed or freed meanwhile: drop the block
                        backing.free_block(blk)
                        c[BD_COUNT] -= 1
                    else:
                        keep = f & (SIZE_MASK | ZRAM_COMP_PRIORITY_MASK | ZRAM_HUGE)
                        self._slot_free(meta, index, c)  # frees the object, drops HUGE/IDLE
                        t.handle[index] = blk
                        # compressed writeback keeps size, priority and HUGE so reads decode
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
