"""Size-class table math for the zsmalloc port (Linux 5.17, mm/zsmalloc.c).

This module owns every constant that zsmalloc derives from PAGE_SIZE, the chain size
(ZS_MAX_PAGES_PER_ZSPAGE) and MAX_POSSIBLE_PHYSMEM_BITS, the page-count rule that picks
pages_per_zspage for a class size, the class-building loop of zs_create_pool with its
merging of equivalent slots, the (boot-global in the kernel) huge_class_size,
get_size_class_index, and the fullness rule: ``get_fullness_group`` with its threshold
``almost_empty_limit``, the one statement of the rule (`allocator.fullness` moves zspages
by it; the pool's inlined copy is checked against it by ``tests/test_pool_reference.py``).
Nothing here allocates memory or takes locks; a `ClassTable` is an immutable description
shared by every pool that uses the same parameters.

Two page-count rules are supported:

* ``"max-used"``: 5.17's get_pages_per_zspage: the chain length in 1..chain with the highest
  integer used-percentage, strict ``>`` so ties keep the shorter chain.
* ``"min-waste"``: calculate_zspage_chain_size of kernels since 6.3: powers of two get one
  page, otherwise the chain length with the minimum ``(i * PAGE_SIZE) % size`` (ties keep the
  shorter chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

# Constants that do not depend on the page size (docs/zsmalloc.md, "Constants").
ZSPAGE_MAGIC: Final = 0x58
ZS_ALIGN: Final = 8
ZS_HANDLE_SIZE: Final = 8
OBJ_ALLOCATED_TAG: Final = 1
OBJ_TAG_BITS: Final = 1
CLASS_BITS: Final = 8
HUGE_BITS: Final = 1
FULLNESS_BITS: Final = 2
ISOLATED_BITS: Final = 3
MAGIC_VAL_BITS: Final = 8
BITS_PER_LONG: Final = 64
FULLNESS_THRESHOLD_FRAC: Final = 4

# enum fullness_group (and the first four class_stat_type entries, which equal it on purpose).
ZS_EMPTY: Final = 0
ZS_ALMOST_EMPTY: Final = 1
ZS_ALMOST_FULL: Final = 2
ZS_FULL: Final = 3
NR_ZS_FULLNESS: Final = 4
# enum class_stat_type
CLASS_EMPTY: Final = ZS_EMPTY
CLASS_ALMOST_EMPTY: Final = ZS_ALMOST_EMPTY
CLASS_ALMOST_FULL: Final = ZS_ALMOST_FULL
CLASS_FULL: Final = ZS_FULL
OBJ_ALLOCATED: Final = 4
OBJ_USED: Final = 5
NR_ZS_STAT_TYPE: Final = 6

CHAIN_RULES: Final = ("max-used", "min-waste")


def get_pages_per_zspage(class_size: int, page_size: int, max_pages: int) -> int:
    """5.17 get_pages_per_zspage: maximise the integer used percentage (strict '>')."""
    max_usedpc = 0
    max_usedpc_order = 1
    for i in range(1, max_pages + 1):
        zspage_size = i * page_size
        waste = zspage_size % class_size
        usedpc = (zspage_size - waste) * 100 // zspage_size
        if usedpc > max_usedpc:
            max_usedpc = usedpc
            max_usedpc_order = i
    # Despite the kernel's variable name this is a page *count*, not an order.
    return max_usedpc_order


def calculate_zspage_chain_size(class_size: int, page_size: int, max_pages: int) -> int:
    """6.3+ calculate_zspage_chain_size: minimum tail waste, powers of two use one page."""
    if class_size & (class_size - 1) == 0:
        return 1
    min_waste = None
    chain_size = 1
    for i in range(1, max_pages + 1):
        waste = (i * page_size) % class_size
        if min_waste is None or waste < min_waste:
            min_waste = waste
            chain_size = i
    return chain_size


@dataclass(frozen=True, slots=True)
class SizeClassSpec:
    """The static part of struct size_class: one canonical (non-alias) class."""

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int

    @property
    def huge(self) -> bool:
        # ZsHugePage is set by create_page_chain when the class holds one object in one page.
        return self.pages_per_zspage == 1 and self.objs_per_zspage == 1


@dataclass(frozen=True)
class ClassTable:
    """Everything zs_create_pool derives for one (page size, chain size, rule, physmem bits)."""

    page_size: int
    page_shift: int
    chain_size: int
    chain_rule: str
    max_possible_physmem_bits: int
    pfn_bits: int
    obj_index_bits: int
    obj_index_mask: int
    min_alloc_size: int
    max_alloc_size: int
    size_class_delta: int
    nr_size_classes: int
    huge_class_size: int
    # slot i -> canonical class index (the larger class an alias slot was merged into)
    slot_to_class: tuple[int, ...]
    # canonical classes only, in increasing index order
    classes: tuple[SizeClassSpec, ...]

    # canonical index -> class (aliases are not keys)
    by_index: dict[int, SizeClassSpec]

    def class_for_slot(self, slot: int) -> SizeClassSpec:
        return self.by_index[self.slot_to_class[slot]]

    def get_size_class_index(self, size: int) -> int:
        """get_size_class_index: `size` already includes ZS_HANDLE_SIZE; clamps to the last slot."""
        idx = 0
        if size > self.min_alloc_size:
            idx = -(-(size - self.min_alloc_size) // self.size_class_delta)
        return min(self.nr_size_classes - 1, idx)

    def class_for_alloc(self, size: int) -> SizeClassSpec:
        """The canonical class zs_malloc(size) uses (adds the handle word first)."""
        return self.class_for_slot(self.get_size_class_index(size + ZS_HANDLE_SIZE))

    def waste(self, spec: SizeClassSpec) -> int:
        return (spec.pages_per_zspage * self.page_size) % spec.size


def _div_round_up(a: int, b: int) -> int:
    return -(-a // b)


@cache
def build_class_table(
    page_size: int = 4096,
    chain_size: int = 4,
    chain_rule: str = "max-used",
    max_possible_physmem_bits: int = 52,
) -> ClassTable:
    """Compute the class table exactly as zs_create_pool's loop does (docs/zsmalloc.md,
    "Size classes, merging and the huge class").

    Cached per parameter set: in the kernel huge_class_size is a boot-global computed by the
    first pool; here every pool with the same parameters shares one table (and so one value).
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    if chain_rule not in CHAIN_RULES:
        raise ValueError(f"chain_rule must be one of {CHAIN_RULES}, got {chain_rule!r}")
    if chain_size < 1:
        raise ValueError(f"chain_size must be >= 1, got {chain_size}")
    page_shift = page_size.bit_length() - 1
    pfn_bits = max_possible_physmem_bits - page_shift
    obj_index_bits = BITS_PER_LONG - pfn_bits - OBJ_TAG_BITS
    if obj_index_bits <= 0:
        raise ValueError("MAX_POSSIBLE_PHYSMEM_BITS leaves no room for the object index")
    min_alloc_size = max(32, (chain_size << page_shift) >> obj_index_bits)
    max_alloc_size = page_size
    delta = page_size >> CLASS_BITS
    nr_classes = _div_round_up(max_alloc_size - min_alloc_size, delta) + 1
    pick = get_pages_per_zspage if chain_rule == "max-used" else calculate_zspage_chain_size

    huge_class_size = 0
    slot_to_class = [0] * nr_classes
    classes: list[SizeClassSpec] = []
    prev: SizeClassSpec | None = None
    for i in range(nr_classes - 1, -1, -1):
        size = min(min_alloc_size + i * delta, max_alloc_size)
        pages = pick(size, page_size, chain_size)
        objs = pages * page_size // size
        if pages != 1 and objs != 1 and huge_class_size == 0:
            # The first class from the top that is not "one object in one page".
            huge_class_size = size - (ZS_HANDLE_SIZE - 1)
        # can_merge: same pages and objects per zspage -> the slot aliases the larger class.
        if prev is not None and prev.pages_per_zspage == pages and prev.objs_per_zspage == objs:
            slot_to_class[i] = prev.index
            continue
        prev = SizeClassSpec(index=i, size=size, pages_per_zspage=pages, objs_per_zspage=objs)
        classes.append(prev)
        slot_to_class[i] = i
    classes.reverse()
    return ClassTable(
        page_size=page_size,
        page_shift=page_shift,
        chain_size=chain_size,
        chain_rule=chain_rule,
        max_possible_physmem_bits=max_possible_physmem_bits,
        pfn_bits=pfn_bits,
        obj_index_bits=obj_index_bits,
        obj_index_mask=(1 << obj_index_bits) - 1,
        min_alloc_size=min_alloc_size,
        max_alloc_size=max_alloc_size,
        size_class_delta=delta,
        nr_size_classes=nr_classes,
        huge_class_size=huge_class_size,
        slot_to_class=tuple(slot_to_class),
        classes=tuple(classes),
        by_index={c.index: c for c in classes},
    )


def almost_empty_limit(objs_per_zspage: int) -> int:
    """Largest inuse that is still ZS_ALMOST_EMPTY: the code's 3N/4 (not the comment's N/4)."""
    return 3 * objs_per_zspage // FULLNESS_THRESHOLD_FRAC


def get_fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """get_fullness_group for a zspage with `inuse` objects of `objs_per_zspage`."""
    if inuse == 0:
        return ZS_EMPTY
    if inuse == objs_per_zspage:
        return ZS_FULL
    if inuse <= almost_empty_limit(objs_per_zspage):
        return ZS_ALMOST_EMPTY
    return ZS_ALMOST_FULL
