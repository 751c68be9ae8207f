"""Page migration and memory compaction on the simulated memory (mm/migrate.c, mm/compaction.c).

This module owns how a movable frame changes place, on top of the primitives
`allocator.memory.PhysicalMemory` offers (page refs, page locks, free-frame claims):

* ``migrate_pfn_status`` / ``migrate_pinned``: one frame to a new one, with the kernel's
  protocol (pin, trylock, isolate through the owner's ``MovableOps``, both pages locked around
  ``migrate_page``, put back on failure), and its outcome, ``MigrateStatus``;
* ``compact_memory``: ``echo 1 > /proc/sys/vm/compact_memory``, the two scanners that meet in
  the middle, and what a run did, ``CompactResult``.

`PhysicalMemory.migrate_pfn`, ``migrate_pfn_status`` and ``compact`` delegate here.  The owner
of the pages (zsmalloc) is reached only through ``MovableOps``; zsmalloc's own object compaction
is `allocator.compact`, a different thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from .mm_types import PG_ISOLATED, MovableOps, OutOfMemory

if TYPE_CHECKING:
    from .memory import PhysicalMemory

__all__ = [
    "MigrateStatus",
    "CompactResult",
    "migrate_pfn_status",
    "migrate_pinned",
    "compact_memory",
]


class MigrateStatus(IntEnum):
    """Outcome of one migration attempt (``PhysicalMemory.migrate_pfn_status``)."""

    SUCCESS = 0
    NOT_MOVABLE = 1  # free, unowned, not registered movable, or already isolated
    BUSY = 2  # page lock held by someone else (trylock failed)
    ISOLATE_FAILED = 3  # ops.isolate_page said no
    NO_TARGET = 4  # no free frame (or none below it when one was required)
    FAILED = 5  # ops.migrate_page said no; put back


@dataclass
class CompactResult:
    """What one ``compact()`` run did."""

    migrated: int = 0
    failed: int = 0  # isolated but migrate_page failed (pgmigrate_fail)
    skipped: int = 0  # movable frames not migrated: busy, isolated elsewhere, refused
    migrate_scanned: int = 0
    free_scanned: int = 0
    isolated: int = 0
    high_water_before: int = 0
    high_water_after: int = 0
    success: bool = False  # scanners met and nothing failed or was skipped


def migrate_pfn_status(mem: PhysicalMemory, pfn: int, *, lower_only: bool = False) -> MigrateStatus:
    """Migrate one movable frame to the lowest free frame (one below ``pfn`` when
    ``lower_only``): pin it (get_page_unless_zero), migrate, unpin (put_page)."""
    if not mem.get_page_unless_zero(pfn):
        return MigrateStatus.NOT_MOVABLE
    try:
        return migrate_pinned(mem, pfn, -1, lower_only)
    finally:
        mem.put_page(pfn)


def migrate_pinned(mem: PhysicalMemory, pfn: int, target: int, lower_only: bool) -> MigrateStatus:
    """The migration protocol (mm/migrate.c, move_to_new_folio for movable non-LRU pages).

    ``target`` is a frame already claimed by compaction's free scanner, or -1 to allocate
    one. On return the target is either the page's new home or freed again.
    """
    if not mem.trylock_page(pfn):
        _drop_target(mem, target)
        return MigrateStatus.BUSY
    try:
        ops = mem.movable_ops(pfn)
        if ops is None or mem.flags[pfn] & PG_ISOLATED:
            _drop_target(mem, target)
            return MigrateStatus.NOT_MOVABLE
        # isolate_movable_page: the owner takes the page off its lists.
        if not ops.isolate_page(pfn):
            _drop_target(mem, target)
            return MigrateStatus.ISOLATE_FAILED
        mem.set_page_flag(pfn, PG_ISOLATED)
        mem.mod_vmstat("compact_isolated")
        if target < 0:
            try:
                target = mem.claim_lowest_free_below(pfn) if lower_only else mem.alloc_page()
            except OutOfMemory:
                target = -1
        if target < 0:
            _putback(mem, pfn, ops)
            return MigrateStatus.NO_TARGET
        # move_to_new_folio: both pages locked while the owner copies and relinks.
        if not mem.trylock_page(target):  # a fresh frame nobody else can hold
            raise AssertionError(f"freshly allocated frame {target} is locked")
        ok = False
        try:
            ok = bool(ops.migrate_page(pfn, target))
        finally:
            if ok:
                # The old frame stops being a page of the owner before anyone else can lock
                # it: reset its struct page and leave the free to the final put (our unpin).
                mem.free_migrated_page(pfn)
                mem.unlock_page(target)
            else:
                _putback(mem, pfn, ops)
                mem.unlock_page(target)
                mem.free_page(target)
                mem.mod_vmstat("pgmigrate_fail")
        if not ok:
            return MigrateStatus.FAILED
    finally:
        mem.unlock_page(pfn)
    mem.mod_vmstat("pgmigrate_success")
    return MigrateStatus.SUCCESS


def _putback(mem: PhysicalMemory, pfn: int, ops: MovableOps) -> None:
    """putback_movable_page: under the page lock, the owner takes the page back."""
    try:
        ops.putback_page(pfn)
    finally:
        mem.clear_page_flag(pfn, PG_ISOLATED)


def _drop_target(mem: PhysicalMemory, target: int) -> None:
    if target >= 0:
        mem.free_page(target)


def compact_memory(mem: PhysicalMemory, *, direct: bool = False) -> CompactResult:
    """Memory compaction (``echo 1 > /proc/sys/vm/compact_memory``, compact_zone): migrate
    movable frames from the top of the arena into free frames at the bottom until the
    scanners meet.

    The migrate scanner walks PFNs downward from the high-water mark looking for movable
    frames, the free scanner walks upward from PFN 0 looking for free frames; each movable
    frame found above a free frame is migrated into it. ``direct=True`` counts the run as an
    allocation stall (compact_stall), as direct compaction does. compact_success /
    compact_fail count runs that did / did not reach the point where the scanners meet with
    every movable frame above it moved.
    """
    res = CompactResult()
    # No lock is held across the run (several compactions may run at once, as kcompactd and
    # direct compaction do): every frame is claimed, pinned and page-locked individually.
    res.high_water_before = mem.high_water
    free_pos = 0  # free scanner: next PFN to examine (upward)
    mig_pos = mem.high_water  # migrate scanner: exclusive bound (downward)
    free_seen = 0  # frames below this were counted as free-scanned
    mig_seen = mig_pos  # frames from this up were counted as migrate-scanned
    while True:
        cand = mem.last_movable_in(free_pos, mig_pos)
        if cand < 0:
            res.migrate_scanned += max(0, min(mig_seen, mig_pos) - free_pos)
            break
        if cand < mig_seen:
            res.migrate_scanned += mig_seen - cand
            mig_seen = cand
        mig_pos = cand
        tgt = mem.first_free_in(free_pos, cand)
        if tgt < 0:
            res.free_scanned += max(0, cand - free_seen)
            break  # the scanners met
        if tgt + 1 > free_seen:
            res.free_scanned += tgt + 1 - max(free_seen, free_pos)
            free_seen = tgt + 1
        free_pos = tgt
        if not mem.claim_free_page(tgt):
            mig_pos = cand + 1  # lost the frame to an allocation: rescan both
            continue
        if not mem.get_page_unless_zero(cand):
            mem.free_page(tgt)
            continue  # freed or no longer movable under us
        try:
            status = migrate_pinned(mem, cand, tgt, True)
        finally:
            mem.put_page(cand)
        if status is MigrateStatus.SUCCESS:
            res.migrated += 1
            res.isolated += 1
            free_pos = tgt + 1
        elif status is MigrateStatus.FAILED:
            res.failed += 1
            res.isolated += 1
        else:
            res.skipped += 1
    res.high_water_after = mem.high_water
    res.success = not res.failed and not res.skipped
    mem.mod_vmstat("compact_migrate_scanned", res.migrate_scanned)
    mem.mod_vmstat("compact_free_scanned", res.free_scanned)
    if direct:
        mem.mod_vmstat("compact_stall")
    mem.mod_vmstat("compact_success" if res.success else "compact_fail")
    return res
