"""Model-based test: random reads/writes/discards/punches at arbitrary offsets and lengths
against a bytearray, with pool compaction, memory migration (memory compaction), idle
marking, writeback and recompression interleaved; the device's counters must always agree
with its slot table."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from allocator import PhysicalMemory
from support.zram_data import PAGE, corpus
from zramfs.device import RECOMP_HUGE, WB_HUGE, WB_IDLE, Registry
from zramfs.slots import SIZE_MASK, ZRAM_HUGE, ZRAM_SAME, ZRAM_WB

NR_PAGES = 48
SIZE = NR_PAGES * PAGE


def make_data(kind: int, seed: int, length: int) -> bytes:
    rng = random.Random(seed)
    if kind == 0:
        return bytes(length)
    if kind == 1:
        return (rng.getrandbits(64).to_bytes(8, "little") * (length // 8 + 1))[:length]
    if kind == 2:
        return rng.randbytes(length)
    text = corpus()
    off = rng.randrange(0, len(text) - length - 1) if length < len(text) - 1 else 0
    data = text[off : off + length]
    if kind == 4:  # mostly text with random islands: mid-size classes
        b = bytearray(data)
        for _ in range(length // 512):
            p = rng.randrange(0, max(1, length - 64))
            b[p : p + 64] = rng.randbytes(64)[: len(b[p : p + 64])]
        data = bytes(b)
    return data


offsets = st.integers(0, SIZE - 1)
lengths = st.integers(1, 3 * PAGE + 17)


class DeviceModel(RuleBasedStateMachine):
    @initialize(
        chain=st.sampled_from([(4, "max-used"), (8, "min-waste")]),
        alg=st.sampled_from(["lz4", "zstd", "deflate", "lz4hc"]),
        compressed_wb=st.booleans(),
    )
    def setup(self, chain, alg, compressed_wb):
        import tempfile

        self.tmp = tempfile.NamedTemporaryFile(prefix="zram-bd-")  # noqa: SIM115 - closed in teardown
        self.tmp.truncate(16 * PAGE)
        self.reg = Registry(
            memory=PhysicalMemory(max_pages=4096), chain_size=chain[0], chain_rule=chain[1]
        )
        self.dev = self.reg.devices[0]
        self.dev.set_comp_algorithm(alg)
        self.dev.set_comp_algorithm("zstd" if alg != "zstd" else "deflate", 1)
        self.dev.set_backing_dev(self.tmp.name)
        self.dev.set_compressed_writeback(compressed_wb)
        self.dev.set_disksize(SIZE)
        self.model = bytearray(SIZE)

    def teardown(self):
        if hasattr(self, "dev"):
            self.dev.reset()
            assert self.reg.memory.nr_used == 0
            self.tmp.close()

    @precondition(lambda self: self.dev.limit_pages == 0)  # a multi-block write may stop midway
    @rule(off=offsets, n=lengths, kind=st.integers(0, 4), seed=st.integers(0, 1 << 30))
    def write(self, off, n, kind, seed):
        n = min(n, SIZE - off)
        data = make_data(kind, seed, n)
        assert self.dev.write(off, data) == n
        self.model[off : off + n] = data

    @rule(page=st.integers(0, NR_PAGES - 1), kind=st.integers(0, 4), seed=st.integers(0, 1 << 30))
    def write_page(self, page, kind, seed):
        data = make_data(kind, seed, PAGE)
        try:
            self.dev.write(page * PAGE, data)
        except OSError as exc:  # over mem_limit: EIO and the old block is intact
            assert exc.errno == 5 and self.dev.limit_pages
            assert self.dev.read(page * PAGE, PAGE) == bytes(
                self.model[page * PAGE : (page + 1) * PAGE]
            )
            return
        self.model[page * PAGE : (page + 1) * PAGE] = data

    @rule(extra=st.sampled_from([None, 0, 1, 3]))
    def mem_limit(self, extra):
        """None lifts the limit; otherwise cap the pool a few pages above its current size."""
        assert self.dev.pool is not None
        self.dev.pool.flush_free_work()
        self.dev.set_mem_limit(0 if extra is None else (self.dev.pool.total_pages + extra) * PAGE)

    @rule(off=offsets, n=st.integers(0, 4 * PAGE))
    def read(self, off, n):
        assert self.dev.read(off, n) == bytes(self.model[off : off + n])

    @rule(off=offsets, n=lengths)
    def discard(self, off, n):
        self.dev.discard(off, n)
        n = min(n, SIZE - off)
        first = -(-off // PAGE)  # partial first block skipped
        last = (off + n) // PAGE  # partial last block skipped
        for i in range(first, last):
            self.model[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
        lo, hi = off & ~(PAGE - 1), min(SIZE, (off + n + PAGE - 1) & ~(PAGE - 1))
        assert self.dev.read(lo, hi - lo) == bytes(self.model[lo:hi])

    @precondition(lambda self: self.dev.limit_pages == 0)  # edge RMW could hit the limit
    @rule(off=offsets, n=lengths)
    def punch_hole(self, off, n):
        self.dev.punch_hole(off, n)
        n = min(n, SIZE - off)
        self.model[off : off + n] = bytes(n)
        lo, hi = off & ~(PAGE - 1), min(SIZE, (off + n + PAGE - 1) & ~(PAGE - 1))
        assert self.dev.read(lo, hi - lo) == bytes(self.model[lo:hi])

    @rule()
    def compact(self):
        self.dev.compact()

    @rule()
    def migrate(self):
        assert self.dev.pool is not None
        self.dev.pool.flush_free_work()
        self.reg.memory.compact()

    @rule(age=st.sampled_from([None, 0, 5]))
    def idle(self, age):
        self.dev.mark_idle(age)

    @rule(mode=st.sampled_from([WB_HUGE, WB_IDLE, 0]), lo=st.integers(0, NR_PAGES - 1))
    def writeback(self, mode, lo):
        try:
            self.dev.writeback([(mode, lo, min(NR_PAGES, lo + 4))])
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC: the backing file is small on purpose

    @rule(mode=st.sampled_from([0, RECOMP_HUGE]))
    def recompress(self, mode):
        self.dev.recompress(mode=mode, max_pages=6)

    @precondition(lambda self: hasattr(self, "dev"))
    @invariant()
    def counters_match_slot_table(self):
        d = self.dev
        s = d.stats()
        assert d._meta is not None and d.pool is not None and d.backing is not None
        t = d._meta.table
        flags = [t.flags[i] for i in range(NR_PAGES)]
        stored = [f for i, f in enumerate(flags) if f or t.handle[i]]
        assert s.pages_stored == len(stored)
        assert s.same_pages == sum(1 for f in flags if f & ZRAM_SAME)
        assert s.huge_pages == sum(1 for f in flags if f & ZRAM_HUGE and not f & ZRAM_WB)
        assert s.compr_data_size == sum(
            f & SIZE_MASK for f in flags if not f & (ZRAM_SAME | ZRAM_WB)
        )
        assert s.bd_count == sum(1 for f in flags if f & ZRAM_WB)
        assert s.bd_count == sum(d.backing.bitmap)
        assert s.mem_used_pages == d.pool.total_pages

    @precondition(lambda self: hasattr(self, "dev"))
    @invariant()
    def spot_check(self):
        self.checks = getattr(self, "checks", 0) + 1
        i = (self.checks * 7) % NR_PAGES
        assert self.dev._meta is not None
        assert self.dev._load_page(self.dev._meta, i, False)[0] == bytes(
            self.model[i * PAGE : (i + 1) * PAGE]
        )


DeviceModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDeviceModel = DeviceModel.TestCase
