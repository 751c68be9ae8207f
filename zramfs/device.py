"""ZramDevice and Registry: zram's block device and zram-control, on the allocator.

Owns what drivers/block/zram/zram_drv.c does (docs/zram.md), put together the way the
kernel's config options split it, one module per part:

* here: lifecycle, configuration and zram-control — struct zram's fields (zram_add),
  open/close, disksize_store (zram_meta_alloc + comps), reset_store (zram_reset_device,
  zram_meta_free), comp_algorithm / recomp_algorithm / algorithm_params,
  mem_limit_store, compact_store, the device's locks (`dev_lock`, the kernel's
  init_lock, and `_compact_lock`), and `Registry` (hot_add / hot_remove);
* `zramfs.device_io`: the data path — read, write, multi-page and partial I/O,
  same-filled and HUGE pages, slot_free, discard, flush, punch_hole / zero_range;
* `zramfs.device_writeback`: CONFIG_ZRAM_WRITEBACK — the backing device, idle marking,
  writeback and its limits;
* `zramfs.device_recompress`: CONFIG_ZRAM_MULTI_COMP — recompression;
* `zramfs.device_stats`: `DeviceStats` and the numbers of mm_stat, io_stat, bd_stat,
  debug_stat and the block-layer stat;
* `zramfs.device_core`: what they share (the typed fields, `_Meta`, the stripe helpers).

Parsing and formatting of attribute text lives in `zramfs.attrs`; the methods take typed
values and raise `ZramError` with the kernel's errno for what the *state* forbids.

Why mixins: `ZramDevice` derives from one class per part (`IOPathMixin`,
`WritebackMixin`, `RecompressMixin`, `StatsMixin` on `DeviceCore`), so there is still
one object whose fields every part reads directly, as every function of zram_drv.c takes
the one `struct zram *`.  Component objects the device holds were the alternative: each
call through one costs a bound-method hop (a micro-benchmark of `dev.read` that calls a
helper: 62 ns per call flat or as a mixin, 90–96 ns delegated to a component), and state
that disksize and reset replace (`_meta`, `_stripes`, `limit_pages`, `backing`) would
be one more attribute hop away from each part (or copied into each, with several places
to keep in step).  A method inherited from a mixin costs nothing: CPython caches
attribute lookups per type, whatever the depth of the MRO.  The 4 KiB and 128 KiB paths
of `zramfs.device_io` are thus unchanged by the split (`scripts/bench.py device-ab`).
"""

from __future__ import annotations

import errno
import functools
import time
from dataclasses import dataclass

import numpy as np
from mypy_extensions import mypyc_attr

from allocator import OutOfMemory, PhysicalMemory, Pool
from allocator.locks import LockClass, Mutex
from allocator.sizeclass import build_class_table

from . import codecs
from .device_core import U64, ZRAM_MAX_COMPS, ZRAM_PRIMARY_COMP, _Meta
from .device_recompress import RECOMP_HUGE, RECOMP_IDLE, RecompressMixin
from .device_stats import DeviceStats, StatsMixin
from .device_writeback import WB_HUGE, WB_IDLE, WB_INCOMPRESSIBLE, WritebackMixin, _BackingDev
from .errors import DeviceBusy, InvalidInput, NoMemory, NoSuchDevice, ZramError
from .runtime import require_gil
from .slots import PAGE_SHIFT, PAGE_SIZE, STRIPE_MASK, SlotTable, Stripe, new_stripes

__all__ = [
    "ZramDevice",
    "Registry",
    "ZramError",
    "CompParams",
    "DeviceStats",
    "ZRAM_MAX_COMPS",
    "WB_IDLE",
    "WB_HUGE",
    "WB_INCOMPRESSIBLE",
    "RECOMP_IDLE",
    "RECOMP_HUGE",
]

# The device's lock classes; their ranks are rows of the stack's lock order, written once in
# allocator/locks.py (the slot locks' class is zramfs.slots.STRIPE_LOCK, the backing
# device's bitmap lock zramfs.device_writeback.BITMAP_LOCK).
REGISTRY_LOCK = LockClass("zram-control", 2)
COMPACT_LOCK = LockClass("&zram->compact", 3)
INIT_LOCK = LockClass("&zram->init_lock", 4)


@dataclass
class CompParams:
    """algorithm_params of one priority (zcomp_params): unset fields mean backend defaults."""

    level: int | None = None
    dictionary: bytes | None = None
    winbits: int | None = None


@mypyc_attr(native_class=False)
class ZramDevice(WritebackMixin, RecompressMixin, StatsMixin):
    """One zram device: configuration, slot table, pool, codecs and counters.

    Lifecycle and configuration are here; the data path, writeback, recompression and
    statistics are inherited from the parts (see the module docstring).
    """

    def __init__(
        self,
        dev_id: int,
        *,
        memory: PhysicalMemory,
        chain_size: int = 4,
        chain_rule: str = "max-used",
    ) -> None:
        self.id = dev_id
        self.name = f"zram{dev_id}"
        self.memory = memory
        self.chain_size = chain_size
        self.chain_rule = chain_rule
        #: the kernel's init_lock / dev_lock: serialises configuration, never on the data path
        self.dev_lock = Mutex(INIT_LOCK)
        #: one compaction at a time; reset waits for it (see compact())
        self._compact_lock = Mutex(COMPACT_LOCK)
        #: the access-time clock (seconds); CLOCK_BOOTTIME like ac_time, replaceable in tests
        self.clock = _boottime
        self.open_count = 0
        self._claimed = False
        self.disksize = 0
        self.pool: Pool | None = None
        self._meta: _Meta | None = None
        self.comp_algs: list[str | None] = [codecs.DEFAULT_ALGORITHM, None, None, None]
        self.comp_params: list[CompParams] = [CompParams() for _ in range(ZRAM_MAX_COMPS)]
        self.limit_pages = 0
        self._max_used_floor = 0
        # CONFIG_ZRAM_WRITEBACK's fields (device_writeback)
        self.backing: _BackingDev | None = None
        self.wb_limit_enable = False
        self.bd_wb_limit = 0
        self.wb_batch_size = 32
        self.compressed_writeback = False
        # The 1024 slot-lock stripes with their counters cost ~350 KiB: an uninitialised
        # device (hot_add in a loop, --devices N) has none until disksize creates them (or
        # a flush counts one), and reset drops them again; every counter is zero then, as
        # after zram_reset_device()'s memset of zram->stats.
        self._stripes: list[Stripe] = _NO_STRIPES

    # ------------------------------------------------------------------ lifecycle
    @property
    def initialized(self) -> bool:
        return self._meta is not None

    @property
    def nr_pages(self) -> int:
        return self.disksize >> PAGE_SHIFT

    def open(self) -> None:
        """A user of the image (FUSE open, loop attach); reset/hot_remove answer EBUSY meanwhile."""
        with self.dev_lock:
            if self._claimed:  # zram_open() during a reset
                raise DeviceBusy(f"{self.name} is being reset")
            self.open_count += 1

    def close(self) -> None:
        with self.dev_lock:
            if self.open_count <= 0:
                raise ZramError(f"{self.name} is not open", err=errno.EBADF)
            self.open_count -= 1

    def set_disksize(self, nbytes: int) -> None:
        """disksize_store after memparse (nbytes != 0): allocate table, pool and compressors."""
        if nbytes == 0:
            raise InvalidInput("disksize: zero")
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Cannot change disksize for initialized device")
            disksize = (nbytes + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & U64  # PAGE_ALIGN, u64 wrap
            if disksize == 0:
                raise NoMemory("disksize overflows")
            nr_pages = disksize >> PAGE_SHIFT
            table = SlotTable(nr_pages)
            comps: list[codecs.Codec | None] = [None] * ZRAM_MAX_COMPS
            for prio, name in enumerate(self.comp_algs):
                if name is None:
                    continue
                p = self.comp_params[prio]
                try:
                    comps[prio] = codecs.get_codec(
                        name, level=p.level, dictionary=p.dictionary, winbits=p.winbits
                    )
                except ZramError as exc:
                    table.release()
                    raise InvalidInput(
                        f"Cannot initialise {name} compressing backend: {exc.strerror}"
                    ) from None
            try:
                pool = Pool(
                    self.name,
                    memory=self.memory,
                    chain_size=self.chain_size,
                    chain_rule=self.chain_rule,
                )
            except (MemoryError, OutOfMemory):
                table.release()
                raise NoMemory("Error creating memory pool") from None
            # Stripes before meta: the data path reads self._meta first, then the stripes.
            # (A flush may have created them already: keep its count.)
            if not self._stripes:
                self._stripes = new_stripes()
            self._meta = _Meta(pool, comps, table)
            self.pool = pool
            self.disksize = disksize

    def reset(self) -> None:
        """reset_store: EBUSY while open; otherwise zram_reset_device() (current kernels)."""
        with self.dev_lock:
            if self.open_count > 0 or self._claimed:
                raise DeviceBusy(f"{self.name} is open")
            self._claimed = True
        try:
            # A compaction in progress works on the pool outside dev_lock: wait for it.
            with self._compact_lock, self.dev_lock:
                self._reset_device()
        finally:
            with self.dev_lock:
                self._claimed = False

    def _reset_device(self) -> None:
        # Latest semantics (docs/zram.md, "reset"): everything is reverted even on an
        # uninitialised device; wb_limit_enable, bd_wb_limit, wb_batch_size and
        # compressed_writeback are fields of struct zram, not of its stats, and survive.
        self.limit_pages = 0
        meta, self._meta = self._meta, None
        self.pool = None
        self.disksize = 0
        if meta is not None:
            self._meta_free(meta)
        self.comp_algs = [codecs.DEFAULT_ALGORITHM, None, None, None]
        self.comp_params = [CompParams() for _ in range(ZRAM_MAX_COMPS)]
        # Dropping the stripes zeroes every counter and gives their memory back.  Nothing
        # uses them concurrently: reset refuses while the image is open, and stats() works
        # on the list it read.
        self._stripes = _NO_STRIPES
        self._max_used_floor = 0
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def _meta_free(self, meta: _Meta) -> None:
        """zram_meta_free(): free every slot, then destroy the pool.

        zs_destroy_pool() does not free live objects (5.17 reports and leaks them), and
        the frames belong to the registry's shared PhysicalMemory, so every stored object
        must go back first.
        """
        t = meta.table
        with self._all_stripes():
            for index in np.flatnonzero(t.allocated_mask()).tolist():
                self._slot_free(meta, index, self._stripes[index & STRIPE_MASK].counters)
        meta.pool.destroy()
        self.memory.drop_free_frames()  # a reset gives the memory back now, not in a batch
        t.release()

    # ------------------------------------------------------------------ configuration
    def set_comp_algorithm(self, name: str, prio: int = ZRAM_PRIMARY_COMP) -> None:
        """comp_algorithm / recomp_algorithm after name validation: EBUSY once initialised."""
        if name not in codecs.AVAILABLE:
            raise InvalidInput(f"unknown algorithm {name!r}")
        if not 0 <= prio < ZRAM_MAX_COMPS:
            raise InvalidInput(f"priority {prio} out of range")
        with self.dev_lock:
            if self._meta is not None:
                raise DeviceBusy("Can't change algorithm for initialized device")
            self.comp_algs[prio] = name

    def find_priority(self, algo: str) -> int | None:
        """The priority `algo` is configured at (algorithm_params' algo=), or None."""
        for prio, name in enumerate(self.comp_algs):
            if name == algo:
                return prio
        return None

    def set_algorithm_params(self, prio: int, params: CompParams) -> None:
        """algorithm_params: replace every parameter of one priority (comp_params_reset first)."""
        if not 0 <= prio < ZRAM_MAX_COMPS:
            raise InvalidInput(f"priority {prio} out of range")
        with self.dev_lock:
            if (
                self._meta is not None
            ):  # 241f9005b1c8 "zram: do not permit params change after init"
                raise DeviceBusy("Can't change algorithm params for initialized device")
            self.comp_params[prio] = params

    def set_mem_limit(self, nbytes: int) -> None:
        """mem_limit_store: any time; stored in pages, rounded up; 0 = no limit."""
        with self.dev_lock:
            self.limit_pages = ((nbytes + PAGE_SIZE - 1) & U64) >> PAGE_SHIFT

    # ------------------------------------------------------------------ maintenance
    def compact(self) -> int:
        """compact_store: EINVAL when uninitialised, else zs_compact(); pages freed.

        compact_store holds init_lock for *read* during zs_compact, so only a reset (the
        writer) waits for it.  Here dev_lock is exclusive, so the pass runs outside it, under
        the device's compaction lock, which reset takes before it tears the pool down: open,
        close, configuration and statistics go on meanwhile.
        """
        with self._compact_lock:
            with self.dev_lock:
                pool = self._require_meta().pool
            return pool.compact()


#: the stripes of a device that has none (never mutated; see ZramDevice.__init__)
_NO_STRIPES: list[Stripe] = []

#: seconds since boot (CLOCK_BOOTTIME, what ac_time uses); a C-level partial, no Python frame
_boottime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)


@mypyc_attr(native_class=False)
class Registry:
    """zram-control: the devices of one mount, sharing one PhysicalMemory."""

    def __init__(
        self,
        *,
        memory: PhysicalMemory | None = None,
        chain_size: int = 4,
        chain_rule: str = "max-used",
        num_devices: int = 1,
    ) -> None:
        # Before anything is built: without the GIL the lock-free shortcuts listed in
        # allocator/locks.py race (zramfs/runtime.py says why).
        require_gil()
        self.memory = memory if memory is not None else PhysicalMemory()
        self.chain_size = chain_size
        self.chain_rule = chain_rule
        build_class_table(PAGE_SIZE, chain_size, chain_rule)  # bad parameters fail here
        self.devices: dict[int, ZramDevice] = {}
        self._lock = Mutex(REGISTRY_LOCK)
        for _ in range(num_devices):
            self.hot_add()

    def hot_add(self) -> int:
        """Create an uninitialised device with the lowest free id (idr_alloc from 0)."""
        with self._lock:
            dev_id = 0
            while dev_id in self.devices:
                dev_id += 1
            dev = ZramDevice(
                dev_id, memory=self.memory, chain_size=self.chain_size, chain_rule=self.chain_rule
            )
            self.devices = dict(sorted([*self.devices.items(), (dev_id, dev)]))
            return dev_id

    def hot_remove(self, dev_id: int) -> None:
        """EINVAL negative id, ENODEV unknown, EBUSY while open; else reset and remove."""
        if dev_id < 0:
            raise InvalidInput(f"negative device id {dev_id}")
        with self._lock:
            dev = self.devices.get(dev_id)
            if dev is None:
                raise NoSuchDevice(f"no zram{dev_id}")
            dev.reset()  # EBUSY while open; zram_remove() resets before deleting the disk
            # copy-on-write, like hot_add: readers iterating the old dict are never disturbed
            self.devices = {k: v for k, v in self.devices.items() if k != dev_id}

    def __getitem__(self, dev_id: int) -> ZramDevice:
        return self.devices[dev_id]
