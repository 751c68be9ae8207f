"""zsmalloc, ported from Linux 5.17 (pool migrate_lock design), on simulated physical memory.

Knows nothing of zram or FUSE.  Public API: `Pool` (zs_create_pool and friends), `MapMode`,
`PhysicalMemory` (the simulated RAM), `OutOfMemory`, the class-table helpers and the lock
debugging switches.

The modules, from the bottom up (each imports only those before it; `pool` is imported by
nobody but for type checking):

    locks           lock classes, Mutex, RWLock, lockdep, lock_stat
    mm_types        struct page vocabulary: PG_* flags, INDEX_NONE, MovableOps, OutOfMemory
    page_migration  page migration and memory compaction (mm/migrate.c, mm/compaction.c)
    memory          PhysicalMemory: frames, page allocator, struct page arrays, page locks
    sizeclass       the class table and the fullness rule (get_fullness_group)
    zspage          struct zspage, the list node, obj encoding, init_zspage
    handles         handles: the handle cache and the handle check
    fullness        SizeClass at run time and its fullness lists
    zspage_ops      obj_malloc/obj_free, page chains, zspage alloc/free, resolve_and_pin
    compact         zsmalloc compaction (__zs_compact), zs_can_compact, the shrinker count
    migrate         zsmalloc's movable-page callbacks (zs_page_isolate/migrate/putback)
    stats           the debugfs classes table, debug walks, check_invariants
    pool            Pool: zs_malloc/zs_free/map and the read/write fast paths
"""

from .fullness import SizeClass
from .handles import InvalidHandle
from .locks import LockOrderViolation, lock_stat_reset, lock_stat_text, set_lockdep
from .memory import MovableOps, OutOfMemory, PhysicalMemory
from .pool import SHRINK_STOP, MapMode, NestedMappingError, Pool, PoolStats
from .sizeclass import ClassTable, SizeClassSpec, build_class_table

__all__ = [
    "Pool", "PoolStats", "SizeClass", "MapMode", "InvalidHandle", "NestedMappingError",
    "SHRINK_STOP", "PhysicalMemory", "MovableOps", "OutOfMemory", "ClassTable", "SizeClassSpec",
    "build_class_table", "LockOrderViolation", "set_lockdep", "lock_stat_text", "lock_stat_reset",
]
