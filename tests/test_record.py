"""zramfs record: the record file of a real mount, device_sample against the mount
sampler, the CSV export, and bad input (one line on stderr, exit code 2, no file).

The schema is docs/experiments.md's; zramfs/record_schema.py holds its names.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.mountutil import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, REPO, fallocate, write_file
from zramfs import attrs
from zramfs.device import Registry
from zramfs.record import MountSampler, RecordWriter, csv_rows, device_sample, write_csv
from zramfs.record_schema import (
    BLOCK_STAT_FIELDS,
    CLASS_FIELDS,
    DAEMON_PARAMS,
    MM_STAT_FIELDS,
    RecordError,
    flatten,
    lock_stat_delta,
    parse_lock_stat,
    read_record,
)

pytestmark = pytest.mark.fuse
PAGE = 4096


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_record(mnt: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zramfs", "record", str(mnt), "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=str(REPO),
    )


def samples_in(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if line.endswith("}") and '"type":"sample"' in line)


def wait_samples(path: Path, n: int, timeout: float = 20.0) -> None:
    """Until ``n`` more samples than now are in the file."""
    goal = samples_in(path) + n
    deadline = time.monotonic() + timeout
    while samples_in(path) < goal:
        assert time.monotonic() < deadline, f"no new sample in {path}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def page(rnd: random.Random) -> bytes:
    """A page that compresses to a size spread over many classes."""
    n = rnd.randrange(64, PAGE)
    return rnd.randbytes(n // 2) + bytes(PAGE - n // 2)


def ints(text: str) -> list[int]:
    return [int(w) for w in text.replace("version:", "").split()]


def class_rows(text: str) -> list[list[int]]:
    rows = [
        [int(w) for w in line.split()]
        for line in text.splitlines()
        if line.split() and line.split()[0].isdigit()
    ]
    return [r for r in rows if any(r[2:7]) or r[8]]


# ---- end to end ------------------------------------------------------------------------------
def test_record_a_mount(zmount, tmp_path: Path) -> None:
    """Writes with discards and an explicit compaction while recording, hot_add / disksize /
    reset / hot_remove of a second device: events in the stream, and the last sample (taken
    on a quiet mount) equals what the attribute files say."""
    m = zmount("--size", "32M", "--compact-policy", "off")
    out = tmp_path / "rec.jsonl"
    proc = start_record(m.path, out, "--interval", "0.1")
    try:
        wait_samples(out, 1)
        rnd = random.Random(14)
        fd = os.open(m.image(0), os.O_RDWR)
        try:
            for i in range(600):
                os.pwrite(fd, page(rnd), i * PAGE)
            for i in rnd.sample(range(600), 400):
                fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * PAGE, PAGE)
        finally:
            os.close(fd)
        m.write_attr("compact", "1")
        wait_samples(out, 2)
        new = int((m.path / "sys/class/zram-control/hot_add").read_text())
        assert new == 1
        wait_samples(out, 2)
        m.write_attr("disksize", "8M", dev=1)
        wait_samples(out, 2)
        m.write_attr("reset", "1", dev=1)
        wait_samples(out, 2)
        write_file(m.path / "sys/class/zram-control/hot_remove", "1")
        wait_samples(out, 2)
        code, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err
    assert "samples in" in err

    rec = read_record(out)
    assert rec.header["schema"] == "zramfs-record" and rec.header["version"] == 1
    assert rec.header["source"] == f"mount:{m.path}"
    assert rec.header["interval"] == 0.1
    cfg = rec.header["config"]
    assert cfg["chain_size"] == m.param("chain_size") and cfg["compact_policy"] == "off"
    assert cfg["algorithm"] == "lz4" and cfg["disksize"] == 32 << 20
    assert rec.ended is not None and rec.ended["reason"] == "signal"
    (series,) = rec.series.values()
    assert rec.ended["samples"] == len(series.samples)
    events = [(e["event"], e["device"]) for e in series.events]
    assert events == [
        ("device_added", "zram1"),
        ("device_initialised", "zram1"),
        ("device_reset", "zram1"),
        ("device_removed", "zram1"),
    ]
    times = [s["t"] for s in series.samples]
    assert times == sorted(times) and times[0] < 0.5
    assert any("zram1" in s["devices"] for s in series.samples)
    assert "zram1" not in series.samples[-1]["devices"]
    compacted = [s["devices"]["zram0"]["mm_stat"]["pages_compacted"] for s in series.samples]
    assert compacted[0] == 0 and compacted[-1] > 0, "the compaction freed nothing"

    # the last sample against the files, read and split here without the record's parsers
    last = series.samples[-1]
    dev = last["devices"]["zram0"]
    sysfs = m.sysfs(0)
    assert [dev["mm_stat"][f] for f in MM_STAT_FIELDS] == ints(m.read_attr("mm_stat"))
    assert list(dev["io_stat"].values()) == ints(m.read_attr("io_stat"))
    assert list(dev["bd_stat"].values()) == ints(m.read_attr("bd_stat"))
    assert list(dev["debug_stat"].values()) == ints(m.read_attr("debug_stat"))
    assert [dev["stat"][f] for f in BLOCK_STAT_FIELDS] == ints((sysfs / "stat").read_text())
    assert dev["disksize"] == 32 << 20 and dev["initstate"] == 1
    assert dev["comp_algorithm"] == "lz4"
    table = (m.path / "sys/kernel/debug/zsmalloc/zram0/classes").read_text()
    assert [[r[f] for f in CLASS_FIELDS] for r in dev["classes"]] == class_rows(table)
    assert len(dev["classes"]) > 5
    for name in DAEMON_PARAMS:
        if name == "compact_cpu_us":  # the shrinker's ticks go on after the last sample
            assert 0 <= last["daemon"][name] <= int(m.param(name))
        else:
            assert last["daemon"][name] == int(m.param(name))
    vm = dict(line.split() for line in (m.path / "proc/vmstat").read_text().splitlines())
    assert last["vmstat"]["pgalloc_normal"] == int(vm["pgalloc_normal"])
    # lock_stat deltas add up: migrate_lock's read side was taken by every stored page
    taken = sum(
        s["lock_stat"].get("&pool->migrate_lock-R", {}).get("acquisitions", 0)
        for s in series.samples
    )
    assert taken >= 600
    assert time.time() - 60 < last["time"] <= time.time()


def test_device_sample_equals_mount_sampler(zmount) -> None:
    """The same history (4 KiB writes, hole punches, compaction) on a mounted device and on an
    in-process twin: device_sample(twin) == the mount sampler's object, bar the block layer's
    times (milliseconds spent, which differ between any two runs)."""
    m = zmount("--size", "16M", "--compact-policy", "off")
    twin = Registry().devices[0]
    attrs.store(twin, "disksize", "16M")
    twin.open()
    rnd = random.Random(5)
    fd = os.open(m.image(0), os.O_RDWR)
    try:
        for i in range(300):
            data = page(rnd)
            os.pwrite(fd, data, i * PAGE)
            twin.write(i * PAGE, data)
        for i in rnd.sample(range(300), 200):
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * PAGE, PAGE)
            twin.punch_hole(i * PAGE, PAGE)
    finally:
        os.close(fd)
    m.write_attr("compact", "1")
    attrs.store(twin, "compact", "1")
    mounted = MountSampler(m.path).read_device("zram0")
    inproc = device_sample(twin)
    timed = {"read_ticks", "write_ticks", "io_ticks", "time_in_queue"}
    for d in (mounted, inproc):
        assert d is not None
        for k in timed:
            d["stat"].pop(k)
    assert mounted == inproc
    assert inproc["mm_stat"]["pages_compacted"] > 0 and inproc["classes"]


def test_device_sample_uninitialised() -> None:
    dev = Registry().devices[0]
    s = device_sample(dev)
    assert s["initstate"] == 0 and s["classes"] == []
    assert set(s["mm_stat"]) == set(MM_STAT_FIELDS) and not any(s["mm_stat"].values())


def test_duration_sigterm_and_csv(zmount, tmp_path: Path) -> None:
    """--duration ends the recording by itself; SIGTERM ends it like SIGINT; --csv writes the
    companion, one row per sample per device, whose cells read back as the JSON's values."""
    m = zmount("--size", "8M", "--devices", "2")
    out = tmp_path / "d.jsonl"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "zramfs",
            "record",
            str(m.path),
            "--out",
            str(out),
            "--interval",
            "0.1",
            "--duration",
            "0.5",
            "--csv",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(REPO),
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    rec = read_record(out)
    assert rec.ended is not None and rec.ended["reason"] == "duration"
    (series,) = rec.series.values()
    assert 4 <= len(series.samples) <= 8
    assert series.samples[-1]["t"] >= 0.5
    # CSV round trip
    columns, rows = csv_rows(out)
    with open(tmp_path / "d.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) == 2 * len(series.samples)
    assert list(back[0]) == columns
    for sample_no, sample in enumerate(series.samples):
        for dev_no, name in enumerate(sorted(sample["devices"])):
            row = back[2 * sample_no + dev_no]
            assert row["device"] == name and float(row["t"]) == sample["t"]
            dev = sample["devices"][name]
            for key, value in flatten({k: v for k, v in dev.items() if k != "classes"}):
                assert row[key] == ("" if value is None else str(value)), key
            for key, value in flatten({"vmstat": sample["vmstat"], "daemon": sample["daemon"]}):
                assert row[key] == str(value), key
            assert int(row["classes.obj_used"]) == sum(r["obj_used"] for r in dev["classes"])
    assert "mm_stat.orig_data_size" in columns and "classes.freeable" in columns

    out2 = tmp_path / "term.jsonl"
    proc = start_record(m.path, out2, "--interval", "0.1")
    try:
        wait_samples(out2, 2)
        code, err = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err
    rec2 = read_record(out2)
    assert rec2.ended is not None and rec2.ended["reason"] == "signal"
    # write_csv gives the same file again
    assert write_csv(out, tmp_path / "again.csv") == len(rows)
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "d.csv").read_text()


def test_recorder_killed_leaves_whole_lines(zmount, tmp_path: Path) -> None:
    """SIGKILL: no end line, but every line written is whole and the file reads."""
    m = zmount("--size", "8M")
    out = tmp_path / "k.jsonl"
    proc = start_record(m.path, out, "--interval", "0.05")
    wait_samples(out, 3)
    proc.kill()
    proc.communicate(timeout=20)
    rec = read_record(out)
    assert rec.ended is None
    assert len(next(iter(rec.series.values())).samples) >= 3


# ---- the writer and the readers, in process --------------------------------------------------
def test_writer_with_configuration_keys(tmp_path: Path) -> None:
    dev = Registry().devices[0]
    path = tmp_path / "multi.jsonl"
    with RecordWriter(path, config={"algorithm": "lz4"}, source="replay:t") as w:
        w.add_config("a", {"chain_size": "4"})
        w.add_config("b", {"chain_size": "8"})
        w.sample(0.0, {"zram0": device_sample(dev)}, config_key="a")
        w.sample(0.0, {"zram0": device_sample(dev)}, config_key="b")
        w.sample(0.5, {"zram0": device_sample(dev)}, {"daemon": {}}, config_key="a")
        with pytest.raises(ValueError):
            w.sample(1.0, {}, config_key="c")
        with pytest.raises(ValueError):
            w.add_config("a", {})
    rec = read_record(path)
    assert {k: (s.config, len(s.samples)) for k, s in rec.series.items()} == {
        "a": ({"algorithm": "lz4", "chain_size": "4"}, 2),
        "b": ({"algorithm": "lz4", "chain_size": "8"}, 1),
    }
    assert rec.ended == {"type": "end", "samples": 3, "reason": "closed"}
    # CSV rows: configuration by configuration, each in sample order
    assert [row["config_key"] for row in csv_rows(path)[1]] == ["a", "a", "b"]


def test_lock_stat_deltas() -> None:
    text = (
        "lock_stat version 0.4\n---\n  class name contentions ...\n---\n\n"
        "  &pool->migrate_lock-W:  3  1.00  9.50  12.25  4.08  40\n"
        "                                 --------------\n"
        "  &pool->migrate_lock-W   3          [zs_compact]\n\n"
        "  &class->lock:  0  0.00  0.00  0.00  0.00  7\n"
    )
    before = parse_lock_stat(text)
    assert before["&pool->migrate_lock-W"] == {
        "contentions": 3,
        "wait_min_us": 1.0,
        "wait_max_us": 9.5,
        "wait_total_us": 12.25,
        "wait_avg_us": 4.08,
        "acquisitions": 40,
    }
    after = parse_lock_stat(
        text.replace("  3  1.00  9.50  12.25  4.08  40", "  5  1.00  9.50  20.75  4.15  45")
    )
    assert lock_stat_delta(before, after) == {
        "&pool->migrate_lock-W": {
            "contentions": 2,
            "wait_total_us": 8.5,
            "acquisitions": 5,
            "wait_max_us": 9.5,
        }
    }
    cleared = parse_lock_stat(
        text.replace("  3  1.00  9.50  12.25  4.08  40", "  1  2.00  2.00  2.00  2.00  4")
    )
    assert lock_stat_delta(before, cleared)["&pool->migrate_lock-W"]["acquisitions"] == 4


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--interval", "abc"],
        ["--interval", "0"],
        ["--interval", "-1"],
        ["--interval", "nan"],
        ["--duration", "x"],
        ["--duration", "0"],
        [],
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "r.jsonl"
    full = ["record", str(tmp_path), *args] + (["--out", str(out)] if args else [])
    res = subprocess.run(
        [sys.executable, "-m", "zramfs", *full],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(REPO),
        timeout=30,
    )
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("zramfs record: ")
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing", "plain dir", "out dir missing"])
def test_bad_mount_or_out(zmount, tmp_path: Path, where: str) -> None:
    mnt, out = tmp_path / "nothing", tmp_path / "r.jsonl"
    if where == "plain dir":
        mnt.mkdir()
    elif where == "out dir missing":
        mnt = zmount("--size", "4M").path
        out = tmp_path / "no" / "r.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "zramfs", "record", str(mnt), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(REPO),
        timeout=30,
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("zramfs record: ")
    assert not out.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        ("", "empty file"),
        ('{"schema": "other", "version": 1, "config": {}}\n', "not a zramfs-record file"),
        ('{"schema": "zramfs-record", "version": 2, "config": {}}\n', "version 2"),
        (
            '{"schema": "zramfs-record", "version": 1, "config": {}}\n{"type": "sample", "t": 0, "dev',
            "line 2: not a JSON object",
        ),
        ('{"schema": "zramfs-record", "version": 1, "config": {}}\n', "no sample"),
        (
            '{"schema": "zramfs-record", "version": 1, "config": {}}\n{"type": "sample", "t": 0, '
            '"devices": {"zram0": {"mm_stat": {}}}}\n',
            "mm_stat lacks orig_data_size",
        ),
        (
            '{"schema": "zramfs-record", "version": 1, "config": {}}\n{"type": "sample", "t": 0, '
            '"devices": {}, "config_key": "x"}\n',
            "undeclared config_key",
        ),
    ],
)
def test_read_record_refuses(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=why):
        read_record(path)
    with pytest.raises(RecordError, match="no such file"):
        read_record(tmp_path / "absent.jsonl")


def test_header_line_is_json(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    RecordWriter(path, config={"a": "1"}, source="s").close()
    header, end = (json.loads(line) for line in path.read_text().splitlines())
    assert header["schema"] == "zramfs-record" and header["config"] == {"a": "1"}
    assert end["type"] == "end" and end["samples"] == 0


def test_mount_gone(zmount, tmp_path: Path) -> None:
    """The mount's daemon killed while recording: the recorder stops by itself, the file ends
    with reason "mount gone"."""
    m = zmount("--size", "8M")
    out = tmp_path / "g.jsonl"
    proc = start_record(m.path, out, "--interval", "0.1")
    try:
        wait_samples(out, 2)
        m.proc.kill()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    rec = read_record(out)
    assert rec.ended is not None and rec.ended["reason"] == "mount gone"
