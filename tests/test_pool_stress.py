"""Threaded stress of the zsmalloc pool: I/O threads (malloc / map-write / map-verify / free)
against a compactor thread and a migrator thread (single-frame migration and memory
compaction), lockdep on, a watchdog that dumps every thread's stack on a hang.

Default: ~5 s of load (ZS_STRESS_SECONDS overrides). ``pytest -m soak``: 60 s, more threads.
"""

from __future__ import annotations

import faulthandler
import io
import os
import random
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import pytest

from allocator import MapMode, Pool
from allocator.locks import set_lockdep
from allocator.memory import PhysicalMemory
from support.alloc_invariants import check_pool_invariants

HANG_SECONDS = 30.0  # no I/O progress for this long = a hang (the machine is shared and slow)


def pattern(tag: int, n: int) -> bytes:
    """Per-object pattern: a 4-byte tag then a position-dependent tail."""
    head = tag.to_bytes(4, "little")
    body = bytes(((tag + i * 31) & 0xFF) for i in range(min(n, 251)))
    data = head + body * (n // max(1, len(body)) + 1)
    return data[:n]


def all_stacks() -> str:
    """Every thread's stack, via faulthandler and sys._current_frames (both, for robustness)."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"\n--- thread {names.get(ident, '?')} ({ident}) ---\n")
        out.write("".join(traceback.format_stack(frame)))
    try:
        import tempfile

        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
            f.seek(0)
            out.write("\n--- faulthandler ---\n" + f.read())
    except Exception as e:  # pragma: no cover - diagnostics only
        out.write(f"(faulthandler failed: {e})\n")
    return out.getvalue()


@dataclass
class Shared:
    pools: list[Pool]
    memory: PhysicalMemory
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    progress: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, where: str) -> None:
        with self.lock:
            self.errors.append(f"[{where}] {traceback.format_exc()}")
        self.stop.set()

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n


def io_worker(sh: Shared, wid: int, seed: int, live_out: dict[int, bytes], max_live: int) -> None:
    rnd = random.Random(seed)
    pool = sh.pools[wid % len(sh.pools)]
    live: dict[int, bytes] = {}
    tag = wid << 24
    # Clustered sizes (real zram-like compressed sizes) mixed with the whole range.
    sizes = [40, 100, 700, 1352, 2000, 3000, 3256, 3257, 4096]
    try:
        while not sh.stop.is_set():
            op = rnd.random()
            if op < 0.40 and len(live) < max_live:
                size = rnd.choice(sizes) if rnd.random() < 0.6 else rnd.randint(1, 4096)
                h = pool.malloc(size)
                tag += 1
                data = pattern(tag, size)
                if rnd.random() < 0.5:
                    with pool.map_object(h, MapMode.WO) as buf:
                        buf[:size] = data
                else:
                    pool.write_object(h, data)
                live[h] = data
            elif op < 0.75 and live:
                h = rnd.choice(list(live))
                want = live[h]
                if rnd.random() < 0.5:
                    with pool.map_object(h, MapMode.RO) as buf:
                        got = bytes(buf[: len(want)])
                else:
                    got = pool.read_object(h, len(want))
                if got != want:
                    bad = next(i for i in range(len(want)) if got[i] != want[i])
                    raise AssertionError(
                        f"corrupted object {h:#x} size {len(want)}: first bad byte at {bad}: "
                        f"{got[bad : bad + 16].hex()} != {want[bad : bad + 16].hex()}"
                    )
                if rnd.random() < 0.2:  # RW rewrite, checking copy-in on the way
                    tag += 1
                    new = pattern(tag, len(want))
                    with pool.map_object(h, MapMode.RW) as buf:
                        if bytes(buf[: len(want)]) != want:
                            raise AssertionError(f"RW copy-in of {h:#x} differs")
                        buf[: len(want)] = new
                    live[h] = new
            elif live:
                h = rnd.choice(list(live))
                del live[h]
                pool.free(h)
            with sh.lock:
                sh.progress += 1
    except BaseException:
        sh.fail(f"io-{wid}")
    finally:
        live_out.update(live)


def compactor(sh: Shared) -> None:
    try:
        while not sh.stop.is_set():
            freed = sum(p.compact() for p in sh.pools)
            assert freed >= 0
            sh.count("compactions")
            sh.count("pages_freed", freed)
            time.sleep(0.005)
    except BaseException:
        sh.fail("compactor")


def migrator(sh: Shared, seed: int) -> None:
    rnd = random.Random(seed)
    try:
        while not sh.stop.is_set():
            if rnd.random() < 0.05:
                sh.memory.compact()
                sh.count("memory_compactions")
                continue
            hw = sh.memory.high_water
            if hw == 0:
                time.sleep(0.001)
                continue
            # Any frame, owned by the pool or not: migrate_pfn must cope with both.
            pfn = rnd.randrange(hw)
            if sh.memory.migrate_pfn(pfn):
                sh.count("migrated")
            else:
                sh.count("migrate_refused")
    except BaseException:
        sh.fail("migrator")


def watchdog(sh: Shared, done: threading.Event, report: list[str]) -> None:
    last = -1
    last_change = time.monotonic()
    while not done.wait(0.5):
        with sh.lock:
            p = sh.progress
        now = time.monotonic()
        if p != last:
            last, last_change = p, now
        elif now - last_change > HANG_SECONDS:
            report.append(f"no I/O progress for {HANG_SECONDS:.0f} s:\n{all_stacks()}")
            sh.stop.set()
            return


def run_stress(
    seconds: float, n_io: int, max_live: int, seed: int, n_pools: int = 2
) -> dict[str, int]:
    """n_io I/O threads spread over n_pools pools that share one PhysicalMemory (as the zram
    devices of one mount do), one compactor for all pools, one migrator for the memory."""
    memory = PhysicalMemory(max_pages=1 << 16)
    pools = [Pool(f"stress{i}", memory=memory) for i in range(n_pools)]
    set_lockdep(True)
    try:
        sh = Shared(pools=pools, memory=memory)
        lives: list[dict[int, bytes]] = [{} for _ in range(n_io)]
        threads = [
            threading.Thread(
                target=io_worker,
                args=(sh, i, seed + i, lives[i], max_live),
                name=f"io-{i}",
                daemon=True,
            )
            for i in range(n_io)
        ]
        threads.append(
            threading.Thread(target=compactor, args=(sh,), name="compactor", daemon=True)
        )
        threads.append(
            threading.Thread(target=migrator, args=(sh, seed + 1000), name="migrator", daemon=True)
        )
        done = threading.Event()
        hang: list[str] = []
        wd = threading.Thread(target=watchdog, args=(sh, done, hang), name="watchdog", daemon=True)
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # more interleavings per second
        try:
            wd.start()
            for t in threads:
                t.start()
            sh.stop.wait(seconds)
            sh.stop.set()
            deadline = time.monotonic() + HANG_SECONDS
            for t in threads:
                t.join(max(0.1, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck and not hang:
                hang.append(f"threads did not stop: {stuck}\n{all_stacks()}")
        finally:
            done.set()
            sys.setswitchinterval(old_interval)
        assert not hang, hang[0]
        assert not sh.errors, "\n".join(sh.errors)
        assert sh.progress > 0
        for k, pool in enumerate(pools):
            live: dict[int, bytes] = {}
            for wid, d in enumerate(lives):
                if wid % n_pools != k:
                    continue
                assert not (live.keys() & d.keys()), "two threads were given the same handle"
                live.update(d)
            for h, want in live.items():
                assert pool.read_object(h, len(want)) == want, f"object {h:#x} corrupted at the end"
            check_pool_invariants(pool, {h: len(v) for h, v in live.items()})
            for h in live:
                pool.free(h)
            check_pool_invariants(pool, {})
            pool.compact()
            pool.destroy()
        assert memory.nr_used == 0, (
            f"{memory.nr_used} frames still used after every object was freed"
        )
        return dict(sh.counts, io_ops=sh.progress)
    finally:
        set_lockdep(False)


def test_pool_stress() -> None:
    seconds = float(os.environ.get("ZS_STRESS_SECONDS", "5"))
    counts = run_stress(seconds, n_io=4, max_live=400, seed=1234)
    print("stress counts:", counts)
    assert counts.get("compactions", 0) > 0
    assert counts.get("migrated", 0) > 0, "the migrator never moved a frame"


@pytest.mark.soak
def test_pool_stress_soak() -> None:
    counts = run_stress(60.0, n_io=6, max_live=2000, seed=99)
    print("soak counts:", counts)
    assert counts.get("migrated", 0) > 0
