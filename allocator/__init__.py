"""zsmalloc, ported from Linux 5.17 (pool migrate_lock design), on simulated physical memory.

Knows nothing of zram or FUSE.  Public API: `Pool` (zs_create_pool and friends), `MapMode`,
`PhysicalMemory` (the simulated RAM), `OutOfMemory`, the class-table helpers and the lock
debugging switches.

The modules, from the bottom up (each imports only those before it; `pool` is imported by
nobody but for type checking):

    lockdep_switch  the lockdep switch, read on every acquire and release
    rwlock          RWLock, the qrwlock stand-in (migrate_lock, the zspage locks)
    locks           the lock order, PlainLock, Mutex, lockdep and lock_stat entry points
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
    map_area        the per-thread mapping area of zs_map_object
    pool            Pool: zs_malloc/zs_free/map and the read/write fast paths

Every module but this one, ``lockdep``, ``mm_types``, ``map_area``, ``prefault`` and ``buildmode`` is compiled
by mypyc at install time where a C compiler exists (setup.py); ``build_mode()`` says which
build this process runs, and ``ZRAMFS_PURE_PYTHON=1`` selects the pure sources
(``allocator.buildmode``).
"""

from . import buildmode as _buildmode

# Before any submodule is imported: compiled or pure, for the whole package.
_BUILD_MODE = _buildmode.select(__name__, __path__)

from . import pool as _pool_module  # noqa: E402  (after the build is chosen)
from .fullness import SizeClass  # noqa: E402
from .handles import InvalidHandle  # noqa: E402
from .locks import LockOrderViolation, lock_stat_reset, lock_stat_text, set_lockdep  # noqa: E402
from .memory import MovableOps, OutOfMemory, PhysicalMemory  # noqa: E402
from .pool import SHRINK_STOP, MapMode, NestedMappingError, Pool  # noqa: E402
from .sizeclass import ClassTable, SizeClassSpec, build_class_table  # noqa: E402
from .stats import PoolStats  # noqa: E402

__all__ = [
    "Pool",
    "PoolStats",
    "SizeClass",
    "MapMode",
    "InvalidHandle",
    "NestedMappingError",
    "SHRINK_STOP",
    "PhysicalMemory",
    "MovableOps",
    "OutOfMemory",
    "ClassTable",
    "SizeClassSpec",
    "build_class_table",
    "LockOrderViolation",
    "set_lockdep",
    "lock_stat_text",
    "lock_stat_reset",
    "build_mode",
]


def build_mode() -> str:
    """``"compiled"`` when this process runs the mypyc-compiled modules, else ``"pure"``
    (``allocator.buildmode.why_pure("allocator")`` says why, when a compiled build is there)."""
    return _buildmode.loaded_mode(_pool_module)
