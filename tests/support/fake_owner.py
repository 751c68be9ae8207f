"""A movable-page owner for tests of allocator.memory without the pool (test_memory,
test_memory_memfd): `FakeOwner` stands in for zsmalloc as the MovableOps of its frames, and
`rss_bytes` reads this process's resident memory (frames written and dropped show there).
"""

from __future__ import annotations

from allocator.locks import LockClass, Mutex
from allocator.memory import PG_ISOLATED, PG_PRIVATE, PhysicalMemory

# The fake owner's lock sits where zsmalloc's locks are: inside the page lock.
OWNER_LOCK = LockClass("test.owner_lock", 25)


class FakeOwner:
    """A movable-page owner in the zsmalloc mould: objects -> frames, each frame stamped with its
    object id; migrate copies the frame and relinks; free trylocks the page (as free_zspage)."""

    def __init__(
        self, mem: PhysicalMemory, *, fail_migrate: bool = False, refuse_isolate: bool = False
    ) -> None:
        self.mem = mem
        self.lock = Mutex(OWNER_LOCK)
        self.where: dict[int, int] = {}  # object id -> pfn
        self.calls: list[tuple] = []
        self.fail_migrate = fail_migrate
        self.refuse_isolate = refuse_isolate
        self.isolated: set[int] = set()

    # -- owner side
    def alloc(self, obj: int) -> int:
        pfn = self.mem.alloc_page()
        v = self.mem.view(pfn)
        v[:8] = obj.to_bytes(8, "little")
        v[-1] = obj & 0xFF
        with self.lock:
            self.mem.private[pfn] = self
            self.mem.index[pfn] = obj
            self.mem.page_type[pfn] = 123
            self.mem.set_page_flag(pfn, PG_PRIVATE)
            self.where[obj] = pfn
            assert self.mem.trylock_page(pfn)
            self.mem.set_movable(pfn, self)
            self.mem.unlock_page(pfn)
        return pfn

    def try_free(self, obj: int) -> bool:
        with self.lock:
            pfn = self.where[obj]
            if not self.mem.trylock_page(pfn):  # free_zspage cannot sleep on a page lock
                return False
            del self.where[obj]
            self.mem.clear_movable(pfn)
            self.mem.unlock_page(pfn)
            self.mem.free_page(pfn)
            return True

    def check(self, obj: int) -> None:
        with self.lock:
            pfn = self.where[obj]
            v = self.mem.view(pfn)
            assert int.from_bytes(v[:8], "little") == obj and v[-1] == obj & 0xFF, (obj, pfn)
            assert self.mem.private[pfn] is self and self.mem.index[pfn] == obj

    # -- MovableOps
    def isolate_page(self, pfn: int) -> bool:
        assert self.mem.page_is_locked(pfn)
        self.calls.append(("isolate", pfn))
        if self.refuse_isolate:
            return False
        with self.lock:
            self.isolated.add(pfn)
        return True

    def migrate_page(self, old_pfn: int, new_pfn: int) -> bool:
        assert self.mem.page_is_locked(old_pfn) and self.mem.page_is_locked(new_pfn)
        assert self.mem.flags[old_pfn] & PG_ISOLATED
        self.calls.append(("migrate", old_pfn, new_pfn))
        if self.fail_migrate:
            return False
        with self.lock:
            m = self.mem
            m.view(new_pfn)[:] = m.view(old_pfn)
            obj = m.index[old_pfn]
            m.private[new_pfn] = self
            m.index[new_pfn] = obj
            m.page_type[new_pfn] = m.page_type[old_pfn]
            m.set_page_flag(new_pfn, PG_PRIVATE)
            m.set_movable(new_pfn, self)
            m.clear_movable(old_pfn)
            self.where[obj] = new_pfn
            self.isolated.discard(old_pfn)
        return True

    def putback_page(self, pfn: int) -> None:
        assert self.mem.page_is_locked(pfn)
        self.calls.append(("putback", pfn))
        with self.lock:
            self.isolated.discard(pfn)


def rss_bytes() -> int:
    """This process's resident set (statm's second field, in pages of 4 KiB), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
