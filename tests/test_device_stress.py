"""Concurrency stress: many threads reading and writing (private blocks, shared blocks and
byte slices of one shared block) while the pool compacts, memory migrates, slots are
marked idle, written back and recompressed — with lockdep on and a watchdog.

The default run is short; `-m soak` runs the long variant.
"""

from __future__ import annotations

import faulthandler
import hashlib
import random
import sys
import tempfile
import threading
import time

import pytest

from allocator import PhysicalMemory, set_lockdep
from support.zram_data import PAGE, mixed_page, text_page
from zramfs.device import RECOMP_HUGE, WB_HUGE, WB_IDLE, Registry

PRIVATE = 24  # blocks per worker
SHARED = 16  # blocks every worker writes whole pages to
SLICE = 64  # bytes per worker in the sub-block-shared block


def run_stress(
    duration: float,
    workers: int = 4,
    *,
    lockdep: bool = True,
    kinds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6),
) -> dict:
    set_lockdep(lockdep)
    tmp = tempfile.NamedTemporaryFile(prefix="zram-stress-bd-")  # noqa: SIM115 - closed at the end
    nr_pages = workers * PRIVATE + SHARED + 1
    tmp.truncate(nr_pages * PAGE)
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 14))
    dev = reg.devices[0]
    dev.set_comp_algorithm("lz4")
    dev.set_comp_algorithm("zstd", 1)
    dev.set_backing_dev(tmp.name)
    dev.set_disksize(nr_pages * PAGE)
    shared0 = workers * PRIVATE
    slice_block = shared0 + SHARED
    written: set[bytes] = {hashlib.blake2b(bytes(PAGE), digest_size=16).digest()}
    written_lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    ops = [0] * (workers + 1)
    last_slice = [b""] * workers

    def fail(msg: str) -> None:
        errors.append(msg)
        stop.set()

    def worker(w: int) -> None:
        rng = random.Random(1000 + w)
        base = w * PRIVATE * PAGE
        model = bytearray(PRIVATE * PAGE)
        counter = 0
        try:
            while not stop.is_set():
                op = rng.random()
                if op < 0.30:  # private, any offset/length
                    off = rng.randrange(0, len(model) - 1)
                    n = rng.randrange(1, min(len(model) - off, 2 * PAGE) + 1)
                    data = (mixed_page(rng) * 2)[:n]
                    dev.write(base + off, data)
                    model[off : off + n] = data
                elif op < 0.50:
                    off = rng.randrange(0, len(model))
                    n = rng.randrange(0, min(len(model) - off, 2 * PAGE) + 1)
                    got = dev.read(base + off, n)
                    if got != bytes(model[off : off + n]):
                        return fail(f"worker {w}: private data mismatch at {off}+{n}")
                elif op < 0.55:
                    i = rng.randrange(PRIVATE)
                    dev.discard(base + i * PAGE, PAGE)
                    model[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
                elif op < 0.70:  # shared whole pages
                    page = mixed_page(rng)
                    with written_lock:
                        written.add(hashlib.blake2b(page, digest_size=16).digest())
                    dev.write((shared0 + rng.randrange(SHARED)) * PAGE, page)
                elif op < 0.85:
                    got = dev.read((shared0 + rng.randrange(SHARED)) * PAGE, PAGE)
                    if hashlib.blake2b(got, digest_size=16).digest() not in written:
                        return fail(f"worker {w}: torn or foreign page in a shared block")
                else:  # my byte slice of the shared block
                    counter += 1
                    data = (b"%02d:%010d:" % (w, counter) + text_page(rng))[:SLICE]
                    dev.write(slice_block * PAGE + w * SLICE, data)
                    last_slice[w] = data
                    got = dev.read(slice_block * PAGE + w * SLICE, SLICE)
                    if got != data:
                        return fail(f"worker {w}: lost my own slice update")
                ops[w] += 1
            # final check of the private region
            if dev.read(base, len(model)) != bytes(model):
                fail(f"worker {w}: final private content differs")
        except BaseException as exc:  # any exception is a failure of the device
            fail(f"worker {w}: {type(exc).__name__}: {exc}")

    def maintenance() -> None:
        rng = random.Random(7)
        try:
            while not stop.is_set():
                k = rng.choice(kinds)
                if k == 0:
                    dev.compact()
                elif k == 1:
                    reg.memory.compact()
                elif k == 2:
                    dev.mark_idle(None)
                elif k == 3:
                    try:
                        dev.writeback([(rng.choice([WB_HUGE, WB_IDLE, 0]), 0, dev.nr_pages)])
                    except OSError as exc:
                        if exc.errno != 28:  # ENOSPC is fine
                            raise
                elif k == 4:
                    dev.recompress(mode=rng.choice([0, RECOMP_HUGE]), max_pages=8)
                elif k == 5:
                    dev.stats()
                else:
                    time.sleep(0.001)
                ops[workers] += 1
        except BaseException as exc:
            fail(f"maintenance: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    threads.append(threading.Thread(target=maintenance, daemon=True))
    try:
        for t in threads:
            t.start()
        stop.wait(duration)
        stop.set()
        deadline = time.monotonic() + 60  # watchdog: a hang is a failure
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [t for t in threads if t.is_alive()]
        if hung:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            errors.append(f"watchdog: {len(hung)} threads still running after stop")
        if not errors:
            for w in range(workers):
                got = dev.read(slice_block * PAGE + w * SLICE, SLICE)
                if last_slice[w] and got != last_slice[w]:
                    errors.append(f"slice of worker {w} lost its last update")
            s = dev.stats()
            meta = dev._meta
            assert meta is not None
            t_ = meta.table
            stored = sum(1 for i in range(nr_pages) if t_.flags[i] or t_.handle[i])
            if s.pages_stored != stored:
                errors.append(f"pages_stored {s.pages_stored} != {stored} slots")
        return {"errors": errors, "ops": sum(ops), "maintenance_ops": ops[workers]}
    finally:
        stop.set()
        set_lockdep(False)
        if not any(t.is_alive() for t in threads):
            dev.reset()
            if reg.memory.nr_used != 0:
                errors.append(f"{reg.memory.nr_used} frames leaked after reset")
        tmp.close()


def test_stress_short():
    res = run_stress(4.0)
    assert not res["errors"], res["errors"]
    assert res["ops"] > 500 and res["maintenance_ops"] > 5


@pytest.mark.soak
def test_stress_soak():
    res = run_stress(120.0, workers=8)
    assert not res["errors"], res["errors"]


def test_registry_hot_add_remove_while_listing():
    """zram-control from several threads while another lists the devices (the tree's readdir)."""
    reg = Registry(memory=PhysicalMemory(max_pages=1 << 12), num_devices=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                i = reg.hot_add()
                reg.devices[i].set_disksize(1 << 16)
                reg.devices[i].write(0, b"x" * PAGE)
                reg.hot_remove(i)
        except BaseException as exc:
            errors.append(exc)

    def lister() -> None:
        try:
            while not stop.is_set():
                for dev_id in sorted(reg.devices):
                    d = reg.devices.get(dev_id)
                    if d is not None:
                        d.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    threads.append(threading.Thread(target=lister, daemon=True))
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert list(reg.devices) == [0]
    assert reg.memory.nr_used == 0
