"""The statistics of a zram device: the numbers behind mm_stat, io_stat, bd_stat, debug_stat.

Owns struct zram_stats as a snapshot (`DeviceStats`, summed over the per-stripe counters
of `zramfs.slots`), mem_used_max and its reset (mem_used_max_store), the block layer's
per-request accounting behind `stat` (`_account`), and one slot's state for debugfs
block_state (`slot_state`).  Formatting the attribute text is `zramfs.attrs`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

from .device_core import SECTOR_SHIFT, DeviceCore
from .slots import (
    BD_COUNT,
    BD_READS,
    BD_WRITES,
    COMPR_DATA_SIZE,
    FAILED_READS,
    FAILED_WRITES,
    HUGE_PAGES,
    HUGE_PAGES_SINCE,
    MAX_USED,
    MISS_FREE,
    NOTIFY_FREE,
    NR_COUNTERS,
    PAGES_STORED,
    SAME_PAGES,
    STRIPE_MASK,
    Stripe,
)


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


def _account(stripe: Stripe, ios: int, sectors: int, ticks: int, nbytes: int, ns: int) -> None:
    """The block layer's per-request accounting (ios, sectors, time), in the stripe of the
    request's first page.  4 KiB reads and whole-page writes do it inline instead, in the
    critical section of their (last) page's commit."""
    with stripe.lock:
        c = stripe.counters
        c[ios] += 1
        c[sectors] += (nbytes + 511) >> SECTOR_SHIFT
        c[ticks] += ns


@mypyc_attr(native_class=False)
class StatsMixin(DeviceCore):
    """The statistics of `ZramDevice`."""

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
            pages_stored=sums[PAGES_STORED],
            compr_data_size=sums[COMPR_DATA_SIZE],
            mem_used_pages=pool.total_pages if pool is not None else 0,
            limit_pages=self.limit_pages,
            max_used_pages=max_used,
            same_pages=sums[SAME_PAGES],
            pages_compacted=pool.stats.pages_compacted if pool is not None else 0,
            huge_pages=sums[HUGE_PAGES],
            huge_pages_since=sums[HUGE_PAGES_SINCE],
            failed_reads=sums[FAILED_READS],
            failed_writes=sums[FAILED_WRITES],
            notify_free=sums[NOTIFY_FREE],
            miss_free=sums[MISS_FREE],
            bd_count=sums[BD_COUNT],
            bd_reads=sums[BD_READS],
            bd_writes=sums[BD_WRITES],
            counters=sums,
        )

    def slot_state(self, index: int) -> tuple[int, int, int]:
        """(handle, flags word, ac_time) of one slot, for block_state and tests."""
        meta = self._require_meta()
        with self._stripes[index & STRIPE_MASK].lock:
            t = meta.table
            return t.handle[index], t.flags[index], t.ac_time[index]

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
