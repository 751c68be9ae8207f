"""The zsmalloc pool (Linux 5.17, pool->migrate_lock design): zs_malloc/zs_free/zs_map_object.

This module owns `Pool` and its per-class runtime state (`SizeClass`: class->lock, the four
fullness lists, the stats), the handle cells, zspage allocation/freeing, deferred (async)
free, map/unmap with the per-thread copy buffer, the fast read/write paths, destroy, and the
debug helpers (`check_invariants`, `zspages`, `dump_zspage`).  Page migration lives in
`migrate.py`, compaction in `compact.py`, the debugfs table in `stats.py`; `Pool` exposes
them as methods.

Locking (reference §4), outermost first:
    page lock -> pool.migrate_lock (rw) -> class.lock -> zspage.lock (rw)
* malloc takes only class.lock (a new zspage is allocated with no lock held);
* free and map take migrate_lock for reading to resolve handle -> obj -> page -> zspage,
  take the inner lock (class.lock / zspage read lock) and then drop migrate_lock;
* migration and compaction take migrate_lock for writing (see migrate.py, compact.py).

Handles: a handle is ``cell_index << 3`` (like the address of an 8-byte slab cell: never 0,
bit 0 clear so ``handle | OBJ_ALLOCATED_TAG`` can be stored in an object header).  The cell
array holds the encoded obj; -1 marks a free cell (obj 0 is PFN 0, object 0).
"""

from __future__ import annotations

import enum
import logging
import threading
from array import array
from typing import Iterator

from . import locks as _locks
from .memory import INDEX_NONE, PG_PRIVATE, OutOfMemory, PhysicalMemory
from .sizeclass import (CLASS_ALMOST_EMPTY, CLASS_ALMOST_FULL, NR_ZS_FULLNESS, NR_ZS_STAT_TYPE,
                        OBJ_ALLOCATED, OBJ_ALLOCATED_TAG, OBJ_TAG_BITS, OBJ_USED,
                        ZS_ALMOST_EMPTY, ZS_ALMOST_FULL, ZS_EMPTY, ZS_FULL, ZS_HANDLE_SIZE,
                        ZSPAGE_MAGIC, ClassTable, build_class_table, get_fullness_group)
from .zspage import (FREEOBJ_MASK, ListHead, OBJ_END_MARKER, Zspage, init_zspage, list_add,
                     list_del_init)

log = logging.getLogger("allocator.zsmalloc")

HANDLE_SHIFT = 3  # handle = cell index * ZS_HANDLE_SIZE
FREE_CELL = -1

_HANDLE_LOW_BITS = (1 << HANDLE_SHIFT) - 1


class MapMode(enum.Enum):
    """enum zs_mapmode: only matters for an object that spans two frames."""

    RW = 0
    RO = 1
    WO = 2


class NestedMappingError(RuntimeError):
    """A thread mapped a second object before unmapping the first (one mapping per CPU)."""


class InvalidHandle(ValueError):
    """A handle that is not live in this pool (0, misaligned, never allocated or freed)."""


# Lock classes (lockdep classes of allocator.locks; ranks are the documented order).
MIGRATE_LOCK_CLASS = _locks.MIGRATE_LOCK
CLASS_LOCK_CLASS = _locks.CLASS_LOCK
ZSPAGE_LOCK_CLASS = _locks.ZSPAGE_LOCK


class SizeClass:
    """struct size_class: the runtime state of one canonical class."""

    __slots__ = ("lock", "fullness_list", "size", "objs_per_zspage", "pages_per_zspage",
                 "index", "stats", "huge", "almost_empty_max", "deferred_freed", "usable")

    def __init__(self, index: int, size: int, pages: int, objs: int) -> None:
        self.lock = _locks.Mutex(CLASS_LOCK_CLASS)
        self.fullness_list = [ListHead() for _ in range(NR_ZS_FULLNESS)]
        self.size = size
        self.objs_per_zspage = objs
        self.pages_per_zspage = pages
        self.index = index
        self.stats = [0] * NR_ZS_STAT_TYPE
        self.huge = pages == 1 and objs == 1
        # the code's 3N/4 threshold (not the comment's N/4)
        self.almost_empty_max = 3 * objs // 4
        # zspages freed by the async worker: 5.17 never decrements CLASS_EMPTY for them (E13)
        self.deferred_freed = 0
        # bytes a mapping of an object of this class exposes
        self.usable = size if self.huge else size - ZS_HANDLE_SIZE

    def __repr__(self) -> str:
        return (f"<SizeClass {self.index} size={self.size} pages={self.pages_per_zspage} "
                f"objs={self.objs_per_zspage}>")


class PoolStats:
    """struct zs_pool_stats."""

    __slots__ = ("pages_compacted",)

    def __init__(self) -> None:
        self.pages_compacted = 0


class _MapArea(threading.local):
    """The per-CPU `mapping_area`, per thread here: an in-use flag, an identity for the E22
    check, and a PAGE_SIZE copy buffer that exists only once this thread has mapped an object
    spanning two frames.

    Why lazy: the zram data path (read_object/write_object) only tests `active`, and mapping
    an object inside one frame copies nothing; yet a thread-local's __init__ runs for every
    new Python thread state, and a FUSE callback may get a fresh one per request — a buffer
    built here was a 4 KiB bytearray per request."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.active = False
        # identifies this thread's area (the threading.local object itself is shared)
        self.owner = object()
        self.bufmv: memoryview | None = None

    def buffer(self) -> memoryview:
        """This thread's copy buffer, allocated on first use."""
        mv = self.bufmv
        if mv is None:
            mv = self.bufmv = memoryview(bytearray(self.page_size))
        return mv


class _Mapping:
    """What map_object returns: maps on __enter__ (zs_map_object), unmaps on __exit__."""

    __slots__ = ("pool", "handle", "mode", "zspage", "pfn", "off", "size", "span", "view", "area")

    def __init__(self, pool: "Pool", handle: int, mode: MapMode) -> None:
        self.pool = pool
        self.handle = handle
        self.mode = mode
        self.zspage = None

    def __enter__(self) -> memoryview:
        return self.pool._map(self)

    def __exit__(self, *exc) -> None:
        self.pool._unmap(self)


class Pool:
    """A zsmalloc pool on simulated physical memory (see the module docstring)."""

    def __init__(self, name: str, memory: PhysicalMemory | None = None, *, chain_size: int = 4,
                 chain_rule: str = "max-used", max_possible_physmem_bits: int = 52) -> None:
        if memory is None:
            memory = PhysicalMemory()
        self.name = name
        self.memory = memory
        page_size = memory.page_size
        self.table: ClassTable = build_class_table(page_size, chain_size, chain_rule,
                                                   max_possible_physmem_bits)
        t = self.table
        self.page_size = page_size
        self.page_shift = t.page_shift
        self.page_mask = page_size - 1
        self.obj_index_bits = t.obj_index_bits
        self.obj_index_mask = t.obj_index_mask
        self.huge_class_size = t.huge_class_size
        self.max_alloc_size = t.max_alloc_size
        if memory.max_pages > (1 << t.pfn_bits):
            raise ValueError("memory has more frames than _PFN_BITS can encode")

        # Direct access to the arena and the struct-page arrays (the hot paths use them).
        self._arena: memoryview = memory.arena
        self._words: memoryview = self._arena.cast("Q")
        self._private = memory.private
        self._index = memory.index
        self._page_type = memory.page_type

        # pool->size_class[]: 255 slots, aliases share the larger canonical class.
        by_index = {c.index: SizeClass(c.index, c.size, c.pages_per_zspage, c.objs_per_zspage)
                    for c in t.classes}
        self.size_class: list[SizeClass] = [by_index[t.slot_to_class[i]]
                                            for i in range(t.nr_size_classes)]
        self.classes: list[SizeClass] = [by_index[c.index] for c in t.classes]  # canonical
        # request size -> class, i.e. size_class[get_size_class_index(size + ZS_HANDLE_SIZE)]
        self._class_for_size: list[SizeClass | None] = [None] + [
            self.size_class[t.get_size_class_index(s + ZS_HANDLE_SIZE)]
            for s in range(1, t.max_alloc_size + 1)]

        self.migrate_lock = _locks.RWLock(MIGRATE_LOCK_CLASS)
        self._pages_lock = _locks.hot_path_lock(_locks.PAGES_ALLOCATED_LOCK)   # atomic_long_t pages_allocated
        self.pages_allocated = 0
        self.stats = PoolStats()

        # handle cache ("zs_handle"): cells[handle >> 3] = obj, cell 0 never used.  A free
        # cell holds FREE_CELL (-1): obj 0 is a real location (PFN 0, object 0).
        self._cells = array("q", [FREE_CELL]) * 1024
        self._free_cells: list[int] = list(range(len(self._cells) - 1, 0, -1))
        self._cells_lock = _locks.hot_path_lock(_locks.HANDLE_CACHE_LOCK)

        self._area = _MapArea(page_size)
        # every live zspage (debug walks, destroy); only touched when zspages come and go
        self._zspages: set[Zspage] = set()
        self._zspages_lock = _locks.hot_path_lock(_locks.ZSPAGE_SET_LOCK)

        # deferred free (pool->free_work)
        self._free_cond = threading.Condition(_locks.hot_path_lock(_locks.FREE_WORK_LOCK))
        self._free_pending = False
        self._free_running = False
        self._free_worker: threading.Thread | None = None
        # test hook: while cleared, the worker does not start a queued run (a workqueue that
        # has not been scheduled yet); see hold_free_work()/release_free_work()
        self._free_gate = threading.Event()
        self._free_gate.set()
        self.destroyed = False
        self.destroy_messages: list[str] = []

    # ------------------------------------------------------------------ properties / stats
    @property
    def total_pages(self) -> int:
        """zs_get_total_pages: pages_allocated, in pages."""
        return self.pages_allocated

    def zs_huge_class_size(self) -> int:
        return self.huge_class_size

    def _add_pages(self, n: int) -> None:
        with self._pages_lock:
            self.pages_allocated += n

    # ------------------------------------------------------------------ handle cells
    def _alloc_handle(self) -> int:
        """cache_alloc_handle (malloc inlines it)."""
        try:
            idx = self._free_cells.pop()
        except IndexError:
            idx = self._grow_cells()
        return idx << HANDLE_SHIFT

    def _grow_cells(self) -> int:
        with self._cells_lock:
            try:
                return self._free_cells.pop()
            except IndexError:
                pass
            old = len(self._cells)
            # Growing reallocates the array; that is safe because nobody holds a buffer
            # export of it and item access is atomic under the GIL.
            self._cells.extend(array("q", [FREE_CELL]) * old)
            self._free_cells.extend(range(2 * old - 1, old, -1))
            return old

    def _free_handle(self, handle: int) -> None:
        """cache_free_handle (free inlines it)."""
        idx = handle >> HANDLE_SHIFT
        self._cells[idx] = FREE_CELL
        self._free_cells.append(idx)

    def handle_to_obj(self, handle: int) -> int:
        """The obj word a live handle's cell holds (debug/test helper)."""
        return self._cells[handle >> HANDLE_SHIFT]

    def _checked_obj(self, handle: int) -> int:
        if handle <= 0 or handle & ((1 << HANDLE_SHIFT) - 1):
            raise InvalidHandle(f"invalid handle {handle!r}")
        try:
            obj = self._cells[handle >> HANDLE_SHIFT]
        except IndexError:
            raise InvalidHandle(f"invalid handle {handle:#x}") from None
        if obj < 0:
            raise InvalidHandle(f"handle {handle:#x} is not allocated")
        return obj

    # ------------------------------------------------------------------ lists and fullness
    @staticmethod
    def _insert_zspage(cls: SizeClass, zspage: Zspage, fg: int) -> None:
        """insert_zspage: head unless inuse is lower than the head's, then second."""
        cls.stats[fg] += 1
        head = cls.fullness_list[fg]
        first = head.next
        if first is not head and zspage.inuse < first.inuse:
            list_add(zspage, first)
        else:
            list_add(zspage, head)

    @staticmethod
    def _remove_zspage(cls: SizeClass, zspage: Zspage, fg: int) -> None:
        assert cls.fullness_list[fg].next is not cls.fullness_list[fg], "remove from empty list"
        list_del_init(zspage)
        cls.stats[fg] -= 1

    @staticmethod
    def _fullness(cls: SizeClass, inuse: int) -> int:
        if inuse == 0:
            return ZS_EMPTY
        if inuse == cls.objs_per_zspage:
            return ZS_FULL
        if inuse <= cls.almost_empty_max:
            return ZS_ALMOST_EMPTY
        return ZS_ALMOST_FULL

    def _fix_fullness_group(self, cls: SizeClass, zspage: Zspage) -> int:
        currfg = zspage.fullness
        inuse = zspage.inuse
        if inuse == 0:
            newfg = ZS_EMPTY
        elif inuse == cls.objs_per_zspage:
            newfg = ZS_FULL
        elif inuse <= cls.almost_empty_max:
            newfg = ZS_ALMOST_EMPTY
        else:
            newfg = ZS_ALMOST_FULL
        if newfg != currfg:
            # remove_zspage(currfg) + insert_zspage(newfg) + set_zspage_mapping, inlined with
            # their list_del_init and list_add: with few objects per zspage (the classes of
            # 2:1 pages) the group changes on nearly every zs_malloc and zs_free.
            prev = zspage.prev
            nxt = zspage.next
            prev.next = nxt
            nxt.prev = prev
            stats = cls.stats
            stats[currfg] -= 1
            stats[newfg] += 1
            head = cls.fullness_list[newfg]
            first = head.next
            if first is not head and inuse < first.inuse:
                head = first                    # second place: list_add after the head entry
            nxt = head.next
            zspage.prev = head
            zspage.next = nxt
            nxt.prev = zspage
            head.next = zspage
            zspage.fullness = newfg
        return newfg

    def _putback_zspage(self, cls: SizeClass, zspage: Zspage) -> int:
        fg = self._fullness(cls, zspage.inuse)
        self._insert_zspage(cls, zspage, fg)
        zspage.class_idx = cls.index
        zspage.fullness = fg
        return fg

    @staticmethod
    def _find_get_zspage(cls: SizeClass) -> Zspage | None:
        """ALMOST_FULL, then ALMOST_EMPTY, then EMPTY (never FULL); the zspage stays listed."""
        lists = cls.fullness_list
        for fg in (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY, ZS_EMPTY):
            head = lists[fg]
            first = head.next
            if first is not head:
                return first
        return None

    # ------------------------------------------------------------------ zspage life cycle
    def _create_page_chain(self, cls: SizeClass, zspage: Zspage, pages: list[int]) -> None:
        """create_page_chain: private = zspage on every subpage, PG_private on the first,
        page->index links the chain.  The kernel zeroes page->index (NULL) first; in this
        port "no next page" is -1 (PFN 0 exists), while a huge page's index is the handle
        field, whose empty value is 0."""
        private = self._private
        index = self._index
        mem = self.memory
        huge = cls.objs_per_zspage == 1 and cls.pages_per_zspage == 1
        prev = -1
        for i, pfn in enumerate(pages):
            private[pfn] = zspage
            index[pfn] = 0 if huge else INDEX_NONE
            if i == 0:
                zspage.first_page = pfn
                mem.set_page_flag(pfn, PG_PRIVATE)
                if huge:
                    zspage.huge = True
            else:
                if mem.flags[pfn] & PG_PRIVATE:
                    mem.clear_page_flag(pfn, PG_PRIVATE)
                index[prev] = pfn
            prev = pfn
        zspage.pages = list(pages)

    def _alloc_zspage(self, cls: SizeClass) -> Zspage:
        """alloc_zspage: a zeroed zspage, its frames, the chain and the freelist."""
        zspage = Zspage(_locks.RWLock(ZSPAGE_LOCK_CLASS))
        pages: list[int] = []
        mem = self.memory
        try:
            for _ in range(cls.pages_per_zspage):
                pages.append(mem.alloc_page())
        except OutOfMemory:
            for pfn in pages:
                mem.free_page(pfn)
            raise
        self._create_page_chain(cls, zspage, pages)
        init_zspage(self._words, self._page_type, cls.size, pages, self.page_shift)
        zspage.freeobj = 0
        with self._zspages_lock:
            self._zspages.add(zspage)
        mem.mod_vmstat("nr_zspages", cls.pages_per_zspage)   # inc_zone_page_state(NR_ZSPAGES)
        return zspage

    def _obj_malloc(self, zspage: Zspage, handle: int) -> int:
        """obj_malloc: pop the freelist head, write the header (or huge page->index)."""
        # E20: for a fresh zspage class_idx is still 0 here; the lookup gives class 0, which
        # is harmless because freeobj == 0 makes the offset 0 for any size.  Kept as in 5.17.
        cls = self.size_class[zspage.class_idx]
        handle |= OBJ_ALLOCATED_TAG
        obj = zspage.freeobj
        offset = obj * cls.size
        pfn = zspage.pages[offset >> self.page_shift]
        wi = (pfn << (self.page_shift - 3)) + ((offset & self.page_mask) >> 3)
        words = self._words
        zspage.freeobj = (words[wi] >> OBJ_TAG_BITS) & FREEOBJ_MASK
        if not zspage.huge:
            words[wi] = handle
        else:
            self._index[zspage.first_page] = handle
        zspage.inuse += 1
        return ((pfn << self.obj_index_bits) | obj) << OBJ_TAG_BITS

    def _obj_free(self, class_size: int, obj: int) -> Zspage:
        """obj_free: push the slot on the zspage freelist (LIFO)."""
        obj >>= OBJ_TAG_BITS
        pfn = obj >> self.obj_index_bits
        idx = obj & self.obj_index_mask
        zspage = self._private[pfn]
        if not zspage.huge:
            # get_freeobj() is an unsigned int, so the shift truncates to 32 bits (matters
            # only for the end marker a FULL zspage's freeobj holds)
            self._words[(pfn << (self.page_shift - 3)) +
                        (((class_size * idx) & self.page_mask) >> 3)] = \
                (zspage.freeobj << OBJ_TAG_BITS) & FREEOBJ_MASK
        else:
            self._index[pfn] = 0
        zspage.freeobj = idx
        zspage.inuse -= 1
        return zspage

    def _set_zspage_movable(self, zspage: Zspage) -> None:
        """SetZsPageMovable: under class->lock, trylock each subpage and register it."""
        mem = self.memory
        for pfn in zspage.pages:
            if not mem.trylock_page(pfn):
                log.warning("SetZsPageMovable: trylock_page(%d) failed", pfn)
                mem.set_movable(pfn, self)
                continue
            mem.set_movable(pfn, self)
            mem.unlock_page(pfn)

    def _trylock_zspage(self, zspage: Zspage) -> bool:
        mem = self.memory
        locked: list[int] = []
        pfn = zspage.first_page
        while pfn != -1:
            if not mem.trylock_page(pfn):
                for p in reversed(locked):
                    mem.unlock_page(p)
                return False
            locked.append(pfn)
            pfn = self._get_next_page(zspage, pfn)
        return True

    def _get_next_page(self, zspage: Zspage, pfn: int) -> int:
        if zspage.huge:
            return -1
        return self._index[pfn]

    def _lock_zspage(self, zspage: Zspage) -> None:
        """lock_zspage with the 2022 race fix (Sultan Alsawaf, "Fix races between
        asynchronous zspage free and page migration"; reference §5 item 1, E19).

        5.17 walked the chain with sleeping lock_page and no zspage lock, so a concurrent
        migration could swap a subpage under it.  The fixed version only *tries* each page
        lock under the zspage read lock (migration needs the write lock to change the
        chain); when a page is busy it drops the zspage lock, waits for that page to be
        unlocked, and retries from where it was."""
        mem = self.memory
        lock = zspage.lock
        while True:
            lock.read_lock()
            pfn = zspage.first_page
            if mem.trylock_page(pfn):
                break
            lock.read_unlock()
            _wait_on_page_locked(mem, pfn)
        curr = pfn
        while True:
            pfn = self._get_next_page(zspage, curr)
            if pfn == -1:
                break
            if mem.trylock_page(pfn):
                curr = pfn
            else:
                lock.read_unlock()
                _wait_on_page_locked(mem, pfn)
                lock.read_lock()
        lock.read_unlock()

    def _reset_page(self, pfn: int) -> None:
        mem = self.memory
        mem.clear_movable(pfn)
        mem.clear_page_flag(pfn, PG_PRIVATE)
        self._private[pfn] = None
        self._index[pfn] = INDEX_NONE

    def _free_zspage_pages(self, cls: SizeClass, zspage: Zspage) -> None:
        """__free_zspage: caller holds class->lock and every page lock of the zspage."""
        assert zspage.inuse == 0 and zspage.fullness == ZS_EMPTY, zspage
        mem = self.memory
        pfn = zspage.first_page
        while pfn != -1:
            nxt = self._get_next_page(zspage, pfn)     # taken before reset_page
            self._reset_page(pfn)
            mem.unlock_page(pfn)
            mem.free_page(pfn)
            pfn = nxt
        zspage.magic = 0
        mem.mod_vmstat("nr_zspages", -cls.pages_per_zspage)
        with self._zspages_lock:
            self._zspages.discard(zspage)
        cls.stats[OBJ_ALLOCATED] -= cls.objs_per_zspage
        self._add_pages(-cls.pages_per_zspage)

    def _free_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """free_zspage: may not sleep (zs_free runs under class->lock), so it only trylocks the
        page locks; on failure the EMPTY zspage stays listed and the async worker frees it."""
        assert zspage.inuse == 0
        assert zspage.on_list()
        if not self._trylock_zspage(zspage):
            self._kick_deferred_free()
            return
        self._remove_zspage(cls, zspage, ZS_EMPTY)
        self._free_zspage_pages(cls, zspage)

    # ------------------------------------------------------------------ deferred free
    def _kick_deferred_free(self) -> None:
        """schedule_work(&pool->free_work): idempotent while the work is pending."""
        with self._free_cond:
            self._free_pending = True
            if self._free_worker is None:
                self._free_worker = threading.Thread(target=self._free_worker_main,
                                                     name=f"zs_free_work:{self.name}",
                                                     daemon=True)
                self._free_worker.start()
            self._free_cond.notify_all()

    def _free_worker_main(self) -> None:
        cond = self._free_cond
        while True:
            with cond:
                while not self._free_pending and not self.destroyed:
                    cond.wait()
                if not self._free_pending and self.destroyed:
                    self._free_worker = None
                    cond.notify_all()
                    return
                self._free_pending = False
                self._free_running = True
            self._free_gate.wait()
            try:
                self._async_free_zspage()
            except BaseException:  # pragma: no cover - a bug; keep the worker alive and loud
                log.exception("async_free_zspage failed")
            finally:
                with cond:
                    self._free_running = False
                    cond.notify_all()

    def _async_free_zspage(self) -> None:
        """async_free_zspage: splice every class's EMPTY list, lock each zspage's pages
        (sleeping, no zsmalloc lock held), then free it under class->lock."""
        free_pages: list[Zspage] = []
        for cls in self.classes:
            with cls.lock:
                head = cls.fullness_list[ZS_EMPTY]
                for zspage in list(head):
                    # list_splice_init: the zspages leave the class list, but 5.17 does not
                    # decrement stats[CLASS_EMPTY] for them (E13; fixed in later kernels).
                    list_del_init(zspage)
                    free_pages.append(zspage)
        for zspage in free_pages:
            self._lock_zspage(zspage)
            cls = self.size_class[zspage.class_idx]
            assert zspage.fullness == ZS_EMPTY
            with cls.lock:
                cls.deferred_freed += 1
                self._free_zspage_pages(cls, zspage)

    def hold_free_work(self) -> None:
        """Debug/test hook: keep queued deferred-free work from running until released."""
        self._free_gate.clear()

    def release_free_work(self) -> None:
        self._free_gate.set()

    @property
    def free_work_pending(self) -> bool:
        return self._free_pending or self._free_running

    def flush_free_work(self, timeout: float | None = None) -> bool:
        """flush_work(&pool->free_work): wait until no deferred free is pending or running."""
        with self._free_cond:
            return self._free_cond.wait_for(
                lambda: not self._free_pending and not self._free_running, timeout)

    # ------------------------------------------------------------------ malloc / free
    def malloc(self, size: int) -> int:
        """zs_malloc: returns a handle (never 0).  ValueError for size 0 or > PAGE_SIZE
        (the kernel returns 0), OutOfMemory when no frame is left."""
        try:
            cls = self._class_for_size[size]
        except (IndexError, TypeError):
            cls = None
        if cls is None or size <= 0:
            raise ValueError(f"zs_malloc: bad size {size!r} (1..{self.max_alloc_size})")
        try:                                    # cache_alloc_handle
            handle = self._free_cells.pop() << HANDLE_SHIFT
        except IndexError:
            handle = self._grow_cells() << HANDLE_SHIFT
        lock = cls.lock
        lock.acquire()
        # find_get_zspage (inlined; see _find_get_zspage): ALMOST_FULL, ALMOST_EMPTY, EMPTY
        lists = cls.fullness_list
        zspage = None
        for fg in (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY, ZS_EMPTY):
            head = lists[fg]
            first = head.next
            if first is not head:
                zspage = first
                break
        if zspage is not None:
            try:   # try blocks cost nothing in 3.11; a bug must not leave class->lock held
                # obj_malloc (see _obj_malloc), inlined for the common case: a listed zspage
                # of this class, so cls is the zspage's class.
                idx = zspage.freeobj
                offset = idx * cls.size
                pfn = zspage.pages[offset >> self.page_shift]
                wi = (pfn << (self.page_shift - 3)) + ((offset & self.page_mask) >> 3)
                words = self._words
                zspage.freeobj = (words[wi] >> OBJ_TAG_BITS) & FREEOBJ_MASK
                if not zspage.huge:
                    words[wi] = handle | OBJ_ALLOCATED_TAG
                else:
                    self._index[zspage.first_page] = handle | OBJ_ALLOCATED_TAG
                zspage.inuse += 1
                obj = ((pfn << self.obj_index_bits) | idx) << OBJ_TAG_BITS
                self._fix_fullness_group(cls, zspage)
                self._cells[handle >> HANDLE_SHIFT] = obj
                cls.stats[OBJ_USED] += 1
            finally:
                lock.release()
            return handle
        lock.release()

        try:
            zspage = self._alloc_zspage(cls)       # no lock held, like the kernel
        except BaseException:
            self._free_handle(handle)
            raise
        lock.acquire()
        try:
            obj = self._obj_malloc(zspage, handle)
            newfg = self._fullness(cls, zspage.inuse)
            self._insert_zspage(cls, zspage, newfg)
            zspage.class_idx = cls.index        # set_zspage_mapping
            zspage.fullness = newfg
            self._cells[handle >> HANDLE_SHIFT] = obj
            self._add_pages(cls.pages_per_zspage)
            cls.stats[OBJ_ALLOCATED] += cls.objs_per_zspage
            cls.stats[OBJ_USED] += 1
            self._set_zspage_movable(zspage)
        finally:
            lock.release()
        return handle

    def free(self, handle: int) -> None:
        """zs_free.  Raises InvalidHandle for a handle that is not live (the kernel would
        corrupt memory); 0 is a no-op like the kernel's `if (!handle) return`."""
        if handle == 0:
            return
        ml = self.migrate_lock
        ml.read_lock()
        # _checked_obj, inlined for the common case (every overwrite frees the old object)
        try:
            obj = self._cells[handle >> HANDLE_SHIFT]
        except (IndexError, TypeError):
            obj = -1
        if obj < 0 or handle < 0 or handle & _HANDLE_LOW_BITS:
            try:
                obj = self._checked_obj(handle)
            except BaseException:
                ml.read_unlock()
                raise
        obj >>= OBJ_TAG_BITS
        pfn = obj >> self.obj_index_bits
        zspage = self._private[pfn]
        cls = self.size_class[zspage.class_idx]
        lock = cls.lock
        lock.acquire()
        ml.read_unlock()
        try:
            # obj_free(class->size, obj), inlined: push the slot on the freelist (LIFO).
            idx = obj & self.obj_index_mask
            if not zspage.huge:
                # get_freeobj() is an unsigned int: the shift truncates to 32 bits (this
                # matters only for the end marker that a FULL zspage's freeobj holds)
                self._words[(pfn << (self.page_shift - 3)) +
                            (((cls.size * idx) & self.page_mask) >> 3)] = \
                    (zspage.freeobj << OBJ_TAG_BITS) & FREEOBJ_MASK
            else:
                self._index[pfn] = 0
            zspage.freeobj = idx
            zspage.inuse -= 1
            cls.stats[OBJ_USED] -= 1
            if self._fix_fullness_group(cls, zspage) == ZS_EMPTY:
                self._free_zspage(cls, zspage)
        finally:
            lock.release()
        # cache_free_handle, after class->lock is dropped
        cidx = handle >> HANDLE_SHIFT
        self._cells[cidx] = FREE_CELL
        self._free_cells.append(cidx)

    # ------------------------------------------------------------------ map / unmap
    def map_object(self, handle: int, mode: MapMode = MapMode.RW) -> _Mapping:
        """zs_map_object as a context manager yielding a writable memoryview.

        The view covers the object's usable bytes (class size - 8 past the header for
        non-huge objects, the whole page for a huge one).  Objects inside one frame are
        mapped directly (the mode has no effect); an object spanning two frames goes through
        this thread's copy buffer with the RO/WO/RW rules.  The zspage read lock is held
        until exit; a second mapping in the same thread raises NestedMappingError."""
        return _Mapping(self, handle, mode)

    def _resolve_and_pin(self, handle: int) -> tuple[int, Zspage]:
        """read(migrate_lock) -> handle_to_obj -> zspage -> read(zspage->lock) -> drop
        migrate_lock.  Returns (obj, zspage) with the zspage read lock held."""
        ml = self.migrate_lock
        ml.read_lock()
        try:
            obj = self._checked_obj(handle)
            zspage = self._private[obj >> (OBJ_TAG_BITS + self.obj_index_bits)]
            zspage.lock.read_lock()
        finally:
            ml.read_unlock()
        return obj, zspage

    def _map(self, m: _Mapping) -> memoryview:
        area = self._area
        if area.active:
            raise NestedMappingError("only one object can be mapped per thread at a time")
        # _resolve_and_pin, inlined: read(migrate_lock) -> handle -> obj -> page -> zspage ->
        # read(zspage->lock) -> read_unlock(migrate_lock)
        ml = self.migrate_lock
        ml.read_lock()
        try:
            obj = self._checked_obj(m.handle)
            obj >>= OBJ_TAG_BITS
            pfn = obj >> self.obj_index_bits
            zspage = self._private[pfn]
            zspage.lock.read_lock()
        finally:
            ml.read_unlock()
        try:
            cls = self.size_class[zspage.class_idx]
            size = cls.size
            off = (size * (obj & self.obj_index_mask)) & self.page_mask
            base = pfn << self.page_shift
            page_size = self.page_size
            if off + size <= page_size:
                # kmap_atomic: a direct view, the mode makes no difference
                m.span = False
                start = base + off
                if not zspage.huge:
                    start += ZS_HANDLE_SIZE
                view = self._arena[start:base + off + size]
            else:
                # __zs_map_object: copy both parts (header included) unless WO
                m.span = True
                nxt = self._index[pfn]
                if nxt == INDEX_NONE:
                    raise AssertionError(f"object at pfn {pfn} spans past the last subpage")
                buf = area.buffer()
                if m.mode is not MapMode.WO:
                    s0 = page_size - off
                    arena = self._arena
                    buf[0:s0] = arena[base + off:base + page_size]
                    nb = nxt << self.page_shift
                    buf[s0:size] = arena[nb:nb + size - s0]
                view = buf[ZS_HANDLE_SIZE:size]
        except BaseException:
            zspage.lock.read_unlock()
            raise
        m.zspage = zspage
        m.pfn = pfn
        m.off = off
        m.size = size
        m.view = view
        m.area = area.owner       # identifies this thread's area (the local object is shared)
        area.active = True
        return view

    def _unmap(self, m: _Mapping) -> None:
        zspage = m.zspage
        if zspage is None:
            return
        area = self._area
        if area.owner is not m.area:
            # E22: zs_unmap_object must run where the map ran (per-CPU area + local_lock)
            raise NestedMappingError("object unmapped by a thread that did not map it")
        m.zspage = None
        try:
            m.view.release()        # a stale view must not reach the page after unmap
        except BufferError:
            pass                    # something still exports it; nothing else to do
        try:
            if m.span and m.mode is not MapMode.RO:
                # __zs_unmap_object: copy back size-8 bytes starting at off+8; the 8 header
                # bytes are never written back.
                off = m.off + ZS_HANDLE_SIZE
                size = m.size - ZS_HANDLE_SIZE
                s0 = self.page_size - off
                base = m.pfn << self.page_shift
                arena = self._arena
                buf = area.buffer()     # the one _map used: same thread (checked above)
                arena[base + off:base + off + s0] = buf[ZS_HANDLE_SIZE:ZS_HANDLE_SIZE + s0]
                nb = self._index[m.pfn] << self.page_shift
                arena[nb:nb + size - s0] = buf[ZS_HANDLE_SIZE + s0:ZS_HANDLE_SIZE + size]
        finally:
            area.active = False
            zspage.lock.read_unlock()

    def read_object(self, handle: int, length: int) -> bytes:
        """Fast path for map(RO) + copy `length` bytes + unmap (same locking as map/unmap)."""
        if self._area.active:
            raise NestedMappingError("read_object while this thread has an object mapped")
        ml = self.migrate_lock
        ml.read_lock()
        try:
            # _checked_obj, inlined (the zram read path calls this once per page)
            try:
                obj = self._cells[handle >> HANDLE_SHIFT]
            except (IndexError, TypeError):
                obj = -1
            if obj < 0 or handle <= 0 or handle & _HANDLE_LOW_BITS:
                obj = self._checked_obj(handle)         # raises the precise InvalidHandle
            pfn = obj >> (OBJ_TAG_BITS + self.obj_index_bits)
            zspage = self._private[pfn]
            zlock = zspage.lock
            zlock.read_lock()
        finally:
            ml.read_unlock()
        try:
            cls = self.size_class[zspage.class_idx]
            if length > cls.usable or length < 0:
                raise ValueError(f"read of {length} bytes from a {cls.usable}-byte object")
            off = (cls.size * ((obj >> OBJ_TAG_BITS) & self.obj_index_mask)) & self.page_mask
            if not zspage.huge:
                off += ZS_HANDLE_SIZE
            start = (pfn << self.page_shift) + off
            s0 = self.page_size - off
            if length <= s0:
                return self._arena[start:start + length].tobytes()
            nb = self._index[pfn] << self.page_shift
            arena = self._arena
            return arena[start:start + s0].tobytes() + arena[nb:nb + length - s0].tobytes()
        finally:
            zlock.read_unlock()

    def write_object(self, handle: int, data) -> None:
        """Fast path for map(WO) + copy `data` + unmap (same locking as map/unmap).  Bytes
        past len(data) keep their old contents instead of receiving stale copy-buffer bytes."""
        if self._area.active:
            raise NestedMappingError("write_object while this thread has an object mapped")
        ml = self.migrate_lock
        ml.read_lock()
        try:
            # _checked_obj, inlined as in read_object (once per stored page)
            try:
                obj = self._cells[handle >> HANDLE_SHIFT]
            except (IndexError, TypeError):
                obj = -1
            if obj < 0 or handle <= 0 or handle & _HANDLE_LOW_BITS:
                obj = self._checked_obj(handle)         # raises the precise InvalidHandle
            pfn = obj >> (OBJ_TAG_BITS + self.obj_index_bits)
            zspage = self._private[pfn]
            zlock = zspage.lock
            zlock.read_lock()
        finally:
            ml.read_unlock()
        try:
            cls = self.size_class[zspage.class_idx]
            length = len(data)
            if length > cls.usable:
                raise ValueError(f"write of {length} bytes into a {cls.usable}-byte object")
            off = (cls.size * ((obj >> OBJ_TAG_BITS) & self.obj_index_mask)) & self.page_mask
            if not zspage.huge:
                off += ZS_HANDLE_SIZE
            start = (pfn << self.page_shift) + off
            s0 = self.page_size - off
            if length <= s0:
                self._arena[start:start + length] = data
                return
            nb = self._index[pfn] << self.page_shift
            mv = memoryview(data)
            self._arena[start:start + s0] = mv[:s0]
            self._arena[nb:nb + length - s0] = mv[s0:]
        finally:
            zlock.read_unlock()

    # ------------------------------------------------------------------ migration / compaction
    def isolate_page(self, pfn: int) -> bool:
        from .migrate import zs_page_isolate
        return zs_page_isolate(self, pfn)

    def migrate_page(self, old_pfn: int, new_pfn: int) -> bool:
        from .migrate import zs_page_migrate
        return zs_page_migrate(self, old_pfn, new_pfn)

    def putback_page(self, pfn: int) -> None:
        from .migrate import zs_page_putback
        zs_page_putback(self, pfn)

    def compact(self) -> int:
        from .compact import zs_compact
        return zs_compact(self)

    def freeable_pages(self) -> int:
        from .compact import zs_shrinker_count
        return zs_shrinker_count(self)

    def shrink(self) -> int:
        """zs_shrinker_scan: pages freed, or SHRINK_STOP (-1) when nothing was freed."""
        freed = self.compact()
        return freed if freed else SHRINK_STOP

    def classes_table(self) -> str:
        from .stats import classes_table
        return classes_table(self)

    # ------------------------------------------------------------------ destroy
    def destroy(self) -> None:
        """zs_destroy_pool: flush the deferred free, then report (and leak, as 5.17 does)
        every non-empty fullness list with "Freeing non-empty class..." lines."""
        if self.destroyed:
            return
        self.flush_free_work()
        with self._free_cond:
            self.destroyed = True
            self._free_cond.notify_all()
        worker = self._free_worker
        if worker is not None:
            worker.join()
        for cls in self.classes:
            for fg in range(NR_ZS_FULLNESS):
                if not cls.fullness_list[fg].empty():
                    msg = (f"Freeing non-empty class with size {cls.size}b, "
                           f"fullness group {fg}")
                    log.info("%s", msg)
                    self.destroy_messages.append(msg)
        # Our 64-bit cast of the arena pins the mmap; drop it so PhysicalMemory.close() works.
        # (The leaked zspages of a non-empty pool stay allocated in memory, as in 5.17.)
        self._words.release()

    # ------------------------------------------------------------------ debug helpers
    def zspages(self) -> list[Zspage]:
        """Every live zspage (on a list, isolated in compaction, or awaiting async free)."""
        with self._zspages_lock:
            return list(self._zspages)

    def class_of(self, zspage: Zspage) -> SizeClass:
        return self.size_class[zspage.class_idx]

    def obj_location(self, handle: int) -> tuple[int, int, int]:
        """(pfn, obj_idx, offset in that frame) of a live handle's object."""
        obj = self._checked_obj(handle) >> OBJ_TAG_BITS
        pfn = obj >> self.obj_index_bits
        idx = obj & self.obj_index_mask
        zspage = self._private[pfn]
        cls = self.size_class[zspage.class_idx]
        return pfn, idx, (cls.size * idx) & self.page_mask

    def read_word(self, pfn: int, offset: int) -> int:
        return self._words[(pfn << (self.page_shift - 3)) + (offset >> 3)]

    def zspage_objects(self, zspage: Zspage) -> list[tuple[int, int, int, int]]:
        """Every object start (phantom included) as (obj_idx, pfn, offset, first word or
        huge page->index)."""
        cls = self.size_class[zspage.class_idx]
        out = []
        idx = 0
        page_size = self.page_size
        for k, pfn in enumerate(zspage.pages):
            off = self._page_type[pfn]
            while off < page_size:
                word = self._index[pfn] if zspage.huge else self.read_word(pfn, off)
                out.append((idx, pfn, off, word))
                idx += 1
                off += cls.size
        return out

    def freelist(self, zspage: Zspage) -> list[int]:
        """The free object indices, following the links from freeobj.

        The list is walked for exactly objs_per_zspage - inuse entries: its tail is not
        always the end marker, because a slot freed while the zspage was FULL links to the
        truncated marker (freeobj is an unsigned int: 0xFFFFFFFF << 1 -> 0xFFFFFFFE)."""
        cls = self.size_class[zspage.class_idx]
        if zspage.huge:
            return [0] if zspage.inuse == 0 else []
        out: list[int] = []
        idx = zspage.freeobj
        for _ in range(cls.objs_per_zspage - zspage.inuse):
            if idx >= cls.objs_per_zspage:
                raise AssertionError(f"freelist reaches index {idx} in {zspage} after {out}")
            out.append(idx)
            offset = idx * cls.size
            word = self.read_word(zspage.pages[offset >> self.page_shift],
                                  offset & self.page_mask)
            if word & OBJ_ALLOCATED_TAG:
                raise AssertionError(f"freelist reaches allocated object {idx} in {zspage}")
            idx = word >> OBJ_TAG_BITS
        return out

    def dump_zspage(self, zspage: Zspage) -> str:
        lines = [repr(zspage)]
        for idx, pfn, off, word in self.zspage_objects(zspage):
            state = (f"handle {word & ~OBJ_ALLOCATED_TAG:#x}" if word & OBJ_ALLOCATED_TAG
                     else ("end" if word == OBJ_END_MARKER else f"next {word >> 1}"))
            lines.append(f"  obj {idx:4d} pfn {pfn} off {off:5d}: {state}")
        return "\n".join(lines)

    def check_invariants(self) -> None:
        """E11/E12/E24 on a quiescent pool; raises AssertionError with a message."""
        from .stats import check_invariants
        check_invariants(self)


SHRINK_STOP = -1

# --------------------------------------------------------------------------------------------
# memory adapters (the pool needs a few things allocator.memory offers only indirectly)


def _wait_on_page_locked(mem: PhysicalMemory, pfn: int) -> None:
    """wait_on_page_locked: block until the page lock is free, without keeping it."""
    mem.wait_on_page_locked(pfn)
