"""The zsmalloc pool (Linux 5.17, pool->migrate_lock design): zs_malloc/zs_free/zs_map_object.

This module owns `Pool`: the pool's state (size classes, handle cache, migrate_lock, the
deferred-free worker pool->free_work), the public entry points, and the hot paths: zs_malloc,
zs_free, map/unmap with the per-thread copy buffer, and the read/write fast paths zram uses.

The hot paths carry hand-inlined copies of lower functions, each marked where it stands.  The
readable reference of each is the plain function in the lower module, and
``tests/test_pool_reference.py`` checks that copy and reference agree:

    copy in this module                      reference
    find_get_zspage in malloc                fullness.find_get_zspage
    obj_malloc in malloc                     zspage_ops.obj_malloc
    _fix_fullness_group (malloc, free)       fullness.fix_fullness_group
    obj_free in free                         zspage_ops.obj_free
    handle check in free/read/write_object   handles.HandleCache.checked_obj
    resolve-and-pin in map/read/write        zspage_ops.resolve_and_pin
    cache_alloc_handle in malloc             handles.HandleCache.alloc

Everything else lives below and is imported downward: list operations in `fullness`, zspage
primitives in `zspage_ops`, handles in `handles`, compaction in `compact`, page migration in
`migrate`, debugfs and debug walks in `stats`; nothing imports this module except for type
checking.

Locking (docs/zsmalloc.md, "Locking in 5.17"), outermost first:
    page lock -> pool.migrate_lock (rw) -> class.lock -> zspage.lock (rw)
* malloc takes only class.lock (a new zspage is allocated with no lock held);
* free and map take migrate_lock for reading to resolve handle -> obj -> page -> zspage,
  take the inner lock (class.lock / zspage read lock) and then drop migrate_lock;
* migration and compaction take migrate_lock for writing (see migrate.py, compact.py).
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import cast

from mypy_extensions import mypyc_attr

from . import locks as _locks
from . import stats as _stats
from .compact import zs_compact, zs_shrinker_count
from .fullness import SizeClass, putback_zspage
from .handles import FREE_CELL, HANDLE_LOW_BITS, HANDLE_SHIFT, HandleCache, InvalidHandle
from .map_area import MapArea
from .memory import INDEX_NONE, PhysicalMemory
from .migrate import zs_page_isolate, zs_page_migrate, zs_page_putback
from .sizeclass import (
    NR_ZS_FULLNESS,
    OBJ_ALLOCATED,
    OBJ_ALLOCATED_TAG,
    OBJ_TAG_BITS,
    OBJ_USED,
    ZS_ALMOST_EMPTY,
    ZS_ALMOST_FULL,
    ZS_EMPTY,
    ZS_FULL,
    ZS_HANDLE_SIZE,
    ClassTable,
    build_class_table,
)
from .zspage import FREEOBJ_MASK, Zspage
from .zspage_ops import (
    ZspageCache,
    alloc_zspage,
    async_free_zspage,
    free_zspage,
    obj_malloc,
    set_zspage_movable,
)

__all__ = [
    "Pool",
    "SizeClass",
    "MapMode",
    "InvalidHandle",
    "NestedMappingError",
    "SHRINK_STOP",
]

log = logging.getLogger("allocator.zsmalloc")

SHRINK_STOP = -1


class MapMode(enum.Enum):
    """enum zs_mapmode: only matters for an object that spans two frames."""

    RW = 0
    RO = 1
    WO = 2


# A Python class even when compiled: mypyc's native classes cannot derive from RuntimeError.
@mypyc_attr(native_class=False)
class NestedMappingError(RuntimeError):
    """A thread mapped a second object before unmapping the first (one mapping per CPU)."""


class _Mapping:
    """What map_object returns: maps on __enter__ (zs_map_object), unmaps on __exit__."""

    __slots__ = ("pool", "handle", "mode", "zspage", "pfn", "off", "size", "span", "view", "area")
    # set by Pool._map while mapped (zspage is None when not)
    pfn: int
    off: int
    size: int
    span: bool
    view: memoryview
    area: object

    def __init__(self, pool: Pool, handle: int, mode: MapMode) -> None:
        self.pool = pool
        self.handle = handle
        self.mode = mode
        self.zspage: Zspage | None = None

    def __enter__(self) -> memoryview:
        return self.pool._map(self)

    def __exit__(self, *exc) -> None:
        self.pool._unmap(self)


def _fix_fullness_group(cls: SizeClass, zspage: Zspage) -> int:
    """fix_fullness_group for zs_malloc and zs_free: the copy of fullness.fix_fullness_group
    with get_fullness_group, remove_zspage, insert_zspage and set_zspage_mapping inlined
    (with few objects per zspage, the classes of 2:1 pages, the group changes on nearly every
    zs_malloc and zs_free)."""
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
        # remove_zspage(currfg) + insert_zspage(newfg), with their list_del_init and list_add
        prev = zspage.prev
        nxt = zspage.next
        prev.next = nxt
        nxt.prev = prev
        stats = cls.stats
        stats[currfg] -= 1
        stats[newfg] += 1
        head = cls.fullness_list[newfg]
        first = head.next
        if first is not head and inuse < cast(Zspage, first).inuse:
            head = first  # second place: list_add after the head entry
        nxt = head.next
        zspage.prev = head
        zspage.next = nxt
        nxt.prev = zspage
        head.next = zspage
        zspage.fullness = newfg
    return newfg


class Pool:
    """A zsmalloc pool on simulated physical memory (see the module docstring)."""

    def __init__(
        self,
        name: str,
        memory: PhysicalMemory | None = None,
        *,
        chain_size: int = 4,
        chain_rule: str = "max-used",
        max_possible_physmem_bits: int = 52,
    ) -> None:
        if memory is None:
            memory = PhysicalMemory()
        self.name = name
        self.memory = memory
        page_size = memory.page_size
        self.table: ClassTable = build_class_table(
            page_size, chain_size, chain_rule, max_possible_physmem_bits
        )
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

        # The arena and the struct page arrays, held here for the hot paths (the same objects
        # as memory.arena, .words, .private, .index; the lower modules go through memory).
        self._arena: memoryview = memory.arena
        self._words: memoryview = memory.words
        self._private = memory.private
        self._index = memory.index

        # pool->size_class[]: 255 slots, aliases share the larger canonical class.
        by_index = {
            c.index: SizeClass(c.index, c.size, c.pages_per_zspage, c.objs_per_zspage)
            for c in t.classes
        }
        self.size_class: list[SizeClass] = [
            by_index[t.slot_to_class[i]] for i in range(t.nr_size_classes)
        ]
        self.classes: list[SizeClass] = [by_index[c.index] for c in t.classes]  # canonical
        # request size -> class, i.e. size_class[get_size_class_index(size + ZS_HANDLE_SIZE)]
        self._class_for_size: list[SizeClass | None] = [None] + [
            self.size_class[t.get_size_class_index(s + ZS_HANDLE_SIZE)]
            for s in range(1, t.max_alloc_size + 1)
        ]

        self.migrate_lock = _locks.RWLock(_locks.MIGRATE_LOCK)
        self._pages_lock = _locks.hot_path_lock(
            _locks.PAGES_ALLOCATED_LOCK
        )  # atomic_long_t pages_allocated
        self.pages_allocated = 0
        self.stats = _stats.PoolStats(self._pages_lock)

        # The handle cache ("zs_handle", see handles.py); its cell array and free-cell stack
        # are held here too, for malloc/free/read/write (both are only grown in place).
        self.handles = HandleCache()
        self._cells = self.handles.cells
        self._free_cells = self.handles.free_cells
        self._grow_cells = self.handles.grow
        self._checked_obj = self.handles.checked_obj

        self._area = MapArea(page_size)
        # one token per object mapped now, by any thread: tested before the area (a
        # thread-local read, ~60 ns).  append/pop are single list operations (safe under the
        # GIL and in free-threaded CPython, as PlainLock's token); a set of thread idents cost
        # a get_ident call and a bound method each way
        self._mappings: list[None] = []
        # every live zspage (debug walks, destroy); only touched when zspages come and go
        self._zspages: set[Zspage] = set()
        self.zspage_cache = ZspageCache()  # the "zspage" kmem_cache: freed structs for reuse
        self._zspages_lock = _locks.hot_path_lock(_locks.ZSPAGE_SET_LOCK)

        # deferred free (pool->free_work); Condition takes any lock with acquire/release (a
        # lockdep Mutex too), typeshed names only threading's own
        self._free_cond = threading.Condition(_locks.hot_path_lock(_locks.FREE_WORK_LOCK))  # type: ignore[arg-type]
        self._free_pending = False
        self._free_running = False
        self._free_worker: threading.Thread | None = None
        # test hook: while cleared, the worker does not start a queued run (a workqueue that
        # has not been scheduled yet); see hold_free_work()/release_free_work()
        self._free_gate = threading.Event()
        self._free_gate.set()
        self.destroyed = False
        self.destroy_messages: list[str] = []

    # ------------------------------------------------------------------ accounting
    @property
    def total_pages(self) -> int:
        """zs_get_total_pages: pages_allocated, in pages."""
        return self.pages_allocated

    def add_pages(self, n: int) -> None:
        """atomic_long_add(n, &pool->pages_allocated)."""
        with self._pages_lock:
            self.pages_allocated += n

    def track_zspage(self, zspage: Zspage) -> None:
        """Remember a new zspage (alloc_zspage) for zspages() and destroy."""
        with self._zspages_lock:
            self._zspages.add(zspage)

    def untrack_zspage(self, zspage: Zspage) -> None:
        """Forget a freed zspage (__free_zspage)."""
        with self._zspages_lock:
            self._zspages.discard(zspage)

    def zspages(self) -> list[Zspage]:
        """Every live zspage (on a list, isolated in compaction, or awaiting async free)."""
        with self._zspages_lock:
            return list(self._zspages)

    # ------------------------------------------------------------------ deferred free
    def kick_deferred_free(self) -> None:
        """schedule_work(&pool->free_work): idempotent while the work is pending."""
        with self._free_cond:
            self._free_pending = True
            if self._free_worker is None:
                self._free_worker = threading.Thread(
                    target=self._free_worker_main, name=f"zs_free_work:{self.name}", daemon=True
                )
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
                async_free_zspage(self)
            except BaseException:  # pragma: no cover - a bug; keep the worker alive and loud
                log.exception("async_free_zspage failed")
            finally:
                with cond:
                    self._free_running = False
                    cond.notify_all()

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
                lambda: not self._free_pending and not self._free_running, timeout
            )

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
        try:  # cache_alloc_handle (HandleCache.alloc)
            handle = self._free_cells.pop() << HANDLE_SHIFT
        except IndexError:
            handle = self._grow_cells() << HANDLE_SHIFT
        lock = cls.lock
        lock.acquire()
        # find_get_zspage, inlined (fullness.find_get_zspage): ALMOST_FULL, ALMOST_EMPTY, EMPTY
        lists = cls.fullness_list
        # typed: a list link is a ListHead (a sentinel or a Zspage), and compiled code reaches
        # the fields of a Zspage-typed local directly (docs/performance.md, "Compiled build")
        zspage: Zspage | None = None
        for fg in (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY, ZS_EMPTY):
            head = lists[fg]
            first = head.next
            if first is not head:
                zspage = cast(Zspage, first)  # a node that is not the head is a zspage
                break
        if zspage is not None:
            try:  # try blocks cost nothing in 3.11; a bug must not leave class->lock held
                # obj_malloc, inlined (zspage_ops.obj_malloc) for the common case: a listed
                # zspage of this class, so cls is the zspage's class.
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
                _fix_fullness_group(cls, zspage)
                self._cells[handle >> HANDLE_SHIFT] = obj  # record_obj
                cls.stats[OBJ_USED] += 1
            finally:
                lock.release()
            return handle
        lock.release()
        return self._malloc_new_zspage(cls, handle)

    def _malloc_new_zspage(self, cls: SizeClass, handle: int) -> int:
        """The rest of zs_malloc when the class has no zspage with a free slot: allocate one
        with no lock held, then take the object from it under class->lock."""
        try:
            zspage = alloc_zspage(self, cls)
        except BaseException:
            self.handles.free(handle)
            raise
        with cls.lock:
            obj = obj_malloc(self, zspage, handle)
            # get_fullness_group + insert_zspage + set_zspage_mapping
            putback_zspage(cls, zspage)
            self._cells[handle >> HANDLE_SHIFT] = obj  # record_obj
            self.add_pages(cls.pages_per_zspage)
            cls.stats[OBJ_ALLOCATED] += cls.objs_per_zspage
            cls.stats[OBJ_USED] += 1
            set_zspage_movable(self, zspage)
        return handle

    def free(self, handle: int) -> None:
        """zs_free.  Raises InvalidHandle for a handle that is not live (the kernel would
        corrupt memory); 0 is a no-op like the kernel's `if (!handle) return`."""
        if handle == 0:
            return
        ml = self.migrate_lock
        ml.read_lock()
        # the handle check, inlined (HandleCache.checked_obj) for the common case: every
        # overwrite frees the old object
        try:
            obj = self._cells[handle >> HANDLE_SHIFT]
        except (IndexError, TypeError):
            obj = -1
        if obj < 0 or handle < 0 or handle & HANDLE_LOW_BITS:
            try:
                obj = self.handles.checked_obj(handle)
            except BaseException:
                ml.read_unlock()
                raise
        obj >>= OBJ_TAG_BITS
        pfn = obj >> self.obj_index_bits
        zspage: Zspage = self._private[pfn]
        cls = self.size_class[zspage.class_idx]
        lock = cls.lock
        lock.acquire()
        ml.read_unlock()
        try:
            # obj_free(class->size, obj), inlined (zspage_ops.obj_free): push the slot on
            # the freelist (LIFO).
            idx = obj & self.obj_index_mask
            if not zspage.huge:
                # get_freeobj() is an unsigned int: the shift truncates to 32 bits (this
                # matters only for the end marker that a FULL zspage's freeobj holds)
                self._words[
                    (pfn << (self.page_shift - 3)) + (((cls.size * idx) & self.page_mask) >> 3)
                ] = (zspage.freeobj << OBJ_TAG_BITS) & FREEOBJ_MASK
            else:
                self._index[pfn] = 0
            zspage.freeobj = idx
            zspage.inuse -= 1
            cls.stats[OBJ_USED] -= 1
            if _fix_fullness_group(cls, zspage) == ZS_EMPTY:
                free_zspage(self, cls, zspage)
        finally:
            lock.release()
        # cache_free_handle (HandleCache.free), after class->lock is dropped
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

    def _map(self, m: _Mapping) -> memoryview:
        area = self._area
        if area.active:
            raise NestedMappingError("only one object can be mapped per thread at a time")
        # resolve-and-pin, inlined (zspage_ops.resolve_and_pin): read(migrate_lock) -> handle
        # -> obj -> page -> zspage -> read(zspage->lock) -> read_unlock(migrate_lock)
        ml = self.migrate_lock
        ml.read_lock()
        try:
            obj = self._checked_obj(m.handle)
            obj >>= OBJ_TAG_BITS
            pfn = obj >> self.obj_index_bits
            zspage: Zspage = self._private[pfn]
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
                view = self._arena[start : base + off + size]
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
                    buf[0:s0] = arena[base + off : base + page_size]
                    nb = nxt << self.page_shift
                    buf[s0:size] = arena[nb : nb + size - s0]
                view = buf[ZS_HANDLE_SIZE:size]
        except BaseException:
            zspage.lock.read_unlock()
            raise
        m.zspage = zspage
        m.pfn = pfn
        m.off = off
        m.size = size
        m.view = view
        m.area = area.owner  # identifies this thread's area (the local object is shared)
        area.active = True
        self._mappings.append(None)
        return view

    def _unmap(self, m: _Mapping) -> None:
        zspage = m.zspage
        if zspage is None:
            return
        area = self._area
        if area.owner is not m.area:
            # zs_unmap_object must run where the map ran (per-CPU area + local_lock;
            # docs/zsmalloc.md, edge case "One mapping per CPU")
            raise NestedMappingError("object unmapped by a thread that did not map it")
        m.zspage = None
        try:
            m.view.release()  # a stale view must not reach the page after unmap
        except BufferError:
            pass  # something still exports it; nothing else to do
        try:
            if m.span and m.mode is not MapMode.RO:
                # __zs_unmap_object: copy back size-8 bytes starting at off+8; the 8 header
                # bytes are never written back.
                off = m.off + ZS_HANDLE_SIZE
                size = m.size - ZS_HANDLE_SIZE
                s0 = self.page_size - off
                base = m.pfn << self.page_shift
                arena = self._arena
                buf = area.buffer()  # the one _map used: same thread (checked above)
                arena[base + off : base + off + s0] = buf[ZS_HANDLE_SIZE : ZS_HANDLE_SIZE + s0]
                nb = self._index[m.pfn] << self.page_shift
                arena[nb : nb + size - s0] = buf[ZS_HANDLE_SIZE + s0 : ZS_HANDLE_SIZE + size]
        finally:
            area.active = False
            self._mappings.pop()
            zspage.lock.read_unlock()

    def read_object(self, handle: int, length: int) -> bytes:
        """Fast path for map(RO) + copy `length` bytes + unmap (same locking as map/unmap)."""
        if self._mappings and self._area.active:
            raise NestedMappingError("read_object while this thread has an object mapped")
        ml = self.migrate_lock
        ml.read_lock()
        try:
            # resolve-and-pin with the handle check (HandleCache.checked_obj), inlined as in
            # _map: the zram read path calls this once per page
            try:
                obj = self._cells[handle >> HANDLE_SHIFT]
            except (IndexError, TypeError):
                obj = -1
            if obj < 0 or handle <= 0 or handle & HANDLE_LOW_BITS:
                obj = self.handles.checked_obj(handle)  # raises the precise InvalidHandle
            pfn = obj >> (OBJ_TAG_BITS + self.obj_index_bits)
            zspage: Zspage = self._private[pfn]
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
                return self._arena[start : start + length].tobytes()
            nb = self._index[pfn] << self.page_shift
            arena = self._arena
            return arena[start : start + s0].tobytes() + arena[nb : nb + length - s0].tobytes()
        finally:
            zlock.read_unlock()

    def write_object(self, handle: int, data) -> None:
        """Fast path for map(WO) + copy `data` + unmap (same locking as map/unmap).  Bytes
        past len(data) keep their old contents instead of receiving stale copy-buffer bytes."""
        if self._mappings and self._area.active:
            raise NestedMappingError("write_object while this thread has an object mapped")
        ml = self.migrate_lock
        ml.read_lock()
        try:
            # resolve-and-pin with the handle check, inlined as in read_object (once a page)
            try:
                obj = self._cells[handle >> HANDLE_SHIFT]
            except (IndexError, TypeError):
                obj = -1
            if obj < 0 or handle <= 0 or handle & HANDLE_LOW_BITS:
                obj = self.handles.checked_obj(handle)  # raises the precise InvalidHandle
            pfn = obj >> (OBJ_TAG_BITS + self.obj_index_bits)
            zspage: Zspage = self._private[pfn]
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
                self._arena[start : start + length] = data
                return
            nb = self._index[pfn] << self.page_shift
            mv = memoryview(data)
            self._arena[start : start + s0] = mv[:s0]
            self._arena[nb : nb + length - s0] = mv[s0:]
        finally:
            zlock.read_unlock()

    # ------------------------------------------------------------------ migration / compaction
    # The pool is the MovableOps its frames are registered with (migrate.py).
    def isolate_page(self, pfn: int) -> bool:
        return zs_page_isolate(self, pfn)

    def migrate_page(self, old_pfn: int, new_pfn: int) -> bool:
        return zs_page_migrate(self, old_pfn, new_pfn)

    def putback_page(self, pfn: int) -> None:
        zs_page_putback(self, pfn)

    def compact(self) -> int:
        """zs_compact: pages freed."""
        return zs_compact(self)

    def freeable_pages(self) -> int:
        """zs_shrinker_count: pages a compaction could free now."""
        return zs_shrinker_count(self)

    def shrink(self) -> int:
        """zs_shrinker_scan: pages freed, or SHRINK_STOP (-1) when nothing was freed."""
        freed = self.compact()
        return freed if freed else SHRINK_STOP

    # ------------------------------------------------------------------ stats and debug
    # The walks are stats.py's; these are the ones the pool's users call as methods.
    def classes_table(self) -> str:
        """The debugfs classes file."""
        return _stats.classes_table(self)

    def handle_to_obj(self, handle: int) -> int:
        """The obj word a live handle's cell holds (debug/test helper)."""
        return self._cells[handle >> HANDLE_SHIFT]

    def obj_location(self, handle: int) -> tuple[int, int, int]:
        """(pfn, obj_idx, offset in that frame) of a live handle's object."""
        return _stats.obj_location(self, handle)

    def check_invariants(self) -> None:
        """List membership, accounting and tag bits of a quiescent pool (`stats.check_invariants`);
        raises AssertionError with a message."""
        _stats.check_invariants(self)

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
                    msg = f"Freeing non-empty class with size {cls.size}b, fullness group {fg}"
                    log.info("%s", msg)
                    self.destroy_messages.append(msg)
        self.zspage_cache.clear()  # kmem_cache_destroy of the zspage cache
        # The leaked zspages of a non-empty pool stay allocated in memory, as in 5.17.
