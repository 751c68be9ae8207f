"""Simulated physical memory: page frames, the free-frame allocator, struct page fields, page
locks, the movable-page registry and page references, /proc/vmstat counters.

This module owns everything "below" zsmalloc that the kernel's mm core would provide:

* **Frames** live in one ``mmap`` arena addressed by PFN; untouched frames cost no RAM. The
  default ``backing="anon"`` maps it ``MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE``;
  ``backing="memfd"`` maps a sparse ``memfd_create("zramfs-arena")`` file ``MAP_SHARED``, for a
  daemon that ``mlockall``s itself (``zramfs mount --mlock``). Freed frames are dropped in
  batches of ``DIRTY_FRAMES`` (1 MiB), runs of neighbours in one call: ``madvise(MADV_DONTNEED)``
  on the anonymous arena, ``fallocate(PUNCH_HOLE|KEEP_SIZE)`` on the memfd (MADV_DONTNEED and
  MADV_REMOVE fail with EINVAL on mlocked memory; punching a hole frees the shmem pages, locked
  or not). So the process RSS follows the number of frames in use within that batch; a frame
  reallocated before its batch is dropped keeps its old bytes, one dropped reads as zeros (with
  a ``page_size`` that is not a multiple of the host page size it is zero-filled instead).
  ``drop_free_frames()`` drops the batch now. The pool must not rely on fresh frames being
  zeroed: the kernel's alloc_page without __GFP_ZERO does not either.
* **Allocation** hands out the *lowest* free PFN (like a buddy allocator under pressure would
  not, but like the design asks so compaction has a meaning): a min-heap of freed PFNs below the
  high-water mark plus a bump pointer; freeing the top frame lowers the high-water mark over any
  free frames below it. One internal leaf lock (never held while calling out) protects it.
* **struct page fields** as compact per-frame arrays indexed by PFN, grown in place in chunks as
  the high-water mark rises (never replaced, so ``mem.index`` stays the same object): ``private``
  (page->private, the owning zspage), ``index`` (page->index: next PFN in the chain, -1 none, or
  a huge object's handle|1), ``page_type`` (first_obj_offset), ``flags`` (PG_* bits).
* **Page locks**: a PG_locked byte per frame plus a small hashed table of wait queues (the
  kernel's page_waitqueue()), inherited from `allocator.page_lock.PageLocks`; one thread may
  hold any number of page locks; lockdep/lock_stat see them as the ``PG_locked`` class (rank
  10, outermost).
* **Movable pages**: frames registered with ``set_movable(pfn, ops)`` (``MovableOps``, in
  `allocator.mm_types`) can be moved with ``migrate_pfn`` or by ``compact()``.  Those two are
  entry points only: the migration protocol and the two compaction scanners are
  `allocator.page_migration`'s, built on the primitives here (page references, page locks,
  ``claim_free_page``, ``first_free_in``/``last_movable_in``).
* **vmstat**: pgmigrate_* and compact_* event counters plus gauges, as /proc/vmstat lines.

Races the kernel solves with page refcounts are solved the same way: a migrator pins a frame
(``get_page_unless_zero``) before it trylocks it, and ``free_page`` of a pinned frame is completed
by the last ``put_page``, so a frame is never reused while a migrator still looks at it.

The struct page vocabulary (``PG_*``, ``INDEX_NONE``, ``MovableOps``, ``OutOfMemory``) lives in
`allocator.mm_types` and ``MigrateStatus``/``CompactResult`` in `allocator.page_migration`; all
are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import os
from array import array
from collections.abc import Iterator
from typing import Any, Final

from . import locks as _locks
from .locks import ZONE_LOCK, Mutex
from .mm_types import INDEX_NONE, PG, PG_ISOLATED, PG_MOVABLE, PG_PRIVATE, MovableOps, OutOfMemory
from .page_lock import PageLocks
from .page_migration import CompactResult, MigrateStatus, compact_memory, migrate_pfn_status
from .prefault import NEVER, START_FRAME, Prefaulter

__all__ = [
    "PhysicalMemory",
    "MovableOps",
    "OutOfMemory",
    "CompactResult",
    "MigrateStatus",
    "PG",
    "PG_PRIVATE",
    "PG_MOVABLE",
    "PG_ISOLATED",
    "INDEX_NONE",
]


# Frame states (internal ``_state`` bytearray). ABOVE: at or above the bump pointer.
_ABOVE: Final = 0
_USED: Final = 1
_FREE: Final = 2  # free, below the high-water mark, in the free heap
_ZOMBIE: Final = 3  # freed by its owner while a migrator still pins it; freed by the last unpin
_FREE_B = bytes([_FREE])
_ONE_B = b"\x01"

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux value; the mmap module omits it
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate: Any = None  # libc fallocate(2) through ctypes, loaded by the first memfd arena


def _libc_fallocate():
    global _fallocate
    if _fallocate is None:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _fallocate = fn
    return _fallocate


# vmstat: gauges first, then events, in /proc/vmstat order.  The counters every frame
# allocation and free changes are fields (`PhysicalMemory._nr_zspages`, `_pgalloc`, `_pgfree`),
# the other events are in a dict by name.
_VM_EVENTS = (
    "pgmigrate_success",
    "pgmigrate_fail",
    "compact_migrate_scanned",
    "compact_free_scanned",
    "compact_isolated",
    "compact_stall",
    "compact_fail",
    "compact_success",
)


# looked up once: compiled code would look the heapq module's attribute up on every frame
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop

# Freed frames whose contents are dropped together (see PhysicalMemory._release): 1 MiB.
DIRTY_FRAMES: Final = 256


class PhysicalMemory(PageLocks):
    """Simulated RAM shared by any number of pools. Thread-safe."""

    def __init__(
        self,
        max_pages: int = 1 << 22,
        page_size: int = 4096,
        *,
        backing: str = "anon",
        prefault: bool = True,
    ) -> None:
        """``backing``: "anon" (a private anonymous mapping, the default) or "memfd" (a sparse
        memfd mapped shared, whose freed frames are dropped by punching holes: the arena for a
        process that mlockall()s itself, where MADV_DONTNEED fails).  ``prefault``: fault fresh
        frames in on a helper thread ahead of the bump pointer (`allocator.prefault`)."""
        if max_pages <= 0:
            raise ValueError("max_pages must be positive")
        if page_size < 8 or page_size & (page_size - 1):
            raise ValueError("page_size must be a power of two, at least 8 (one 64-bit word)")
        if backing not in ("anon", "memfd"):
            raise ValueError(f"backing must be 'anon' or 'memfd', not {backing!r}")
        super().__init__()  # the page locks (PG_locked bytes grown by _grow below)
        self.max_pages = max_pages
        self.page_size = page_size
        self.backing = backing
        self._fd = -1
        size = max_pages * page_size
        if backing == "anon":
            self._mm = mmap.mmap(
                -1,
                size,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        else:
            # Sparse: ftruncate allocates nothing, a page of the file exists once written.
            # memfd files are VM_NORESERVE shmem, so no commit charge for the whole size either.
            fd = os.memfd_create("zramfs-arena", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                self._mm = mmap.mmap(
                    fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
                )
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            _libc_fallocate()
        self._mv = memoryview(self._mm)
        # The arena as unsigned 64-bit words: the word at byte address a (8-byte aligned) is
        # words[a >> 3]; zsmalloc reads and writes object headers and freelist links here.
        self.words: memoryview = self._mv.cast("Q")
        # Dropping works on host pages; smaller simulated pages are zero-filled instead.
        self._madvise = page_size % mmap.PAGESIZE == 0
        self._drop = self._punch_hole if backing == "memfd" else self._dontneed
        self._zero = bytes(page_size)
        # Frames past the bump pointer faulted in ahead by allocator.prefault (created when
        # the bump pointer first reaches _prefault_at): RSS runs at most a chunk ahead.
        self._prefault: Prefaulter | None = None
        self._prefault_at = START_FRAME if prefault and self._madvise else NEVER
        # Freed frames whose contents are not dropped yet (see _release): a frame reused soon
        # after its free costs no madvise and no page fault.
        self._dirty: set[int] = set()

        # Free-frame allocator. Its lock is a leaf (never held while calling out of this module);
        # a ranked Mutex so lock_stat shows allocator contention as the kernel's &zone->lock.
        self._lock = Mutex(ZONE_LOCK)
        self._top = 0  # bump pointer == high-water mark
        self._heap: list[int] = []  # free PFNs below _top (may hold stale entries)
        self._nr_free_below = 0  # frames in state _FREE
        self._nr_used = 0
        self._refs: dict[int, int] = {}  # migrator pins (extra page refcounts)
        self._cap = 0  # length of the per-frame arrays

        # struct page fields, public (zsmalloc reads and writes them directly).
        # page->private: the owner's object (zsmalloc's Zspage), None when unused.  Any, as the
        # kernel's unsigned long that only the owner casts back (no isinstance on the hot paths).
        self.private: list[Any] = []
        self.index = array("q")
        self.page_type = array("i")
        self.flags = bytearray()
        # Internal per-frame state.
        self._state = bytearray()
        self._movable = bytearray()  # 1 when registered movable (scanned with rfind)
        self._mops: list[MovableOps | None] = []
        self._flags_lock = _locks.hot_path_lock(_locks.PAGE_FLAGS_LOCK)

        self._vm: dict[str, int] = dict.fromkeys(_VM_EVENTS, 0)
        self._nr_zspages = 0  # NR_ZSPAGES: frames of zspages (alloc_page/free_page(zspage=True))
        self._pgalloc = 0  # pgalloc_normal
        self._pgfree = 0  # pgfree
        self._grow(min(max_pages, 1024))

    # ------------------------------------------------------------------ arrays

    def _grow(self, need: int) -> None:
        """Extend the per-frame arrays in place to cover PFNs < need (caller holds _lock or is
        __init__). In-place extension keeps every reference to the arrays valid."""
        cap = self._cap
        if need <= cap:
            return
        new = min(self.max_pages, max(need, cap * 2, 4096))
        n = new - cap
        self.private.extend([None] * n)
        self.index.extend(array("q", [INDEX_NONE]) * n)
        self.page_type.extend(array("i", [0]) * n)
        self.flags.extend(bytes(n))
        self._state.extend(bytes(n))
        self._pglocked.extend(bytes(n))
        self._movable.extend(bytes(n))
        self._mops.extend([None] * n)
        self._cap = new

    # ------------------------------------------------------------------ allocator

    @property
    def nr_used(self) -> int:
        return self._nr_used

    @property
    def nr_free(self) -> int:
        return self.max_pages - self._nr_used

    @property
    def high_water(self) -> int:
        """Highest used PFN + 1 (frames pinned by a migrator after their free count as used)."""
        return self._top

    def alloc_page(self, zspage: bool = False) -> int:
        """Allocate the lowest free frame. Raises OutOfMemory when every frame is in use.

        With ``zspage`` the frame is counted in nr_zspages in the same critical section:
        alloc_zspage's alloc_page() and inc_zone_page_state(NR_ZSPAGES) for each page."""
        with self._lock:
            state = self._state
            heap = self._heap
            top = self._top
            while heap:
                pfn = _heappop(heap)
                if pfn < top and state[pfn] == _FREE:
                    self._nr_free_below -= 1
                    break
            else:
                pfn = top
                if pfn >= self.max_pages:
                    raise OutOfMemory(f"all {self.max_pages} page frames are in use")
                self._top = pfn + 1
                if pfn >= self._cap:
                    self._grow(pfn + 1)
                if pfn >= self._prefault_at:
                    self._prefault_at = self._prefault_ahead(pfn)
            state[pfn] = _USED
            self._nr_used += 1
            self._pgalloc += 1
            if zspage:
                self._nr_zspages += 1
            # stale contents, as a kernel alloc_page without __GFP_ZERO
            self._dirty.discard(pfn)
            return pfn

    def _prefault_ahead(self, pfn: int) -> int:
        """The bump pointer reached the prefault mark (caller holds _lock): queue the next
        chunk; returns the next mark."""
        pf = self._prefault
        if pf is None:
            pf = self._prefault = Prefaulter(self._mm, self.page_size, self.max_pages)
        return pf.ahead(pfn)

    @property
    def prefaulted(self) -> int:
        """Frames the prefault thread has faulted in so far (0 when it never ran)."""
        pf = self._prefault
        return pf.populated if pf is not None else 0

    def free_page(self, pfn: int, zspage: bool = False) -> None:
        """Free a frame: reset its struct page fields, drop its contents (batched, see _release)
        and make it allocatable again. The frame must not be page-locked (kernel: bad_page).
        With ``zspage`` it leaves nr_zspages in the same critical section (__free_zspage's
        dec_zone_page_state(NR_ZSPAGES) and put_page)."""
        with self._lock:
            if not 0 <= pfn < self._top or self._state[pfn] != _USED:
                raise ValueError(f"free_page: pfn {pfn} is not an allocated frame")
            if self._pglocked[pfn] and pfn not in self._refs:
                raise ValueError(f"free_page: pfn {pfn} is still page-locked")
            if zspage:
                self._nr_zspages -= 1
            self._reset_page(pfn)
            if pfn in self._refs:
                # A migrator holds a reference: the last put_page completes the free.
                self._state[pfn] = _ZOMBIE
                return
            self._release(pfn)

    def _reset_page(self, pfn: int) -> None:
        # Kernel reset_page + free_pages_prepare: every struct page field back to its initial value.
        self.private[pfn] = None
        self.index[pfn] = INDEX_NONE
        self.page_type[pfn] = 0
        self.flags[pfn] = 0
        self._mops[pfn] = None
        self._movable[pfn] = 0

    def _release(self, pfn: int) -> None:
        """Return a frame to the free pool (caller holds _lock).

        Its contents are dropped (MADV_DONTNEED, or a hole punched in a memfd arena, so the
        process gives the memory back) in batches of DIRTY_FRAMES, not one syscall per free:
        zsmalloc frees and allocates zspages all the time under overwrites, and lowest-PFN
        allocation hands the frame just freed out again, usually before the batch is due — then
        with its old bytes, like the kernel's alloc_page without __GFP_ZERO.  At most
        DIRTY_FRAMES frames of RSS lag."""
        dirty = self._dirty
        dirty.add(pfn)
        if len(dirty) >= DIRTY_FRAMES:
            self._drop_dirty()
        self._nr_used -= 1
        self._pgfree += 1
        state = self._state
        if pfn == self._top - 1:
            # Lower the high-water mark over the free frames right below the top; their heap
            # entries go stale (state no longer _FREE) and are skipped when popped.
            state[pfn] = _ABOVE
            top = pfn
            while top and state[top - 1] == _FREE:
                top -= 1
                state[top] = _ABOVE
                self._nr_free_below -= 1
            self._top = top
        else:
            state[pfn] = _FREE
            _heappush(self._heap, pfn)
            self._nr_free_below += 1
        heap = self._heap
        if len(heap) > 2 * self._nr_free_below + 1024:
            top = self._top
            heap[:] = sorted({p for p in heap if p < top and state[p] == _FREE})

    def _drop_dirty(self) -> None:
        """Drop the contents of every freed frame not reused yet (caller holds _lock); runs of
        neighbouring frames go in one madvise (one hole punch on a memfd arena)."""
        dirty = sorted(self._dirty)
        self._dirty.clear()
        ps = self.page_size
        if not self._madvise:
            zero = self._zero
            for pfn in dirty:
                self._mv[pfn * ps : (pfn + 1) * ps] = zero
            return
        drop = self._drop
        start = prev = dirty[0] if dirty else 0
        for pfn in dirty[1:]:
            if pfn != prev + 1:
                drop(start * ps, (prev + 1 - start) * ps)
                start = pfn
            prev = pfn
        if dirty:
            drop(start * ps, (prev + 1 - start) * ps)

    def _dontneed(self, off: int, length: int) -> None:
        self._mm.madvise(mmap.MADV_DONTNEED, off, length)

    def _punch_hole(self, off: int, length: int) -> None:
        """Free [off, off+length) of the memfd: its pages leave the page cache and every mapping,
        and read back as zeros.  Unlike MADV_DONTNEED or MADV_REMOVE, which answer EINVAL on a
        VM_LOCKED mapping, this works under mlockall: checked on Linux 6.18 with
        mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) — 256 MiB written to an mlocked memfd
        mapping, MADV_DONTNEED and MADV_REMOVE EINVAL, fallocate(PUNCH_HOLE|KEEP_SIZE) 0: RssShmem
        256 MiB -> 0, /proc/meminfo Mlocked down by 256 MiB, the range reads as zeros."""
        if _fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, length) != 0:
            code = ctypes.get_errno()
            raise OSError(
                code,
                f"fallocate(PUNCH_HOLE) of the memfd arena at {off}+{length}: {os.strerror(code)}",
            )

    def drop_free_frames(self) -> None:
        """Give back the memory of every free frame now (after a reset, or before measuring
        the process's RSS), and of the frames prefaulted past the bump pointer; freed frames
        are otherwise dropped in batches (`_release`)."""
        with self._lock:
            self._drop_dirty()
            pf = self._prefault
            if pf is not None:
                # and the frames faulted in ahead of the bump pointer (allocator.prefault)
                lo, hi = pf.retreat(self._top)
                if hi > lo:
                    self._drop(lo * self.page_size, (hi - lo) * self.page_size)
                self._prefault_at = max(self._top, START_FRAME)

    def claim_free_page(self, pfn: int) -> bool:
        """Allocate a specific free frame (compaction's free scanner isolating a free page);
        False when it is not free (any more)."""
        with self._lock:
            if pfn >= self._top or self._state[pfn] != _FREE:
                return False
            self._dirty.discard(pfn)
            self._state[pfn] = _USED
            self._nr_free_below -= 1
            self._nr_used += 1
            self._pgalloc += 1
            return True

    def claim_lowest_free_below(self, limit: int) -> int:
        """Claim the lowest free frame below ``limit``; -1 if none."""
        pos = 0
        state = self._state
        while True:
            pfn = state.find(_FREE_B, pos, min(limit, self._top))
            if pfn < 0:
                return -1
            if self.claim_free_page(pfn):
                return pfn
            pos = pfn + 1

    def is_free(self, pfn: int) -> bool:
        return not (0 <= pfn < self._top) or self._state[pfn] == _FREE

    def first_free_in(self, lo: int, hi: int) -> int:
        """The lowest free frame in ``[lo, hi)``, or -1 (compaction's free scanner)."""
        return self._state.find(_FREE_B, lo, hi)

    def last_movable_in(self, lo: int, hi: int) -> int:
        """The highest movable frame in ``[lo, hi)``, or -1 (compaction's migrate scanner)."""
        return self._movable.rfind(_ONE_B, lo, hi)

    @property
    def arena(self) -> memoryview:
        """A writable memoryview of the whole arena: frame ``pfn`` is bytes
        ``[pfn * page_size, (pfn + 1) * page_size)``. For hot paths that would otherwise slice
        one view per call; the same object for the memory's lifetime."""
        return self._mv

    def view(self, pfn: int) -> memoryview:
        """A writable memoryview of the frame's page_size bytes."""
        if _locks.LOCKDEP.on and (not 0 <= pfn < self._top or self._state[pfn] != _USED):
            raise ValueError(f"view of unallocated frame {pfn}")
        ps = self.page_size
        off = pfn * ps
        if not 0 <= pfn < self.max_pages:
            raise IndexError(f"pfn {pfn} out of range")
        return self._mv[off : off + ps]

    # -------------------------------------------------------------- page flags

    def set_page_flag(self, pfn: int, bit: int) -> None:
        """Atomic SetPageXxx (flags may be updated concurrently by the memory layer)."""
        with self._flags_lock:
            self.flags[pfn] |= bit

    def clear_page_flag(self, pfn: int, bit: int) -> None:
        with self._flags_lock:
            self.flags[pfn] &= ~bit & 0xFF

    def test_page_flag(self, pfn: int, bit: int) -> bool:
        return bool(self.flags[pfn] & bit)

    # -------------------------------------------------------------- movable pages

    def set_movable(self, pfn: int, ops: MovableOps) -> None:
        """__SetPageMovable: the frame may be migrated through ``ops``."""
        self._mops[pfn] = ops
        self.set_page_flag(pfn, PG_MOVABLE)
        self._movable[pfn] = 1

    def clear_movable(self, pfn: int) -> None:
        """__ClearPageMovable."""
        self._movable[pfn] = 0
        self._mops[pfn] = None
        self.clear_page_flag(pfn, PG_MOVABLE)

    def is_movable(self, pfn: int) -> bool:
        return 0 <= pfn < self._top and bool(self._movable[pfn])

    def movable_ops(self, pfn: int) -> MovableOps | None:
        """The owner's callbacks a frame was registered with (``set_movable``), or None."""
        return self._mops[pfn]

    def get_page_unless_zero(self, pfn: int) -> bool:
        """get_page_unless_zero() for a movable, allocated frame."""
        with self._lock:
            if not 0 <= pfn < self._top or self._state[pfn] != _USED or not self._movable[pfn]:
                return False
            self._refs[pfn] = self._refs.get(pfn, 0) + 1
            return True

    def put_page(self, pfn: int) -> None:
        """put_page(): the last reference of a frame its owner freed completes the free."""
        with self._lock:
            n = self._refs[pfn] - 1
            if n:
                self._refs[pfn] = n
                return
            del self._refs[pfn]
            if self._state[pfn] == _ZOMBIE:
                self._state[pfn] = _USED
                self._release(pfn)

    def free_migrated_page(self, pfn: int) -> None:
        """After a successful migrate_page: the old frame goes back to the free pool once the
        migrator's reference is dropped (kernel: the final put_page of the old page)."""
        with self._lock:
            if self._state[pfn] != _USED:
                return  # the owner freed it itself (then it is a zombie until the put_page)
            self._reset_page(pfn)
            self._state[pfn] = _ZOMBIE  # completed by the migrator's put_page

    # -------------------------------------------------------------- migration, compaction
    # The algorithms are allocator.page_migration's; these are the entry points.

    def migrate_pfn(self, pfn: int, *, lower_only: bool = False) -> bool:
        """Migrate one movable frame to the lowest free frame (one below ``pfn`` when
        ``lower_only``). False when the frame is not movable, busy, or the move failed."""
        return migrate_pfn_status(self, pfn, lower_only=lower_only) is MigrateStatus.SUCCESS

    def migrate_pfn_status(self, pfn: int, *, lower_only: bool = False) -> MigrateStatus:
        """``migrate_pfn`` with the reason when it did not migrate."""
        return migrate_pfn_status(self, pfn, lower_only=lower_only)

    def compact(self, *, direct: bool = False) -> CompactResult:
        """Memory compaction (``echo 1 > /proc/sys/vm/compact_memory``): see
        `allocator.page_migration.compact_memory`."""
        return compact_memory(self, direct=direct)

    # -------------------------------------------------------------- vmstat

    def mod_vmstat(self, name: str, delta: int = 1) -> None:
        """mod_node_page_state / count_vm_events: adjust a vmstat item (e.g. pools keep
        ``nr_zspages`` here as zsmalloc keeps NR_ZSPAGES)."""
        with self._lock:
            if name == "nr_zspages":
                self._nr_zspages += delta
            elif name == "pgalloc_normal":
                self._pgalloc += delta
            elif name == "pgfree":
                self._pgfree += delta
            else:
                self._vm[name] = self._vm.get(name, 0) + delta

    def vmstat(self) -> dict[str, int]:
        with self._lock:
            out = {
                "nr_free_pages": self.max_pages - self._nr_used,
                "nr_used_pages": self._nr_used,
                "nr_high_water_pfn": self._top,
                "nr_isolated_movable": sum(1 for p in self._refs if self.flags[p] & PG_ISOLATED),
            }
            out["nr_zspages"] = self._nr_zspages
            out["pgalloc_normal"] = self._pgalloc
            out["pgfree"] = self._pgfree
            for k, v in self._vm.items():
                if k not in out:
                    out[k] = v
            return out

    def vmstat_text(self) -> str:
        """The MNT/proc/vmstat file: "name value" lines."""
        return "".join(f"{k} {v}\n" for k, v in self.vmstat().items())

    def vmstat_reset(self) -> None:
        with self._lock:
            self._pgalloc = self._pgfree = 0
            for k in _VM_EVENTS:
                self._vm[k] = 0

    # -------------------------------------------------------------- misc

    def used_pfns(self) -> Iterator[int]:
        """PFNs currently allocated (a snapshot walk; for tests and debugging)."""
        state = self._state
        for pfn in range(self._top):
            if state[pfn] == _USED:
                yield pfn

    def close(self) -> None:
        """Unmap the arena (fails with BufferError while views of frames are alive)."""
        if self._prefault is not None:
            self._prefault.close()  # no madvise of the arena from here on
        self.words.release()
        self._mv.release()
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return (
            f"<PhysicalMemory {self._nr_used}/{self.max_pages} frames used, "
            f"high_water={self._top}, page_size={self.page_size}, backing={self.backing}>"
        )
