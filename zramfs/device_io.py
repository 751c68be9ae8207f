"""The data path of a zram device: reads, writes, discards and the slots they change.

Owns what zram_drv.c does for a bio: zram_bio_read() / zram_bio_write() of whole and
partial pages (zram_read_page, zram_write_page, zram_bvec_write_partial's
read-modify-write), same-filled pages (page_same_filled: no allocation), HUGE pages stored
raw once the compressed length reaches the pool's huge_class_size
(write_incompressible_page), the mem_limit check after zs_malloc (zram_can_store_page),
slot_free(), zram_bio_discard(), REQ_PREFLUSH, and for files punch_hole / zero_range.

One page read and one page store are written out plainly, as the kernel does them:
`_load_page` (zram_read_page) and `_store_page` (zram_write_page).  They are the reference:
the partial and unaligned paths use them, and the hot paths are hand-inlined copies of
them — `read`'s 4 KiB branch and `_read_pages` of the read, `_write_page` and
`_write_pages` of the store — which a test runs against the references on random devices
(tests/test_device.py::test_hot_paths_agree_with_the_reference_page_read_and_store).  A
change to what a page read or store does goes into the reference and every copy of it.

Concurrency: the kernel's per-entry lock is a striped lock (`zramfs.slots`); a slot is
only read or changed under its stripe, and the counters that change with a slot are kept
per stripe, so the data path takes no device-wide lock.  Compression happens before the
slot lock is taken, like zram_write_page(); a page is decompressed under its slot lock,
like zram_read_page().  Sub-block writes check a per-stripe generation number when they
commit, so two partial writers of one block never lose each other's bytes while both
still compress outside the lock.
"""

from __future__ import annotations

import errno
import time
from typing import Final

import numpy as np
from mypy_extensions import mypyc_attr

from allocator import OutOfMemory

from .device_core import SECTOR_SHIFT, ZRAM_PRIMARY_COMP, DeviceCore, _Meta
from .device_stats import _account
from .errors import InvalidInput, IOFailure, NoSpace, ZramError
from .slots import (
    ACCESS_CLEARED,
    BD_COUNT,
    BD_READS,
    COMPR_DATA_SIZE,
    FAILED_READS,
    FAILED_WRITES,
    FLUSH_IOS,
    GENERATION,
    HUGE_PAGES,
    HUGE_PAGES_SINCE,
    MAX_USED,
    NOTIFY_FREE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_STORED,
    READ_IOS,
    READ_NS,
    READ_SECTORS,
    SAME_PAGES,
    SIZE_MASK,
    STRIPE_MASK,
    WRITE_IOS,
    WRITE_NS,
    WRITE_SECTORS,
    ZERO_PAGE,
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_COMP_PRIORITY_SHIFT,
    ZRAM_HUGE,
    ZRAM_SAME,
    ZRAM_WB,
    fill_page,
    same_filled_word,
    update_used_max,
)

_perf_ns: Final = time.perf_counter_ns


@mypyc_attr(native_class=False)
class IOPathMixin(DeviceCore):
    """The data path of `ZramDevice`: read, write, discard and the slot primitives under them."""

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
            return fill_page(h), -1
        size = f & SIZE_MASK
        if f & ZRAM_HUGE:
            return meta.pool.read_object(h, PAGE_SIZE), -1
        return meta.pool.read_object(h, size), (
            f & ZRAM_COMP_PRIORITY_MASK
        ) >> ZRAM_COMP_PRIORITY_SHIFT

    def _decompress(self, meta: _Meta, data: bytes, prio: int) -> bytes:
        """The page from `_decode_locked`'s bytes and priority (-1: they are the page)."""
        if prio < 0:
            return data
        comp = meta.comps[prio]
        if comp is None:
            raise IOFailure(f"no compressor for priority {prio}")
        return comp.decompress(data, PAGE_SIZE)

    def _load_page(self, meta: _Meta, index: int, touch: bool) -> tuple[bytes, int]:
        """The reference page read (zram_read_page): the page at `index`, and the generation
        of its stripe when it was read (for a read-modify-write's commit).

        Under the slot's stripe, as the kernel holds the slot lock: the slot's bytes (the
        fill word of a SAME slot, the pool object, the backing block), decompressed with the
        priority's compressor.  With `touch`, a page that was read is then marked accessed
        (zram_bio_read's mark_slot_accessed: IDLE and PP_SLOT cleared, ac_time set); one
        that fails is not, and the RMW read of a partial write never marks.  `read`'s 4 KiB
        branch and `_read_pages` are hand-inlined copies of this; a test runs them and this
        on random devices and requires the same data, slots and counters
        (tests/test_device.py::test_hot_paths_agree_with_the_reference_page_read_and_store).
        """
        t = meta.table
        stripe = self._stripes[index & STRIPE_MASK]
        with stripe.lock:
            f = t.flags[index]
            h = t.handle[index]
            gen = stripe.counters[GENERATION]
            if f == 0 and h == 0:
                return ZERO_PAGE, gen  # never written: nothing to mark
            data, prio = self._decode_locked(meta, index, f, h)
            page = self._decompress(meta, data, prio)
            if touch:
                t.flags[index] = f & ~ACCESS_CLEARED
                t.ac_time[index] = int(self.clock())
        return page, gen

    def _store_page(
        self, meta: _Meta, index: int, page: bytes, expect_gen: int | None = None
    ) -> bool:
        """zram_write_page(): store one full page at `index` — the reference page store.

        What storing a page does, in the kernel's order: a same-filled page keeps only its
        fill word (no allocation, no mem_limit check); any other page is compressed outside
        the slot lock, kept raw as a HUGE object once the compressed length reaches
        huge_class_size (write_incompressible_page), given a zs_malloc object, checked
        against mem_limit right after that (zram_can_store_page) and copied in; then, under
        the slot's stripe, slot_free() drops the old content and the slot takes the new one.
        Aligned writes go through hand-inlined copies of this, `_write_page` (4 KiB) and
        `_write_pages` (a run of pages); a test runs them and this on random devices and
        requires the same data, slots and counters
        (tests/test_device.py::test_hot_paths_agree_with_the_reference_page_read_and_store).

        With `expect_gen` (the commit of a read-modify-write) nothing is stored, and False
        returned, when the stripe's generation moved since the old page was read.  Raises
        IOFailure (EIO) when the pool is full or the write would pass mem_limit; the slot
        then keeps its old content.
        """
        pool = meta.pool
        stripe = self._stripes[index & STRIPE_MASK]
        word = same_filled_word(page)
        if word is not None:
            handle, newflags, size, alloced = word, ZRAM_SAME, 0, 0
        else:
            # outside the slot lock; the primary compressor is set whenever meta is
            data = meta.comps[ZRAM_PRIMARY_COMP].compress(page)  # type: ignore[union-attr]
            if len(data) >= meta.huge_class_size:
                data, size, newflags = page, PAGE_SIZE, ZRAM_HUGE | PAGE_SIZE
            else:
                size = newflags = len(data)
            try:
                handle = pool.malloc(size)
            except OutOfMemory:
                raise IOFailure(f"{self.name}: out of memory for a {size}-byte object") from None
            alloced = pool.total_pages
            limit = self.limit_pages  # read once: mem_limit_store may run meanwhile
            if limit and alloced > limit:
                pool.free(handle)
                with stripe.lock:  # update_used_max() comes before the limit check
                    update_used_max(stripe.counters, alloced)
                raise IOFailure(f"{self.name}: mem_limit reached")
            pool.write_object(handle, data)
        t = meta.table
        with stripe.lock:
            c = stripe.counters
            update_used_max(c, alloced)
            stale = expect_gen is not None and c[GENERATION] != expect_gen
            if not stale:
                self._slot_free(meta, index, c)  # the old content goes only now
                t.handle[index] = handle
                t.flags[index] = newflags
                t.ac_time[index] = int(self.clock())
                if newflags == ZRAM_SAME:
                    c[SAME_PAGES] += 1
                else:
                    c[COMPR_DATA_SIZE] += size
                    if newflags & ZRAM_HUGE:
                        c[HUGE_PAGES] += 1
                        c[HUGE_PAGES_SINCE] += 1
                c[PAGES_STORED] += 1
                c[GENERATION] += 1
        if stale and newflags != ZRAM_SAME:
            pool.free(handle)
        return not stale

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
                # One full page: _load_page(touch=True) inlined, the request accounted in the
                # same critical section (one stripe round trip).
                t = meta.table
                with first_stripe.lock:
                    f = t.flags[index]
                    h = t.handle[index]
                    if f == 0 and h == 0:
                        data = ZERO_PAGE
                    else:
                        comp = None
                        if not f & (ZRAM_WB | ZRAM_SAME | ZRAM_HUGE) and h:
                            # a compressed object in the pool, inlined as in _read_pages
                            prio = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
                            comp = meta.comps[prio]
                        if comp is not None:
                            obj = meta.pool.read_object(h, f & SIZE_MASK)
                            data = comp.decompress(obj, PAGE_SIZE)
                        else:  # the rest, and a missing compressor's error
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
                    parts.append(page if n == PAGE_SIZE else page[off : off + n])
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

    def _read_pages(self, meta: _Meta, index: int, count: int) -> list[bytes]:
        """zram_bio_read() of whole pages: `_load_page(touch=True)` for each, hand-inlined.

        The hot loop of every multi-page read (128 KiB requests: a quarter of its CPU was
        Python call overhead).  Each page is read as `_load_page` reads it: under its slot
        lock the object is copied out of the pool (zs_map_object RO) and decompressed, and a
        page that was read is marked accessed; the common case, a compressed object in the
        pool, is inlined.  (Decompressing after dropping the lock, as this loop once did,
        marked a page accessed before knowing it could be read, and was no faster.)  On an
        error the failing page's index is in the exception's ``block`` attribute.
        """
        t = meta.table
        flags, handles, ac_time = t.flags, t.handle, t.ac_time
        stripes = self._stripes
        pool = meta.pool  # its methods called on it, not hoisted (see _write_pages)
        comps = meta.comps
        now = int(self.clock())
        keep = ~ACCESS_CLEARED
        out: list[bytes] = []
        i = index
        try:
            for i in range(index, index + count):
                with stripes[i & STRIPE_MASK].lock:
                    f = flags[i]
                    h = handles[i]
                    if not f & (ZRAM_WB | ZRAM_SAME | ZRAM_HUGE) and h:  # compressed object
                        prio = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
                        comp = comps[prio]
                        data = pool.read_object(h, f & SIZE_MASK)
                        out.append(
                            comp.decompress(data, PAGE_SIZE)
                            if comp is not None
                            else self._decompress(meta, data, prio)
                        )  # raises: no compressor
                    elif f == 0 and h == 0:
                        out.append(ZERO_PAGE)  # never written: no mark
                    else:
                        data, prio = self._decode_locked(meta, i, f, h)
                        out.append(data if prio < 0 else self._decompress(meta, data, prio))
                    if f or h:  # (not a `continue` above: mypyc compiles none inside `with`)
                        flags[i] = f & keep
                        ac_time[i] = now
        except ZramError as exc:
            exc.block = i
            raise
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
        try:
            if not (offset | end) & (PAGE_SIZE - 1):
                # whole pages, accounted in the last page's commit (one stripe round trip
                # for a 4 KiB request)
                if end - offset == PAGE_SIZE and type(data) is bytes:
                    self._write_page(meta, index, data, t0)
                else:
                    self._write_pages(meta, index, data, (end - offset) >> PAGE_SHIFT, t0)
                return end - offset
            self._write_unaligned(meta, index, offset, end, data)
        except ZramError as exc:
            self._write_failed(getattr(exc, "block", index), exc)
        _account(
            self._stripes[index & STRIPE_MASK],
            WRITE_IOS,
            WRITE_SECTORS,
            WRITE_NS,
            end - offset,
            _perf_ns() - t0,
        )
        return end - offset

    def _write_page(self, meta: _Meta, index: int, page: bytes, t0: int) -> None:
        """A 4 KiB write: `_store_page` hand-inlined, the request accounted in its commit.

        The hot path of single-page writes (swap, fio randwrite): what `_store_page` does,
        without its calls to the helpers (page_same_filled, update_used_max, slot_free of an
        old slot not written back, the block-layer accounting), each a Python frame.  The
        request, started at `t0` (perf_counter_ns), is accounted in the commit's critical section, so
        a 4 KiB write takes its stripe once.  Not `_write_pages` with a count of one: setting
        up its loop (bound methods hoisted into locals) made a 4 KiB write 7 % slower and a
        same-filled one 27 % (0.7 and 1 µs, scripts/bench.py device-ab's pages).  A test
        keeps this copy and the reference in step (see `_store_page`).
        """
        t = meta.table
        stripe = self._stripes[index & STRIPE_MASK]
        first = page[:8]
        if page[-8:] == first and page == first * (PAGE_SIZE // 8):  # same-filled
            handle, newflags = int.from_bytes(first, "little"), ZRAM_SAME
        else:
            pool = meta.pool
            # outside the slot lock; the primary compressor is set whenever meta is
            comp = meta.comps[ZRAM_PRIMARY_COMP].compress(page)  # type: ignore[union-attr]
            size = len(comp)
            if size >= meta.huge_class_size:
                comp, size, newflags = page, PAGE_SIZE, ZRAM_HUGE | PAGE_SIZE
            else:
                newflags = size
            try:
                handle = pool.malloc(size)
            except OutOfMemory:
                raise IOFailure(f"{self.name}: out of memory for a {size}-byte object") from None
            alloced = pool.total_pages
            limit = self.limit_pages
            if limit and alloced > limit:
                pool.free(handle)
                with stripe.lock:
                    update_used_max(stripe.counters, alloced)
                raise IOFailure(f"{self.name}: mem_limit reached")
            pool.write_object(handle, comp)
        with stripe.lock:
            c = stripe.counters
            stored = 1  # pages_stored's change: the new page in, any old content out
            if newflags == ZRAM_SAME:
                # nothing was allocated: no update_used_max, any old slot to _slot_free
                # (a merged path cost same-filled writes 6 %)
                self._slot_free(meta, index, c)
                c[SAME_PAGES] += 1
            else:
                if alloced > c[MAX_USED]:
                    c[MAX_USED] = alloced
                old_f = t.flags[index]
                dsize = size  # compr_data_size's change: the new object in, the old one out
                if old_f & ZRAM_WB:
                    self._slot_free(meta, index, c)  # the backing device's block
                elif old_f & ZRAM_SAME:
                    c[SAME_PAGES] -= 1
                    stored = 0
                elif old_f or t.handle[index]:  # an object in the pool, compressed or HUGE
                    pool.free(t.handle[index])
                    if old_f & ZRAM_HUGE:
                        c[HUGE_PAGES] -= 1
                    dsize -= old_f & SIZE_MASK
                    stored = 0
                if dsize:
                    c[COMPR_DATA_SIZE] += dsize
                if size == PAGE_SIZE:
                    c[HUGE_PAGES] += 1
                    c[HUGE_PAGES_SINCE] += 1
            t.handle[index] = handle
            t.flags[index] = newflags
            t.ac_time[index] = int(self.clock())
            if stored:
                c[PAGES_STORED] += 1
            c[GENERATION] += 1
            c[WRITE_IOS] += 1
            c[WRITE_SECTORS] += PAGE_SIZE >> SECTOR_SHIFT
            c[WRITE_NS] += _perf_ns() - t0

    def _write_pages(
        self, meta: _Meta, index: int, data: bytes | bytearray | memoryview, count: int, t0: int
    ) -> None:
        """zram_bio_write() of whole pages: `_store_page` for each, hand-inlined, in one frame.

        The hot path of multi-page writes (128 KiB requests; also 4 KiB ones that are not
        `bytes`): per page it does what `_store_page` does — same-filled pages kept as their
        word, compression outside the slot lock, zs_malloc, the mem_limit check (read per
        page, as the kernel does, so a limit set during a long write applies from the next
        page), the copy, the slot swapped under its stripe and the old object freed last —
        with the attribute look-ups hoisted out of the loop (a quarter of a 128 KiB write's
        own CPU was Python call overhead; the pool's methods stay calls on `pool`, native when
        compiled).  The old slot is freed inline but for a written-back one (`_slot_free`: a
        method call on a Python class, its arguments boxed).  The request, started at `t0`, is
        accounted in the last page's commit.  A test keeps this copy and the reference in
        step (see `_store_page`).

        On an error the failing page's index is in the exception's ``block`` attribute; the
        pages before it are written, it and the ones after it keep their old content.
        """
        t = meta.table
        flags, handles, ac_time = t.flags, t.handle, t.ac_time
        stripes = self._stripes
        pool = meta.pool  # its methods called on it, not hoisted (docstring)
        compress = meta.comps[ZRAM_PRIMARY_COMP].compress  # type: ignore[union-attr]  # always set
        huge_size = meta.huge_class_size
        now = int(self.clock())
        last = index + count - 1
        if type(data) is not bytes:
            data = bytes(data)
        i = index
        try:
            for i in range(index, last + 1):
                off = (i - index) << PAGE_SHIFT
                page = data[off : off + PAGE_SIZE]
                stripe = stripes[i & STRIPE_MASK]
                first = page[:8]
                if page[-8:] == first and page == first * (PAGE_SIZE // 8):  # same-filled
                    handle, newflags = int.from_bytes(first, "little"), ZRAM_SAME
                    size = alloced = 0
                else:
                    comp = compress(page)  # outside the slot lock
                    size = len(comp)
                    if size >= huge_size:
                        comp, size, newflags = page, PAGE_SIZE, ZRAM_HUGE | PAGE_SIZE
                    else:
                        newflags = size
                    try:
                        handle = pool.malloc(size)
                    except OutOfMemory:
                        raise IOFailure(
                            f"{self.name}: out of memory for a {size}-byte object"
                        ) from None
                    alloced = pool.total_pages
                    limit = self.limit_pages
                    if limit and alloced > limit:
                        pool.free(handle)
                        with stripe.lock:
                            update_used_max(stripe.counters, alloced)
                        raise IOFailure(f"{self.name}: mem_limit reached")
                    pool.write_object(handle, comp)
                with stripe.lock:
                    c = stripe.counters
                    if alloced > c[MAX_USED]:
                        c[MAX_USED] = alloced
                    old_f = flags[i]
                    stored, dsize = 1, size  # each counter's change applied once, as in _write_page
                    if old_f & ZRAM_WB:
                        self._slot_free(meta, i, c)  # the backing device's block
                    elif old_f & ZRAM_SAME:
                        c[SAME_PAGES] -= 1
                        stored = 0
                    elif old_f or handles[i]:  # an object in the pool, compressed or HUGE
                        pool.free(handles[i])
                        if old_f & ZRAM_HUGE:
                            c[HUGE_PAGES] -= 1
                        dsize -= old_f & SIZE_MASK
                        stored = 0
                    handles[i] = handle
                    flags[i] = newflags
                    ac_time[i] = now
                    if dsize:
                        c[COMPR_DATA_SIZE] += dsize
                    if newflags == ZRAM_SAME:
                        c[SAME_PAGES] += 1
                    elif size == PAGE_SIZE:
                        c[HUGE_PAGES] += 1
                        c[HUGE_PAGES_SINCE] += 1
                    if stored:
                        c[PAGES_STORED] += 1
                    c[GENERATION] += 1
                    if i == last:  # the request is complete: nothing can fail after this
                        c[WRITE_IOS] += 1
                        c[WRITE_SECTORS] += count << (PAGE_SHIFT - SECTOR_SHIFT)
                        c[WRITE_NS] += _perf_ns() - t0
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
                src = mv[pos - offset : pos - offset + chunk]
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
            new = b"".join((old[:off], src, old[off + len(src) :]))
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
        candidates: range | list[int]
        if count <= 64:
            candidates = range(index, index + count)
        else:
            # mkfs discards the whole device: visit only slots that hold something (a slot
            # written after this scan was written after the discard, a valid order) and
            # count notify_free for every block in one go, as the kernel's loop would.
            candidates = []
            for lo in range(index, index + count, 1 << 20):  # bounded temporaries
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
        self._clear_range(offset, length)

    def zero_range(self, offset: int, length: int) -> None:
        """fallocate(ZERO_RANGE): on zram the same as a punched hole (the blocks read back
        zeros and hold no memory)."""
        self._clear_range(offset, length)

    def _clear_range(self, offset: int, length: int) -> None:
        # Both fallocate modes; not one calling the other, because the trace hook wraps each
        # on the instance and would record a zero_range as a punch_hole too.  (Not a class-body
        # alias `zero_range = punch_hole` either: mypyc compiles none.)
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

    def _zero_edge(self, meta: _Meta, start: int, end: int) -> None:
        index = start >> PAGE_SHIFT
        t = meta.table
        if not t.flags[index] and not t.handle[index]:
            return  # reads as zeros already; do not allocate for it
        self._write_partial(meta, index, start & (PAGE_SIZE - 1), ZERO_PAGE[: end - start])

    def flush(self) -> None:
        """REQ_PREFLUSH: nothing to write out (zram is synchronous); counted in `stat`."""
        stripe = self._ensure_stripes()[0]
        with stripe.lock:
            stripe.counters[FLUSH_IOS] += 1
