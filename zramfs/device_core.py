"""What every part of a zram device shares: struct zram's fields, zram_meta and the stripes.

`ZramDevice` is put together from one class per part of zram_drv.c (see `zramfs.device`);
this module owns what those parts have in common:

* `DeviceCore`, their base: the fields of struct zram that more than one part reads,
  typed once here (`ZramDevice.__init__` gives them their values), and the ways to reach
  the initialised state (`_require_meta`) and the slot locks (`_all_stripes`,
  `_ensure_stripes`);
* `_Meta`, everything disksize creates and reset destroys (zram_meta_alloc(): the slot
  table, the zsmalloc pool, the compressors of every priority);
* the constants of zram_drv.h that several parts use (sector shift, compressor priorities).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from allocator import Pool
from allocator.locks import Mutex

from . import codecs
from .errors import InvalidInput
from .slots import SlotTable, Stripe, new_stripes

if TYPE_CHECKING:
    from .device_writeback import _BackingDev

SECTOR_SHIFT: Final = 9
ZRAM_PRIMARY_COMP: Final = 0
ZRAM_SECONDARY_COMP: Final = 1
ZRAM_MAX_COMPS: Final = 4
U64: Final = (1 << 64) - 1


class _Meta:
    """Everything disksize creates and reset destroys (zram_meta_alloc + the comps)."""

    def __init__(self, pool: Pool, comps: list[codecs.Codec | None], table: SlotTable) -> None:
        self.pool = pool
        self.comps = comps
        self.table = table
        self.huge_class_size = pool.huge_class_size
        #: zs_lookup_class_index() for recompression: the pool's own class table
        self.class_table = pool.table
        self.num_active_comps = sum(1 for c in comps if c is not None)


@mypyc_attr(native_class=False)
class DeviceCore:
    """The fields of struct zram the parts of a device share, and the helpers they all use.

    The parts (`IOPathMixin`, `WritebackMixin`, `RecompressMixin`, `StatsMixin` and
    `ZramDevice` itself) derive from this class; only `ZramDevice` is ever instantiated,
    and its `__init__` sets every field; a field only one part uses is declared by that part.
    """

    name: str
    dev_lock: Mutex
    clock: Callable[[], float]
    disksize: int
    #: None until disksize; the data path reads it first, then the stripes
    _meta: _Meta | None
    #: the slot locks and their counters (zramfs.slots); empty while uninitialised
    _stripes: list[Stripe]
    comp_algs: list[str | None]
    limit_pages: int
    #: mem_used_max is max(this, every stripe's MAX_USED): mem_used_max_store sets it
    _max_used_floor: int
    backing: _BackingDev | None

    def _require_meta(self) -> _Meta:
        meta = self._meta
        if meta is None:
            raise InvalidInput(f"{self.name} is not initialized")
        return meta

    def _ensure_stripes(self) -> list[Stripe]:
        """The stripes, created first if the device has none (flush on an uninitialised one)."""
        stripes = self._stripes
        if not stripes:
            with self.dev_lock:
                if not self._stripes:
                    self._stripes = new_stripes()
                stripes = self._stripes
        return stripes

    def _all_stripes(self) -> _AllStripes:
        """Hold every slot lock (in index order) for a vectorised table scan."""
        return _AllStripes(self._stripes)


class _AllStripes:
    def __init__(self, stripes: list[Stripe]) -> None:
        self._stripes = stripes

    def __enter__(self) -> None:
        for s in self._stripes:
            s.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for s in reversed(self._stripes):
            s.lock.release()
