"""zsmalloc, ported from Linux 5.17 (pool migrate_lock design), on simulated physical memory.

Knows nothing of zram or FUSE.  Public API: `Pool` (zs_create_pool and friends), `MapMode`,
`PhysicalMemory` (the simulated RAM), `OutOfMemory`, the class-table helpers and the lock
debugging switches.
"""

from .locks import LockOrderViolation, lock_stat_reset, lock_stat_text, set_lockdep
from .memory import MovableOps, OutOfMemory, PhysicalMemory
from .pool import InvalidHandle, MapMode, NestedMappingError, Pool, PoolStats, SHRINK_STOP, SizeClass
from .sizeclass import ClassTable, SizeClassSpec, build_class_table

__all__ = [
    "Pool", "PoolStats", "SizeClass", "MapMode", "InvalidHandle", "NestedMappingError",
    "SHRINK_STOP", "PhysicalMemory", "MovableOps", "OutOfMemory", "ClassTable", "SizeClassSpec",
    "build_class_table", "LockOrderViolation", "set_lockdep", "lock_stat_text", "lock_stat_reset",
]
