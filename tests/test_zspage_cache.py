"""The pool's zspage cache (`allocator.zspage_ops.ZspageCache`): the kernel's per-pool
"zspage" kmem_cache, cache_alloc_zspage and cache_free_zspage."""

from __future__ import annotations

import pytest

from allocator import OutOfMemory, PhysicalMemory, Pool
from allocator.locks import ZSPAGE_LOCK, RWLock
from allocator.sizeclass import ZSPAGE_MAGIC
from allocator.zspage import Zspage
from allocator.zspage_ops import ZSPAGE_CACHE_MAX
from support.alloc_invariants import zspage_of

PAGE = 4096


def test_zspage_cache_reuses_freed_structs(mem):
    """The pool's "zspage" cache (cache_alloc_zspage / cache_free_zspage): a freed struct
    zspage, with its lock, is handed out again by the next alloc_zspage with every field
    zeroed; one whose lock is held or waited for is not kept; the cache holds at most
    ZSPAGE_CACHE_MAX; a failed alloc_zspage gives its struct back; destroying the pool
    empties the cache."""
    pool = Pool("zc", memory=mem)
    h = pool.malloc(PAGE)  # huge: a one-page zspage per object
    z = zspage_of(pool, h)
    lock = z.lock
    pool.free(h)
    assert z.magic == 0 and len(pool.zspage_cache) == 1  # freed, kept
    h = pool.malloc(100)  # another class: the same struct, zeroed, on a new chain
    z2 = zspage_of(pool, h)
    assert z2 is z and z2.lock is lock and len(pool.zspage_cache) == 0
    assert z2.magic == ZSPAGE_MAGIC and not z2.huge and z2.inuse == 1 and z2.isolated == 0
    assert pool.size_class[z2.class_idx].size == 112
    pool.write_object(h, b"x" * 100)
    assert pool.read_object(h, 100) == b"x" * 100
    pool.check_invariants()
    pool.free(h)

    # a struct whose lock is not idle is left to the garbage collector
    cache = pool.zspage_cache
    cache.clear()
    busy = Zspage(RWLock(ZSPAGE_LOCK))
    busy.lock.read_lock()
    cache.free(busy)
    busy.lock.read_unlock()
    assert len(cache) == 0
    # bounded
    for _ in range(ZSPAGE_CACHE_MAX + 5):
        cache.free(Zspage(RWLock(ZSPAGE_LOCK)))
    assert len(cache) == ZSPAGE_CACHE_MAX
    cache.clear()

    # out of frames half way through a zspage: the struct goes back to the cache
    small = PhysicalMemory(max_pages=2)
    p2 = Pool("zc2", memory=small)
    with pytest.raises(OutOfMemory):
        p2.malloc(3000)  # class 3072: a 3-page zspage
    assert len(p2.zspage_cache) == 1 and small.nr_used == 0
    p2.check_invariants()
    p2.destroy()  # kmem_cache_destroy: the cached structs go
    assert len(p2.zspage_cache) == 0
