"""The zram slot table: per 4 KiB block a handle, a size-and-flags word and an access time.

Owns `struct zram_table_entry` (docs/zram.md, "The slot table and its flags") for a whole
device.  The three columns
live in one anonymous `mmap`, so a device costs only virtual address space until blocks
are written: an untouched page of the table is never faulted in, which is why a 100 GB
device (LTP zram02) can be initialised for free.  Per touched slot the cost is 16 bytes:

    handle   u64   zsmalloc handle, or the fill word (SAME), or the backing block (WB)
    flags    u32   object size in the low ZRAM_FLAG_SHIFT bits, flag bits above
    ac_time  u32   seconds of the device clock at the last access (0 = never)

Two views cover the same memory: `memoryview.cast` views give plain Python ints for the
per-block hot path (cheaper than numpy scalars), numpy views give vectorised scans for
`idle`, writeback, recompression and statistics.

Also owns what a SAME slot stands for (`same_filled_word`, `fill_page`) and the striped slot
locks.  The kernel has one lock bit per entry
(ZRAM_ENTRY_LOCK); a lock object per slot would cost far more than the slot itself, so
slot i is guarded by stripe `i & STRIPE_MASK`.  Each stripe also carries the device
counters that change under it (see `Stripe`), so statistics are exact without a global
lock on the data path.

The stripe locks are lock class ``zram_slot_lock`` (rank 6 in the stack's lock order, written
in ``allocator/locks.py``).  Stripes created while lockdep is on get checked ``Mutex``es;
otherwise they are ``PlainLock``s, which count nothing in lock_stat on every request (the
kernel likewise annotates its slot lock for lockdep only in CONFIG_DEBUG_LOCK_ALLOC builds).
So a test that wants the slot locks checked turns lockdep on before it sets ``disksize``.
"""

from __future__ import annotations

import mmap
from typing import Final

import numpy as np

from allocator.locks import LockClass, PlainLock, hot_path_lock

from .errors import NoMemory

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT

# Layout of the flags word, as in zram_drv.h of current kernels: the object size takes
# the low ZRAM_FLAG_SHIFT = PAGE_SHIFT + 1 bits (a size of exactly PAGE_SIZE must fit),
# the flags follow in the kernel's order.
ZRAM_FLAG_SHIFT: Final = PAGE_SHIFT + 1
SIZE_MASK: Final = (1 << ZRAM_FLAG_SHIFT) - 1
ZRAM_SAME: Final = 1 << (ZRAM_FLAG_SHIFT + 0)  # page filled with one repeated word
ZRAM_ENTRY_LOCK: Final = 1 << (ZRAM_FLAG_SHIFT + 1)  # kernel's lock bit; unused here (stripes)
ZRAM_WB: Final = 1 << (ZRAM_FLAG_SHIFT + 2)  # stored on the backing device
ZRAM_PP_SLOT: Final = 1 << (ZRAM_FLAG_SHIFT + 3)  # selected for post-processing
ZRAM_HUGE: Final = 1 << (ZRAM_FLAG_SHIFT + 4)  # stored uncompressed
ZRAM_IDLE: Final = 1 << (ZRAM_FLAG_SHIFT + 5)  # not accessed since the last idle marking
ZRAM_INCOMPRESSIBLE: Final = 1 << (ZRAM_FLAG_SHIFT + 6)  # no algorithm could recompress it
ZRAM_COMP_PRIORITY_SHIFT: Final = ZRAM_FLAG_SHIFT + 7  # two bits: priority of the compressor used
ZRAM_COMP_PRIORITY_MASK: Final = 0x3 << ZRAM_COMP_PRIORITY_SHIFT

#: what slot_free() clears besides the size and the SAME/WB/HUGE bits
ACCESS_CLEARED: Final = ZRAM_IDLE | ZRAM_PP_SLOT

SLOT_BYTES: Final = 8 + 4 + 4

NR_STRIPES: Final = 1024
STRIPE_MASK: Final = NR_STRIPES - 1

# Counter indices in Stripe.counters (all 64-bit counters of struct zram_stats that the
# data path touches, plus the block-layer accounting of part_stat).
PAGES_STORED: Final = 0
COMPR_DATA_SIZE: Final = 1
SAME_PAGES: Final = 2
HUGE_PAGES: Final = 3
HUGE_PAGES_SINCE: Final = 4
NOTIFY_FREE: Final = 5
FAILED_READS: Final = 6
FAILED_WRITES: Final = 7
MISS_FREE: Final = 8
BD_COUNT: Final = 9
BD_READS: Final = 10
BD_WRITES: Final = 11
READ_IOS: Final = 12
READ_SECTORS: Final = 13
READ_NS: Final = 14
WRITE_IOS: Final = 15
WRITE_SECTORS: Final = 16
WRITE_NS: Final = 17
# no discard counters: zram completes a discard before the block layer would account it
FLUSH_IOS: Final = 18
GENERATION: Final = 19  # bumped on every slot update in the stripe (read-modify-write check)
MAX_USED: Final = 20  # highest pool page count this stripe saw (max over stripes = mem_used_max)
NR_COUNTERS: Final = 21


MADV_DONTNEED_LOCKED: Final = 24  # uapi/asm-generic/mman-common.h (Linux 5.18+)

#: the slot locks' lock class (see the module docstring)
STRIPE_LOCK = LockClass("zram_slot_lock", 6)


class Stripe:
    """One slot lock and the counters updated while holding it."""

    __slots__ = ("lock", "counters")

    def __init__(self) -> None:
        self.lock: PlainLock = hot_path_lock(STRIPE_LOCK)
        self.counters = [0] * NR_COUNTERS


class SlotTable:
    """The slot columns of one initialised device."""

    def __init__(self, nr_pages: int) -> None:
        self.nr_pages = nr_pages
        nbytes = max(nr_pages, 1) * SLOT_BYTES
        try:
            self._mm = mmap.mmap(
                -1,
                nbytes,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0),
            )
        except (OSError, OverflowError, ValueError, MemoryError):
            raise NoMemory(f"cannot reserve a slot table for {nr_pages} pages") from None
        n = max(nr_pages, 1)
        mv = memoryview(self._mm)
        self.handle = mv[: 8 * n].cast("Q")
        self.flags = mv[8 * n : 12 * n].cast("I")
        self.ac_time = mv[12 * n : 16 * n].cast("I")
        self.np_handle = np.frombuffer(self._mm, dtype=np.uint64, count=n, offset=0)
        self.np_flags = np.frombuffer(self._mm, dtype=np.uint32, count=n, offset=8 * n)
        self.np_ac_time = np.frombuffer(self._mm, dtype=np.uint32, count=n, offset=12 * n)

    def allocated_mask(self) -> np.ndarray:
        """slot_allocated(): a size, or SAME, or WB (docs/zram.md, "The slot table and its
        flags")."""
        f = self.np_flags
        return (f & (SIZE_MASK | ZRAM_SAME | ZRAM_WB)) != 0

    def release(self) -> None:
        """Drop the table's memory now instead of waiting for the garbage collector."""
        # Returning the pages is what matters for RSS; the mapping itself goes away when
        # the last view is collected (closing it while numpy views exist is not allowed).
        try:
            self._mm.madvise(mmap.MADV_DONTNEED)
        except OSError:
            # Under `zramfs mount --mlock` the mapping is VM_LOCKED and MADV_DONTNEED is EINVAL;
            # MADV_DONTNEED_LOCKED (Linux 5.18+) drops locked pages too.
            try:
                self._mm.madvise(MADV_DONTNEED_LOCKED)
            except (OSError, ValueError):
                pass
        except (AttributeError, ValueError):
            pass


def new_stripes() -> list[Stripe]:
    """A device's stripes: lockdep-checked locks when lockdep is on now, plain ones otherwise."""
    return [Stripe() for _ in range(NR_STRIPES)]


# ------------------------------------------------------------------------------------------
# What a SAME slot holds: a page's repeated 8-byte word instead of an object
# ------------------------------------------------------------------------------------------

#: an unwritten block reads as this page (and so does a SAME slot of word 0)
ZERO_PAGE: Final = bytes(PAGE_SIZE)
_SAME_FILL_CACHE: Final[dict[int, bytes]] = {0: ZERO_PAGE}


def same_filled_word(page: bytes) -> int | None:
    """page_same_filled(): the 8-byte word a page repeats, or None.

    The first word is compared with the last one before the whole page: a cheap reject.
    """
    first = page[:8]
    if page[-8:] == first and page == first * (PAGE_SIZE // 8):
        return int.from_bytes(first, "little")
    return None


def fill_page(word: int) -> bytes:
    """The page a SAME slot holds: its 8-byte word repeated (memset_l)."""
    page = _SAME_FILL_CACHE.get(word)
    if page is None:
        page = word.to_bytes(8, "little") * (PAGE_SIZE // 8)
        if len(_SAME_FILL_CACHE) < 256:
            _SAME_FILL_CACHE[word] = page
    return page


def update_used_max(c: list[int], alloced: int) -> None:
    """update_used_max(), into the counters of the stripe the caller holds."""
    if alloced > c[MAX_USED]:
        c[MAX_USED] = alloced
