"""Replaying a trace (zramfs/replay.py, zramfs/replay_settings.py; docs/trace-format.md).

Exactness: a real mount traced through a fio randwrite + randtrim run, a read pass, an
explicit compact and a mem_limit change replays, under the configuration it was recorded
with, to the live device's final mm_stat, every field.  Settings: chain_size, algorithm,
mem_limit, compact_policy (deterministic against trace time) change what they should; bad
names and values are one-line `InvalidSetting` errors raised before anything runs.
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from support.trace_files import MOUNT
from zramfs.attrs import format_io_stat
from zramfs.device import Registry
from zramfs.errors import InvalidInput, InvalidSetting, ZramError
from zramfs.replay import MM_STAT_FIELDS, ReplayResult, _Replay, mm_stat_of, replay_trace
from zramfs.replay_settings import SETTINGS, parse_config, validate_setting
from zramfs.slots import FLUSH_IOS, NOTIFY_FREE, READ_IOS, READ_SECTORS, WRITE_IOS, WRITE_SECTORS
from zramfs.trace import F_OVERLAP, T_WRITE, TraceReader
from zramfs.trace_hook import MountTracer
from zramfs.trace_writer import TraceWriter
from zramfs.tree import Tree


def _make_trace(
    path: Path, *, n: int = 3000, seed: int = 1, algorithm: str = "lz4", mount: dict | None = None
) -> dict[str, int]:
    """An in-process traced device: random compressible writes, discards, reads, a compact.
    Returns the live mm_stat."""
    registry = Registry(num_devices=1)
    tree = Tree(registry)
    tracer = MountTracer(TraceWriter(path, dict(mount or MOUNT)))
    tracer.attach(registry, tree)
    dev = registry.devices[0]
    tracer.store(dev, "comp_algorithm", algorithm)
    tracer.store(dev, "disksize", "32M")
    rnd = random.Random(seed)
    words = [rnd.randbytes(16) for _ in range(60)]
    for i in range(n):
        k = rnd.randrange(1, 230)
        page = (b"".join(rnd.choice(words) for _ in range(k)) + bytes(4096))[:4096]
        dev.write(rnd.randrange(8192) * 4096, page)
        if i % 3 == 0:
            dev.discard(rnd.randrange(8192) * 4096, 4096 * rnd.randrange(1, 6))
        if i % 5 == 0:
            dev.read(rnd.randrange(8192) * 4096, 4096 * rnd.randrange(1, 3))
    tree.write_file(tree.lookup("/sys/block/zram0/compact"), b"1")
    live = mm_stat_of(dev)
    tracer.close()
    return live


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("replay") / "small.trace"
    return path, _make_trace(path)


def test_recorded_configuration_reproduces_mm_stat(small_trace) -> None:
    path, live = small_trace
    r = replay_trace(path, {})
    assert r.mm_stat == live
    assert r.mm_stat["pages_compacted"] > 0  # the explicit compact freed pages
    assert r.pages_compacted == live["pages_compacted"]
    assert r.peak_mem_used >= r.mm_stat["mem_used_total"] and r.write_failures == 0
    assert 0 < r.mean_mem_used <= r.peak_mem_used
    assert r.config["chain_size"] == "4" and r.config["algorithm"] == "lz4"
    assert r.trace_complete and r.overlapping == 0


def test_to_json_has_the_issue_shape(small_trace) -> None:
    r = replay_trace(small_trace[0], {"chain_size": "8"})
    j = r.to_json()
    assert list(j["mm_stat"]) == list(MM_STAT_FIELDS)
    for key in (
        "config",
        "mm_stat",
        "peak_mem_used",
        "seconds",
        "mean_mem_used",
        "pages_compacted",
        "write_failures",
    ):
        assert key in j
    assert j["config"]["chain_size"] == "8"
    assert isinstance(r, ReplayResult)


def test_chain_size_changes_mem_used_total(small_trace) -> None:
    path, _ = small_trace
    four, eight = replay_trace(path, {"chain_size": "4"}), replay_trace(path, {"chain_size": "8"})
    assert four.mm_stat["mem_used_total"] != eight.mm_stat["mem_used_total"]
    # the same data either way: only the allocator's packing differs
    for k in ("orig_data_size", "compr_data_size", "same_pages", "huge_pages"):
        assert four.mm_stat[k] == eight.mm_stat[k]


def test_algorithm_changes_compr_data_size(small_trace) -> None:
    path, live = small_trace
    lz4, zstd = replay_trace(path, {"algorithm": "lz4"}), replay_trace(path, {"algorithm": "zstd"})
    assert lz4.mm_stat == live
    assert zstd.mm_stat["compr_data_size"] < lz4.mm_stat["compr_data_size"]
    assert zstd.mm_stat["orig_data_size"] == lz4.mm_stat["orig_data_size"]
    assert zstd.config["algorithm"] == "zstd"


def test_mem_limit_counts_write_failures(small_trace) -> None:
    path, live = small_trace
    r = replay_trace(path, {"mem_limit": "1M"})
    assert r.write_failures > 0
    assert r.mm_stat["mem_limit"] == 1 << 20
    assert r.mm_stat["mem_used_total"] <= 1 << 20 < live["mem_used_total"]
    assert r.config["mem_limit"] == "1M"


def test_compaction_policies_run_in_trace_time(small_trace) -> None:
    path, live = small_trace
    off = replay_trace(path, {"compact_policy": "off"})
    assert off.mm_stat == live
    # interval:0 compacts at every tick of the daemon's timer (5 ms of trace time)
    busy = replay_trace(path, {"compact_policy": "interval:0"})
    again = replay_trace(path, {"compact_policy": "interval:0"})
    assert busy.mm_stat["pages_compacted"] > off.mm_stat["pages_compacted"]
    assert busy.mm_stat == again.mm_stat  # trace time, not wall time
    thr = replay_trace(path, {"compact_policy": "threshold:1", "compact_interval": "1"})
    assert thr.mm_stat["pages_compacted"] > off.mm_stat["pages_compacted"]


def test_on_sample_follows_trace_time(small_trace) -> None:
    path, _ = small_trace
    seen: list[tuple[float, int]] = []
    r = replay_trace(
        path,
        {},
        sample_interval=0.05,
        on_sample=lambda t, dev: seen.append((t, mm_stat_of(dev)["orig_data_size"])),
    )
    times = [t for t, _ in seen]
    assert times == sorted(times) and len(seen) >= 2
    assert times[-1] == pytest.approx(r.trace_seconds)
    assert all(b - a == pytest.approx(0.05) for a, b in zip(times[:-2], times[1:-1]))
    assert seen[-1][1] == r.mm_stat["orig_data_size"]


def _reference_run(r: _Replay, records, on_sample, sample_ns: int) -> None:
    """`_Replay.run` spelled with its references: `advance` before every record, `apply`
    for all but writes, `_measure` after, state on the object throughout."""
    next_sample = 0
    for rec in records:
        t = rec[1]
        if on_sample is not None:
            while next_sample <= t:
                r.advance(next_sample)
                if r.dev is not None:
                    on_sample(next_sample / 1e9, r.dev)
                next_sample += sample_ns
        r.advance(t)
        if rec[0] == T_WRITE:
            if rec[2] == r.dev_id and r.dev is not None:
                try:
                    r.dev.write(rec[4], rec[5])
                except ZramError:
                    r.write_failures += 1
        else:
            r.apply(rec)
        r._measure()
        r.records += 1
        r.overlapping += rec[3] & F_OVERLAP


def _replay_state(path: Path, config: dict[str, str], sample_ns: int, reference: bool) -> dict:
    samples: list[tuple[float, dict[str, int]]] = []
    with TraceReader(path) as reader:
        r = _Replay(reader, parse_config(config), 0, config)
        on_sample = (lambda t, dev: samples.append((t, mm_stat_of(dev)))) if sample_ns else None
        run = functools.partial(_reference_run, r) if reference else r.run
        run(reader.raw_records(), on_sample, sample_ns or 1)
    fields = ("t_ns", "now_s", "area", "last_used", "peak", "records", "overlapping")
    c = r.dev.stats().counters if r.dev is not None else None
    return {
        **{name: getattr(r, name) for name in fields},
        "write_failures": r.write_failures,
        "mm_stat": mm_stat_of(r.dev),
        # what reads, writes, discards and flushes count (not their times)
        "io_stat": None if r.dev is None else format_io_stat(r.dev),
        "ios": None if c is None else [c[i] for i in _COUNTED],
        "samples": samples,
    }


_COUNTED = (READ_IOS, READ_SECTORS, WRITE_IOS, WRITE_SECTORS, FLUSH_IOS, NOTIFY_FREE)


@pytest.mark.parametrize(
    ("config", "sample_ns"),
    [
        ({}, 0),
        ({}, 3_000_000),
        ({"compact_policy": "interval:0"}, 0),
        ({"compact_policy": "threshold:1", "compact_interval": "1"}, 7_000_000),
        ({"mem_limit": "2M"}, 0),
    ],
)
def test_the_replay_loop_agrees_with_its_references(small_trace, config, sample_ns) -> None:
    """The loop's inline copies (the write, `_account`, `_measure`, its state in locals)
    against the same replay through the methods they copy: every figure, bit for bit."""
    path, _ = small_trace
    ours = _replay_state(path, config, sample_ns, reference=False)
    assert ours == _replay_state(path, config, sample_ns, reference=True)
    assert ours["records"] > 4000 and ours["area"] > 0 and ours["ios"][0] > 500  # reads
    assert bool(ours["samples"]) == bool(sample_ns)
    if "mem_limit" in config:
        assert ours["write_failures"] > 0


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("chain_sise", "8", "unknown setting 'chain_sise'"),
        ("chain_size", "3", "4..16"),
        ("chain_size", "eight", "not an integer"),
        ("algorithm", "lz5", "unknown algorithm"),
        ("chain_rule", "best", "max-used"),
        ("compact_policy", "sometimes", "unknown policy"),
        ("compact_policy", "threshold", "needs a value"),
        ("mem_limit", "lots", "a size"),
        ("compact_interval", "-1", "milliseconds"),
    ],
)
def test_bad_settings_are_one_line_errors(small_trace, name: str, value: str, words: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        validate_setting(name, value)
    msg = str(info.value)
    assert words in msg and "\n" not in msg
    assert isinstance(info.value, InvalidInput) and info.value.errno == 22
    calls: list[float] = []
    with pytest.raises(InvalidSetting):
        replay_trace(
            small_trace[0],
            {"chain_size": "4", name: value},
            on_sample=lambda t, dev: calls.append(t),
        )
    assert calls == []


def test_settings_are_listed_with_help() -> None:
    for name in ("algorithm", "chain_size", "chain_rule", "compact_policy", "mem_limit"):
        assert name in SETTINGS and SETTINGS[name].help
    assert validate_setting("mem_limit", "64M") == 64 << 20
    assert validate_setting("compact_policy", "threshold:0x10") == "threshold:16"


def test_bad_device_and_sample_interval(small_trace) -> None:
    with pytest.raises(InvalidSetting, match="zramN"):
        replay_trace(small_trace[0], {}, device="sda")
    with pytest.raises(InvalidSetting, match="sample_interval"):
        replay_trace(small_trace[0], {}, sample_interval=0)
    # a device the trace never had: nothing on it
    assert replay_trace(small_trace[0], {}, device="zram3").mm_stat["orig_data_size"] == 0


FIO_JOB = """\
[global]
filename={image}
direct=1
bs=4k
iodepth=1
size=24M
buffer_compress_percentage=65
refill_buffers=1
randrepeat=1
randseed={seed}

[write]
ioengine=psync
rw=randwrite
number_ios={ios}

[trim]
stonewall
ioengine=falloc
rw=randtrim
number_ios={trims}

[read]
stonewall
ioengine=psync
rw=randread
number_ios={reads}
"""


def _fio(image: Path, tmp: Path, *, seed: int, ios: int, size: str) -> None:
    job = tmp / f"job{seed}.fio"
    job.write_text(
        FIO_JOB.format(image=image, seed=seed, ios=ios, trims=ios // 5, reads=ios // 10, size=size)
    )
    res = subprocess.run(
        ["fio", str(job), "--output-format=terse"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr


def _live_vs_replay(zmount, tmp_path: Path, ios: int, disksize: str, region: str) -> None:
    path = tmp_path / "fio.trace"
    m = zmount("--size", disksize, "--algorithm", "lz4", "--no-compact", "--trace", str(path))
    _fio(m.image(), tmp_path, seed=1, ios=ios, size=region)
    m.write_attr("compact", "1")
    m.write_attr("mem_limit", "256M")
    _fio(m.image(), tmp_path, seed=2, ios=ios // 2, size=region)
    m.write_attr("compact", "1")
    live = m.mm_stat()
    m.close()  # clean exit: the END record
    r = replay_trace(path, {})
    assert r.trace_complete and r.overlapping == 0  # fio at QD1: one change at a time
    assert list(r.mm_stat.values()) == live
    assert r.mm_stat["pages_compacted"] > 0 and r.mm_stat["orig_data_size"] > 0
    chain8 = replay_trace(path, {"chain_size": "8"})
    assert chain8.mm_stat["mem_used_total"] != r.mm_stat["mem_used_total"]


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_run_on_a_mount_replays_exactly(zmount, tmp_path: Path) -> None:
    _live_vs_replay(zmount, tmp_path, ios=1500, disksize="32M", region="24M")


@pytest.mark.soak
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_run_on_a_mount_replays_exactly_soak(zmount, tmp_path: Path) -> None:
    _live_vs_replay(zmount, tmp_path, ios=40000, disksize="192M", region="160M")


def test_recorded_policy_replays_the_daemons_compactions(tmp_path: Path) -> None:
    """A mount whose daemon compacted on its own: `compact_policy=recorded` compacts where
    the trace says the daemon did, and gives the live mm_stat."""
    from zramfs.daemon import CompactionDaemon, CompactionPolicy, SimulatedPressure

    path = tmp_path / "bg.trace"
    registry = Registry(num_devices=1)
    tree = Tree(registry)
    daemon = CompactionDaemon(
        registry, CompactionPolicy().with_spec("threshold:1"), pressure=SimulatedPressure(0.0)
    )
    tracer = MountTracer(TraceWriter(path, {**MOUNT, "compact_policy": "threshold:1"}))
    tracer.attach(registry, tree, daemon)
    dev = registry.devices[0]
    tracer.store(dev, "disksize", "16M")
    rnd = random.Random(4)
    words = [rnd.randbytes(16) for _ in range(60)]
    for i in range(2000):
        k = rnd.randrange(1, 230)
        dev.write(
            rnd.randrange(4096) * 4096,
            (b"".join(rnd.choice(words) for _ in range(k)) + bytes(4096))[:4096],
        )
        if i % 2 == 0:
            dev.discard(rnd.randrange(4096) * 4096, 8192)
        if i % 400 == 399:
            daemon.scan_once()  # the daemon's tick, at a point the trace records
    live = mm_stat_of(dev)
    tracer.close()
    assert live["pages_compacted"] > 0
    assert replay_trace(path, {"compact_policy": "recorded"}).mm_stat == live
    assert replay_trace(path, {"compact_policy": "off"}).mm_stat["pages_compacted"] == 0


def test_hot_add_reset_and_hot_remove_are_replayed(tmp_path: Path) -> None:
    """A device created by reading hot_add, written, reset, reconfigured and written again
    replays on its own (device="zram1"); after hot_remove it is gone."""
    path = tmp_path / "hot.trace"
    registry = Registry(num_devices=1)
    tree = Tree(registry)
    tracer = MountTracer(TraceWriter(path, dict(MOUNT)))
    tracer.attach(registry, tree)
    assert tree.read_file(tree.lookup("/sys/class/zram-control/hot_add")) == b"1\n"

    def attr(name: str, text: bytes) -> None:
        tree.write_file(tree.lookup(f"/sys/block/zram1/{name}"), text)

    dev = registry.devices[1]
    rnd = random.Random(9)
    words = [rnd.randbytes(16) for _ in range(30)]

    def fill(n: int) -> None:
        for _ in range(n):
            k = rnd.randrange(1, 200)
            page = (b"".join(rnd.choice(words) for _ in range(k)) + bytes(4096))[:4096]
            dev.write(rnd.randrange(2048) * 4096, page)

    attr("comp_algorithm", b"zstd")
    attr("disksize", b"8M")
    fill(500)
    attr("reset", b"1")
    attr("comp_algorithm", b"lz4")
    attr("disksize", b"8M")
    attr("mem_limit", b"1M")
    fill(700)
    live = mm_stat_of(dev)
    tracer.close()
    assert live["mem_limit"] == 1 << 20
    r = replay_trace(path, {}, device="zram1")
    assert r.mm_stat == live and r.config["algorithm"] == "lz4"
    assert replay_trace(path, {}, device="0").mm_stat["orig_data_size"] == 0

    path2 = tmp_path / "removed.trace"
    registry = Registry(num_devices=2)
    tree = Tree(registry)
    tracer = MountTracer(TraceWriter(path2, {**MOUNT, "devices": 2}))
    tracer.attach(registry, tree)
    dev = registry.devices[1]
    tree.write_file(tree.lookup("/sys/block/zram1/disksize"), b"8M")
    fill(100)
    tree.write_file(tree.lookup("/sys/class/zram-control/hot_remove"), b"1")
    tracer.close()
    assert replay_trace(path2, {}, device="zram1").mm_stat == dict.fromkeys(MM_STAT_FIELDS, 0)


def test_peak_and_counts_of_a_fill(tmp_path: Path) -> None:
    """A trace that only fills fresh blocks: the pool never shrinks, so the replay's peak
    (measured after every record, inline in the replay loop) is the device's own
    mem_used_max and its final mem_used_total; every record is counted."""
    path = tmp_path / "fill.trace"
    registry = Registry(num_devices=1)
    tree = Tree(registry)
    tracer = MountTracer(TraceWriter(path, dict(MOUNT)))
    tracer.attach(registry, tree)
    dev = registry.devices[0]
    tracer.store(dev, "disksize", "8M")
    rnd = random.Random(3)
    blocks = rnd.sample(range(2048), 700)
    for b in blocks:
        dev.write(b * 4096, rnd.randbytes(rnd.randrange(64, 3000)).ljust(4096, b"\0"))
    live = mm_stat_of(dev)
    tracer.close()
    r = replay_trace(path, {})
    assert r.mm_stat == live
    assert r.peak_mem_used == live["mem_used_max"] == live["mem_used_total"] > 0
    assert r.records == len(blocks) + 1 and r.write_failures == 0  # the writes and disksize


def test_a_replay_frees_its_device_before_it_returns(small_trace) -> None:
    """The replayed device's object graph is cyclic (circular fullness lists): replay_trace
    collects it after its `seconds`, so the next replay in the process does not pay for it."""
    import gc

    trace, _ = small_trace
    gc.collect()
    replay_trace(trace, {})
    assert gc.collect() < 50  # the device alone is thousands of objects
