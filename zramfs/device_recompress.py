"""Recompression of stored slots with secondary algorithms (CONFIG_ZRAM_MULTI_COMP).

Owns recompress_store after parsing (which priorities to try, the threshold and
max_pages budget, the idle/huge filters), its scan of the slot table
(scan_slots_for_recompress, largest objects first) and recompress_slot(): decompress, try
each secondary compressor in priority order, keep the first result that lands in a smaller
size class, mark INCOMPRESSIBLE what no algorithm could shrink.  Configuring the secondary
algorithms (recomp_algorithm, algorithm_params) is lifecycle: `zramfs.device`.
"""

from __future__ import annotations

import numpy as np
from mypy_extensions import mypyc_attr

from allocator import OutOfMemory

from .device_core import U64, ZRAM_MAX_COMPS, ZRAM_SECONDARY_COMP, _Meta
from .device_io import IOPathMixin
from .errors import InvalidInput, NoMemory, ZramError
from .slots import (
    COMPR_DATA_SIZE,
    GENERATION,
    PAGES_STORED,
    SIZE_MASK,
    STRIPE_MASK,
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_COMP_PRIORITY_SHIFT,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_PP_SLOT,
    ZRAM_SAME,
    ZRAM_WB,
)

# recompress mode bits (the kernel's RECOMPRESS_IDLE, RECOMPRESS_HUGE)
RECOMP_IDLE = 1
RECOMP_HUGE = 2


@mypyc_attr(native_class=False)
class RecompressMixin(IOPathMixin):
    """Recompression of `ZramDevice`'s slots with its secondary algorithms."""

    # ---- recompression (docs/zram.md, "Recompression")
    def recompress(
        self,
        *,
        mode: int = 0,
        threshold: int = 0,
        max_pages: int = U64,
        algo: str | None = None,
        prio: int | None = None,
    ) -> None:
        """recompress_store after parsing (current kernels, chained recompression)."""
        with self.dev_lock:
            meta = self._require_meta()
            if threshold and threshold >= meta.huge_class_size:
                raise InvalidInput(f"threshold {threshold} >= huge_class_size")
            num_active = meta.num_active_comps
            lo = ZRAM_SECONDARY_COMP
            hi = num_active
            if prio is not None:
                lo = max(prio, ZRAM_SECONDARY_COMP)  # priority=0 is turned into 1
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
                ok &= (cur + 1) < hi  # "already compressed with same or higher priority"
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
                if (
                    out
                    and len(out) < meta.huge_class_size
                    and ct.class_for_alloc(len(out)).index < old_class
                    and (not threshold or len(out) < threshold)
                ):
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
