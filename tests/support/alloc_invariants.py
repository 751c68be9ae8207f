"""Independent oracles and invariant checks for the zsmalloc port (docs/zsmalloc.md, "Edge
cases", above all "Accounting invariants").

Nothing here trusts the allocator's own arithmetic: the class table is the 5.17 table derived
from the formulas (docs/zsmalloc.md, "Size classes, merging and the huge class") written out
literally, the fullness rule is re-stated, and the debugfs ``classes`` text is parsed and
checked against the pool's internal lists and against a walk of the simulated physical pages.

`check_pool_invariants(pool)` is the reusable entry point. It raises ``AssertionError`` with a
readable message on the first broken invariant. It must be called while the pool is quiescent
(no concurrent malloc/free/compaction).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PAGE_SIZE = 4096
HANDLE_SIZE = 8
TAG = 1  # OBJ_ALLOCATED_TAG

# Fullness groups (enum fullness_group, 5.17).
ZS_EMPTY, ZS_ALMOST_EMPTY, ZS_ALMOST_FULL, ZS_FULL = 0, 1, 2, 3

# The 5.17 class table, literally: "index:size:pages:objs" for the 69 canonical classes (chain 4,
# 4 KiB pages, max-used rule). Aliases are the slots between two canonical indices; they
# resolve to the next canonical index above them.
_TABLE_5_17 = """
0:32:1:128 1:48:3:256 2:64:1:64 3:80:1:51 4:96:3:128 5:112:2:73 6:128:1:32 7:144:3:85
8:160:2:51 9:176:4:93 10:192:3:64 11:208:2:39 12:224:4:73 13:240:1:17 14:256:1:16 15:272:1:15
16:288:1:14 17:304:3:40 18:320:4:51 19:336:1:12 20:352:2:23 21:368:1:11 22:384:3:32 23:400:1:10
24:416:4:39 25:432:3:28 26:448:1:9 27:464:4:35 28:480:2:17 29:496:4:33 30:512:1:8 31:528:4:31
32:544:2:15 33:560:4:29 34:576:1:7 35:592:4:27 36:608:3:20 37:624:2:13 38:640:3:19 40:672:1:6
42:704:4:23 43:720:3:17 44:736:2:11 46:768:3:16 49:816:1:5 51:848:4:19 52:864:3:14 54:896:2:9
57:944:3:13 58:960:4:17 62:1024:1:4 66:1088:4:15 67:1104:3:11 71:1168:2:7 74:1216:3:10 76:1248:4:13
83:1360:1:3 91:1488:4:11 94:1536:3:8 100:1632:2:5 107:1744:3:7 111:1808:4:9 126:2048:1:2 144:2336:4:7
151:2448:3:5 168:2720:2:3 190:3072:3:4 202:3264:4:5 254:4096:1:1
"""


@dataclass(frozen=True)
class RefClass:
    index: int
    size: int
    pages: int
    objs: int

    @property
    def huge(self) -> bool:
        return self.pages == 1 and self.objs == 1

    @property
    def waste(self) -> int:
        return self.pages * PAGE_SIZE - self.objs * self.size


REF_CLASSES: tuple[RefClass, ...] = tuple(
    RefClass(*(int(x) for x in item.split(":"))) for item in _TABLE_5_17.split()
)
REF_BY_INDEX: dict[int, RefClass] = {c.index: c for c in REF_CLASSES}
REF_BY_SIZE: dict[int, RefClass] = {c.size: c for c in REF_CLASSES}
REF_HUGE_CLASS_SIZE = 3257


def ref_slot(size_with_handle: int) -> int:
    """get_size_class_index, re-stated: min(254, ceil((size - 32) / 16)), 0 below 32."""
    if size_with_handle <= 32:
        return 0
    return min(254, (size_with_handle - 32 + 15) // 16)


def ref_class_for_alloc(size: int) -> RefClass:
    """The canonical class zs_malloc(size) must use (size + 8, then the next canonical slot up)."""
    slot = ref_slot(size + HANDLE_SIZE)
    for c in REF_CLASSES:
        if c.index >= slot:
            return c
    raise AssertionError("unreachable: slot 254 is canonical")


def ref_fullness(inuse: int, objs: int) -> int:
    """get_fullness_group with the code's 3N/4 threshold."""
    if inuse == 0:
        return ZS_EMPTY
    if inuse == objs:
        return ZS_FULL
    if inuse <= 3 * objs // 4:
        return ZS_ALMOST_EMPTY
    return ZS_ALMOST_FULL


def ref_first_obj_offsets(size: int, pages: int) -> list[int]:
    """Offset, inside subpage k, of the first object that starts in it (docs/zsmalloc.md,
    "Zspages, page chains and the freelist")."""
    out = []
    for k in range(pages):
        start = k * PAGE_SIZE
        first = -(-start // size) * size
        out.append(first - start)
    return out


# ---------------------------------------------------------------------------------------------
# debugfs "classes" parsing

_HEADER = " %5s %5s %11s %12s %13s %10s %10s %16s %8s\n" % (
    "class",
    "size",
    "almost_full",
    "almost_empty",
    "obj_allocated",
    "obj_used",
    "pages_used",
    "pages_per_zspage",
    "freeable",
)


@dataclass(frozen=True)
class ClassRow:
    index: int
    size: int
    almost_full: int
    almost_empty: int
    obj_allocated: int
    obj_used: int
    pages_used: int
    pages_per_zspage: int
    freeable: int


@dataclass(frozen=True)
class ClassesTable:
    rows: dict[int, ClassRow]
    total: tuple[
        int, int, int, int, int, int
    ]  # almost_full, almost_empty, objs, used, pages, freeable


def parse_classes_table(text: str) -> ClassesTable:
    """Parse the debugfs ``classes`` text, checking the exact kernel format on the way."""
    lines = text.split("\n")
    assert lines[0] + "\n" == _HEADER, f"bad header line: {lines[0]!r}"
    rows: dict[int, ClassRow] = {}
    i = 1
    while lines[i] != "":
        line = lines[i]
        f = line.split()
        assert len(f) == 9, f"bad row: {line!r}"
        vals = [int(x) for x in f]
        expect = " %5u %5u %11u %12u %13u %10u %10u %16d %8u" % tuple(vals)
        assert line == expect, f"row not in the kernel format:\n{line!r}\n{expect!r}"
        row = ClassRow(*vals)
        rows[row.index] = row
        i += 1
    total_line = lines[i + 1]
    f = total_line.split()
    assert f[0] == "Total" and len(f) == 7, f"bad total line: {total_line!r}"
    tot = tuple(int(x) for x in f[1:])
    expect = " %5s %5s %11u %12u %13u %10u %10u %16s %8u" % (
        "Total",
        "",
        tot[0],
        tot[1],
        tot[2],
        tot[3],
        tot[4],
        "",
        tot[5],
    )
    assert total_line == expect, f"total not in the kernel format:\n{total_line!r}\n{expect!r}"
    assert lines[i + 2 :] == [""], f"trailing text after the total line: {lines[i + 2 :]!r}"
    return ClassesTable(rows=rows, total=tot)  # type: ignore[arg-type]


def check_classes_table(pool: Any, live_sizes: Iterable[int] | None = None) -> ClassesTable:
    """Check the public debugfs table: the 69 rows, the per-row arithmetic, the totals, and
    (when the sizes of the live objects are known) obj_used per class and pages vs total_pages.
    """
    t = parse_classes_table(pool.classes_table())
    assert sorted(t.rows) == sorted(REF_BY_INDEX), (
        "the table must list exactly the 69 canonical classes"
    )
    sums = [0, 0, 0, 0, 0, 0]
    for idx, r in t.rows.items():
        ref = REF_BY_INDEX[idx]
        assert (r.size, r.pages_per_zspage) == (ref.size, ref.pages), f"class {idx}: {r} vs {ref}"
        assert r.obj_allocated % ref.objs == 0, (
            f"class {idx}: obj_allocated not a multiple of N: {r}"
        )
        assert r.pages_used == r.obj_allocated // ref.objs * ref.pages, (
            f"class {idx}: pages_used {r}"
        )
        assert 0 <= r.obj_used <= r.obj_allocated, f"class {idx}: obj_used > obj_allocated: {r}"
        a, u = r.obj_allocated, r.obj_used
        freeable = 0 if a <= u else (a - u) // ref.objs * ref.pages
        assert r.freeable == freeable, f"class {idx}: freeable {r.freeable} != {freeable}"
        zspages = r.obj_allocated // ref.objs
        assert r.almost_full + r.almost_empty <= zspages, (
            f"class {idx}: list counts exceed zspages: {r}"
        )
        if ref.objs <= 4:
            assert r.almost_full == 0, f"class {idx}: ALMOST_FULL impossible for N={ref.objs}"
        for k, v in enumerate(
            (r.almost_full, r.almost_empty, r.obj_allocated, r.obj_used, r.pages_used, r.freeable)
        ):
            sums[k] += v
    assert tuple(sums) == t.total, f"totals {t.total} != column sums {tuple(sums)}"
    assert t.total[4] == pool.total_pages, (
        f"sum of pages_used {t.total[4]} != pool.total_pages {pool.total_pages}"
    )
    if live_sizes is not None:
        per_class: dict[int, int] = {}
        for s in live_sizes:
            c = ref_class_for_alloc(s)
            per_class[c.index] = per_class.get(c.index, 0) + 1
        for idx, r in t.rows.items():
            assert r.obj_used == per_class.get(idx, 0), (
                f"class {idx} (size {r.size}): obj_used {r.obj_used} != live objects "
                f"{per_class.get(idx, 0)}"
            )
    return t


# ---------------------------------------------------------------------------------------------
# Accessors for the pool's internals (the only place that knows their names).
#
# Pool: size_class[slot] (aliases share the canonical object), classes (canonical),
# handle_to_obj(h), zspages(), migrate_lock, memory, flush_free_work(), total_pages.
# SizeClass: index, size, pages_per_zspage, objs_per_zspage, lock, fullness_list[4] (ListHead,
# iterable), stats[6], deferred_freed. Zspage: huge, fullness, class_idx, isolated, inuse,
# freeobj, first_page, pages, lock. Everything else is read from the simulated frames.

OBJ_INDEX_BITS = 23
END_MARKER = (((1 << 64) - 1) << 1) & ((1 << 64) - 1)
FREEOBJ_END = 0xFFFFFFFF
PG_PRIVATE, PG_MOVABLE = 0x01, 0x02


def word(mem: Any, pfn: int, off: int) -> int:
    return int.from_bytes(mem.view(pfn)[off : off + 8], "little")


def set_word(mem: Any, pfn: int, off: int, value: int) -> None:
    mem.view(pfn)[off : off + 8] = value.to_bytes(8, "little")


def obj_of(pool: Any, handle: int) -> int:
    """The obj word in the handle cell (*handle)."""
    return pool.handle_to_obj(handle)


def decode(obj: int) -> tuple[int, int]:
    """obj_to_location, re-stated: (pfn, zspage-wide obj_idx)."""
    obj >>= 1
    return obj >> OBJ_INDEX_BITS, obj & ((1 << OBJ_INDEX_BITS) - 1)


def location(pool: Any, handle: int) -> tuple[int, int]:
    return decode(obj_of(pool, handle))


def zspage_of(pool: Any, handle: int) -> Any:
    pfn, _ = location(pool, handle)
    z = pool.memory.private[pfn]
    assert z is not None, f"handle {handle:#x} decodes to pfn {pfn}, which has no zspage"
    return z


def class_of(pool: Any, zspage: Any) -> Any:
    return pool.size_class[zspage.class_idx]


def class_by_index(pool: Any, idx: int) -> Any:
    c = pool.size_class[idx]
    assert c.index == idx, f"slot {idx} is an alias of {c.index}, not canonical"
    return c


def class_by_slot(pool: Any, slot: int) -> Any:
    return pool.size_class[slot]


def first_page(zspage: Any) -> int:
    return zspage.first_page


def fullness_list(cls: Any, fg: int) -> list[Any]:
    return list(cls.fullness_list[fg])


def class_stats(cls: Any) -> list[int]:
    return list(cls.stats)


def migrate_lock(pool: Any) -> Any:
    return pool.migrate_lock


def class_lock(cls: Any) -> Any:
    return cls.lock


def flush_deferred(pool: Any, timeout: float = 10.0) -> None:
    assert pool.flush_free_work(timeout), "deferred free did not finish"


def zspage_pfns(pool: Any, zspage: Any) -> list[int]:
    """The chain, walked through page->index from first_page (not the pool's cached list)."""
    mem = pool.memory
    pfn = zspage.first_page
    if zspage.huge:
        return [pfn]
    out: list[int] = []
    while pfn != -1:
        assert len(out) <= 16, f"page chain loop from {zspage.first_page}"
        out.append(pfn)
        pfn = mem.index[pfn]
    return out


def object_starts(pool: Any, zspage: Any) -> list[tuple[int, int, int]]:
    """(zspage-wide idx, pfn, offset) of every object start, phantom included, by arithmetic."""
    cls = class_of(pool, zspage)
    pages = zspage_pfns(pool, zspage)
    out = []
    idx = 0
    while True:
        start = idx * cls.size
        k = start // PAGE_SIZE
        if k >= len(pages):
            break
        out.append((idx, pages[k], start % PAGE_SIZE))
        idx += 1
    return out


def has_phantom(cls: Any) -> bool:
    return (cls.pages_per_zspage * PAGE_SIZE) % cls.size >= 16 and not _huge(cls)


def _huge(cls: Any) -> bool:
    return cls.pages_per_zspage == 1 and cls.objs_per_zspage == 1


def slot_word(pool: Any, zspage: Any, idx: int) -> int:
    cls = class_of(pool, zspage)
    pages = zspage_pfns(pool, zspage)
    start = idx * cls.size
    return word(pool.memory, pages[start // PAGE_SIZE], start % PAGE_SIZE)


def freelist(pool: Any, zspage: Any) -> list[int]:
    """Walk the in-page freelist from freeobj (phantom included); independent of the pool.

    The list ends at the first link whose index is past the last slot: the fresh end marker
    (-1UL << 1), or, once a zspage has been FULL, the truncated `freeobj << 1` that obj_free
    stored from the unsigned int freeobj (0xFFFFFFFF << 1 in 32-bit arithmetic). Callers
    compare the length with N - inuse (+ phantom), which catches a list cut short.
    """
    cls = class_of(pool, zspage)
    if _huge(cls):
        return [0] if zspage.inuse == 0 else []
    limit = cls.objs_per_zspage + int(has_phantom(cls))
    idx = zspage.freeobj & FREEOBJ_END
    out: list[int] = []
    while idx < limit:
        assert idx not in out, f"freelist loop at {idx}"
        out.append(idx)
        w = slot_word(pool, zspage, idx)
        assert w & TAG == 0, f"free slot {idx} has the allocated tag: {w:#x}"
        if w == END_MARKER:
            break
        idx = (w >> 1) & FREEOBJ_END
        assert len(out) <= limit
    return out


def free_slots(pool: Any, zspage: Any) -> list[int]:
    """Free real slots (the phantom excluded)."""
    cls = class_of(pool, zspage)
    return [i for i in freelist(pool, zspage) if i < cls.objs_per_zspage]


def header_word(pool: Any, handle: int) -> int:
    """The object's first word (non-huge) or the huge page's page->index."""
    pfn, idx = location(pool, handle)
    z = pool.memory.private[pfn]
    if z.huge:
        return pool.memory.index[pfn]
    size = class_of(pool, z).size
    return word(pool.memory, pfn, idx * size % PAGE_SIZE)


def read_object_bytes(pool: Any, handle: int, n: int) -> bytes:
    """n bytes from the object's start (header included), following the chain across frames."""
    pfn, idx = location(pool, handle)
    z = pool.memory.private[pfn]
    pages = zspage_pfns(pool, z)
    size = class_of(pool, z).size
    off = idx * size % PAGE_SIZE
    k = pages.index(pfn)
    out = bytes(pool.memory.view(pfn)[off : min(PAGE_SIZE, off + n)])
    if off + n > PAGE_SIZE:
        out += bytes(pool.memory.view(pages[k + 1])[: off + n - PAGE_SIZE])
    return out


def insert_zspage(pool: Any, cls: Any, zspage: Any, fg: int) -> None:
    """insert_zspage (caller holds class->lock); also sets zspage->fullness like putback."""
    from allocator import fullness

    fullness.insert_zspage(cls, zspage, fg)
    zspage.fullness = fg


def remove_zspage(pool: Any, cls: Any, zspage: Any, fg: int) -> None:
    from allocator import fullness

    fullness.remove_zspage(cls, zspage, fg)


def trace_object_moves(pool: Any, monkeypatch: Any, moved: list[tuple[int, int]]) -> None:
    """Record (id(source zspage), id(destination zspage)) for every object compaction copies."""
    import allocator.compact as compact_mod

    real = compact_mod._object_copy
    mem = pool.memory

    def traced(p: Any, size: int, dst_obj: int, src_obj: int) -> Any:
        moved.append((id(mem.private[decode(src_obj)[0]]), id(mem.private[decode(dst_obj)[0]])))
        return real(p, size, dst_obj, src_obj)

    monkeypatch.setattr(compact_mod, "_object_copy", traced)


def trace_class_compaction(pool: Any, monkeypatch: Any, order: list[int]) -> None:
    """Record the size of each class __zs_compact is called for, in order."""
    import allocator.compact as compact_mod

    name = next(
        n
        for n in ("__zs_compact", "_zs_compact_class", "zs_compact_class")
        if hasattr(compact_mod, n)
    )
    real = getattr(compact_mod, name)

    def traced(p: Any, cls: Any, *a: Any, **k: Any) -> Any:
        order.append(cls.size)
        return real(p, cls, *a, **k)

    monkeypatch.setattr(compact_mod, name, traced)


# ---------------------------------------------------------------------------------------------
# The internal walk


def _check_internals(pool: Any, live: Mapping[int, int] | None) -> None:
    mem = pool.memory
    if hasattr(pool, "flush_free_work"):
        assert pool.flush_free_work(10.0), "deferred free still pending: pool not quiescent"
    zspages = list(pool.zspages())
    zset = {id(z) for z in zspages}
    assert len(zset) == len(zspages)

    # List membership: every zspage is on exactly the list its fullness names, in its own class.
    seen: dict[int, int] = {}
    canonical = {c.index: c for c in pool.size_class}
    assert sorted(canonical) == sorted(REF_BY_INDEX)
    for cls in canonical.values():
        for fg in range(4):
            lst = list(cls.fullness_list[fg])
            for z in lst:
                assert id(z) in zset, f"class {cls.size} list {fg} holds a dead zspage {z!r}"
                assert id(z) not in seen, f"zspage on two lists: {z!r}"
                seen[id(z)] = fg
                assert z.fullness == fg, f"zspage on list {fg} has fullness {z.fullness}: {z!r}"
                assert z.class_idx == cls.index, (
                    f"zspage of class {z.class_idx} on list of {cls.index}"
                )
                assert ref_fullness(z.inuse, cls.objs_per_zspage) == fg, (
                    f"class {cls.size}: inuse {z.inuse}/{cls.objs_per_zspage} on list {fg} (3N/4 rule)"
                )
            if fg == ZS_EMPTY:
                leaked = getattr(cls, "deferred_freed", 0)
                assert cls.stats[fg] == len(lst) + leaked, (
                    f"class {cls.size}: stats[CLASS_EMPTY] {cls.stats[fg]} != {len(lst)} listed "
                    f"+ {leaked} freed by the async worker (the 5.17 CLASS_EMPTY leak)"
                )
            else:
                assert cls.stats[fg] == len(lst), (
                    f"class {cls.size}: stats[{fg}] {cls.stats[fg]} != list length {len(lst)}"
                )
    unlisted = [z for z in zspages if id(z) not in seen]
    assert not unlisted, f"live zspages on no list (isolated? leaked?): {unlisted[:3]}"

    # Accounting: per-class counters and per-zspage contents.
    per_class_zspages: dict[int, int] = {}
    per_class_inuse: dict[int, int] = {}
    handles_found: dict[int, tuple[int, int]] = {}
    owned_frames = 0
    for z in zspages:
        cls = class_of(pool, z)
        ref = REF_BY_INDEX[cls.index]
        assert (cls.size, cls.pages_per_zspage, cls.objs_per_zspage) == (
            ref.size,
            ref.pages,
            ref.objs,
        )
        per_class_zspages[cls.index] = per_class_zspages.get(cls.index, 0) + 1
        per_class_inuse[cls.index] = per_class_inuse.get(cls.index, 0) + z.inuse
        assert z.isolated == 0, f"isolated count left over: {z!r}"
        assert z.huge == ref.huge
        pages = zspage_pfns(pool, z)
        assert len(pages) == ref.pages, f"chain of {len(pages)} pages for class {ref.size}: {z!r}"
        assert list(z.pages) == pages, f"cached chain {z.pages} != page->index chain {pages}"
        owned_frames += len(pages)
        offs = ref_first_obj_offsets(ref.size, ref.pages)
        for k, pfn in enumerate(pages):
            assert mem.private[pfn] is z, f"pfn {pfn}: page->private is not its zspage"
            assert bool(mem.flags[pfn] & PG_PRIVATE) == (k == 0), f"pfn {pfn}: PG_private wrong"
            assert mem.flags[pfn] & PG_MOVABLE, f"pfn {pfn} of a live zspage is not movable"
            assert mem.page_type[pfn] == offs[k], (
                f"pfn {pfn} (subpage {k} of class {ref.size}): first_obj_offset "
                f"{mem.page_type[pfn]} != {offs[k]}"
            )
        if ref.huge:
            idxw = mem.index[pages[0]]
            if z.inuse:
                assert idxw & TAG, f"huge zspage in use without handle|1 in page->index: {idxw:#x}"
                handles_found[idxw & ~TAG] = (pages[0], 0)
            else:
                assert idxw == 0, f"free huge zspage keeps page->index {idxw:#x}"
            continue
        allocated = []
        for idx, pfn, off in object_starts(pool, z):
            w = word(mem, pfn, off)
            if idx >= ref.objs:  # the phantom tail object: never allocated
                assert w & TAG == 0, f"phantom slot {idx} looks allocated: {w:#x}"
                continue
            if w & TAG:
                h = w & ~TAG
                assert h not in handles_found, f"handle {h:#x} in two object headers"
                handles_found[h] = (pfn, idx)
                allocated.append(idx)
        assert len(allocated) == z.inuse, (
            f"class {ref.size}: {len(allocated)} headers with tag bit 1 but inuse {z.inuse}"
        )
        fl = freelist(pool, z)
        phantom = int(has_phantom(cls))
        assert len(fl) == ref.objs - z.inuse + phantom, (
            f"class {ref.size}: freelist length {len(fl)} != N - inuse + phantom "
            f"({ref.objs} - {z.inuse} + {phantom})"
        )
        assert not set(fl) & set(allocated), "a slot is both free and allocated"

    for idx, cls in canonical.items():
        n = per_class_zspages.get(idx, 0)
        assert cls.stats[4] == n * cls.objs_per_zspage, (
            f"class {cls.size}: OBJ_ALLOCATED {cls.stats[4]} != {n} zspages x {cls.objs_per_zspage}"
        )
        assert cls.stats[5] == per_class_inuse.get(idx, 0), (
            f"class {cls.size}: OBJ_USED {cls.stats[5]} != sum of inuse {per_class_inuse.get(idx, 0)}"
        )
    assert owned_frames == pool.total_pages, (
        f"pages_allocated {pool.total_pages} != frames of live zspages {owned_frames}"
    )
    frames = sum(1 for pfn in mem.used_pfns() if id(mem.private[pfn]) in zset)
    assert frames == owned_frames, (
        f"{frames} frames point at live zspages, chains hold {owned_frames}"
    )

    # Tag bits: every header's handle decodes back to the object that holds it.
    for h, (pfn, idx) in handles_found.items():
        obj = obj_of(pool, h)
        assert obj & TAG == 0, f"*handle {h:#x} = {obj:#x} has the tag bit set"
        assert decode(obj) == (pfn, idx), (
            f"handle {h:#x} decodes to {decode(obj)} but its header is at {(pfn, idx)}"
        )
    if live is not None:
        assert set(handles_found) == set(live), (
            f"handles in pages vs live: missing {sorted(set(live) - set(handles_found))[:5]}, "
            f"extra {sorted(set(handles_found) - set(live))[:5]}"
        )
        for h, size in live.items():
            pfn, _ = handles_found[h]
            cls = class_of(pool, mem.private[pfn])
            assert cls.size == ref_class_for_alloc(size).size, (
                f"handle {h:#x} of size {size} lives in class {cls.size}"
            )

    # The debugfs rows agree with the structs.
    t = parse_classes_table(pool.classes_table())
    for idx, r in t.rows.items():
        st = canonical[idx].stats
        assert (r.almost_full, r.almost_empty, r.obj_allocated, r.obj_used) == (
            st[ZS_ALMOST_FULL],
            st[ZS_ALMOST_EMPTY],
            st[4],
            st[5],
        ), f"debugfs row {r} vs stats {st}"

    # The pool's own checker must agree that all is well.
    if hasattr(pool, "check_invariants"):
        pool.check_invariants()


def check_pool_invariants(pool: Any, live: Mapping[int, int] | None = None) -> None:
    """Check the invariants of a quiescent pool (the docs/zsmalloc.md edge cases named below).

    * the debugfs table: exact format, the 69 classes, per-row arithmetic, totals, and
      Σ pages_used == total_pages;
    * "List order and where zs_malloc looks": every live zspage is on exactly one list, the
      one its fullness names, which is the 3N/4 rule applied to its inuse; stats[CLASS_*] ==
      list lengths (CLASS_EMPTY also counts the zspages the async worker freed: the 5.17 leak
      of "Deferred free when a page lock is busy");
    * "Accounting invariants": OBJ_ALLOCATED == zspages x N, OBJ_USED == Σ inuse, Σ pages ==
      pages_allocated == frames owned; each chain (walked through page->index) has
      pages_per_zspage frames, with page->private, PG_private, PG_movable and
      first_obj_offset right; inuse == headers with tag bit 1; freelist length == N - inuse
      (+ the phantom);
    * "Tag bits in handles, headers and free slots": every header holds handle|1 and that
      handle's cell (tag bit clear) decodes to it.

    `live`, when given, maps each live handle to its requested size: the handles found in
    the frames must be exactly those, each in the class the 5.17 table gives its size,
    and the per-class obj_used must match. Also runs the pool's own `check_invariants`.
    """
    check_classes_table(pool, live.values() if live is not None else None)
    _check_internals(pool, live)
