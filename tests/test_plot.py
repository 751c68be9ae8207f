"""zramfs plot: PNGs checked as images (signature, size, not blank), the summary
against the record's numbers, overlays with legends from the differing settings, and bad input
(one line on stderr, exit code 2, nothing written)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from allocator.locks import lock_stat_text
from support.mountutil import REPO
from zramfs import attrs, cli
from zramfs.device import Registry
from zramfs.plot import MISSING_MATPLOTLIB
from zramfs.record import LockStatDeltas, RecordWriter, device_sample
from zramfs.record_schema import MM_STAT_FIELDS, parse_vmstat, read_record

PAGE = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("memory.png", "ratio.png", "compaction.png", "io.png", "locks.png")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def zramfs_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zramfs", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=str(REPO),
        timeout=120,
    )


def check_png(path: Path) -> None:
    """A PNG of some size whose pixels are not all one colour."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 15_000, f"{path}: {len(data)} bytes"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05, f"{path} is blank"


def write_record(path: Path, *, chain_size: int = 4, seed: int = 1) -> None:
    """An in-process history: fill, punch holes in a random part, compact, sampled at each
    step (trace time 0.5 s apart) with vmstat and lock_stat deltas, as a replay records."""
    reg = Registry(chain_size=chain_size)
    dev = reg.devices[0]
    attrs.store(dev, "disksize", "16M")
    dev.open()
    locks = LockStatDeltas(lock_stat_text)
    rnd = random.Random(seed)
    with RecordWriter(
        path, config={"chain_size": str(chain_size), "algorithm": "lz4"}, source="test"
    ) as w:
        t = 0.0

        def sample() -> None:
            nonlocal t
            extra = {"vmstat": parse_vmstat(reg.memory.vmstat_text()), "lock_stat": locks.delta()}
            w.sample(t, {"zram0": device_sample(dev)}, extra)
            t += 0.5

        sample()
        for chunk in range(4):
            for i in range(chunk * 250, (chunk + 1) * 250):
                n = rnd.randrange(64, PAGE)
                dev.write(i * PAGE, rnd.randbytes(n // 2) + bytes(PAGE - n // 2))
            sample()
        for i in rnd.sample(range(1000), 700):
            dev.punch_hole(i * PAGE, PAGE)
        sample()
        attrs.store(dev, "compact", "1")
        sample()
        sample()


def test_plot_a_recorded_mount(zmount, tmp_path: Path) -> None:
    """End to end: zramfs record on a real mount while data is written and compacted, then
    zramfs plot: every PNG written, listed, and an image; the summary's numbers are the
    record's."""
    m = zmount("--size", "16M", "--compact-policy", "off")
    rec_path = tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zramfs",
            "record",
            str(m.path),
            "--out",
            str(rec_path),
            "--interval",
            "0.1",
            "--duration",
            "1.2",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=str(REPO),
    )
    try:
        rnd = random.Random(3)
        fd = os.open(m.image(0), os.O_RDWR)
        try:
            for i in range(800):
                n = rnd.randrange(64, PAGE)
                os.pwrite(fd, rnd.randbytes(n // 2) + bytes(PAGE - n // 2), i * PAGE)
            for i in rnd.sample(range(800), 500):
                os.pwrite(fd, bytes(PAGE), i * PAGE)  # zero pages: same_pages, objects freed
        finally:
            os.close(fd)
        m.write_attr("compact", "1")
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    out = tmp_path / "plots"
    res = zramfs_cmd("plot", str(rec_path), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    written = [Path(line) for line in lines if line.endswith(".png")]
    assert sorted(p.name for p in written) == sorted([*FIGURES, "fragmentation.png"])
    for p in written:
        assert p.parent == out
        check_png(p)
    samples = read_record(rec_path).series[None].samples
    mm = [s["devices"]["zram0"]["mm_stat"] for s in samples]
    (text,) = [line for line in lines if not line.endswith(".png")]
    peak = max(x["mem_used_total"] for x in mm) / (1 << 20)
    ratio = mm[-1]["orig_data_size"] / mm[-1]["compr_data_size"]
    assert f"peak mem_used_total {peak:.2f} MiB" in text
    assert f"final compression ratio {ratio:.2f}" in text
    assert f"pages compacted {mm[-1]['pages_compacted']}" in text
    assert mm[-1]["pages_compacted"] > 0


def test_overlay_two_configurations(tmp_path: Path) -> None:
    """Two files of different chain sizes: one set of PNGs, one heatmap each, the legends and
    summary say chain_size=4 and chain_size=8."""
    a, b = tmp_path / "c4.jsonl", tmp_path / "c8.jsonl"
    write_record(a, chain_size=4)
    write_record(b, chain_size=8)
    out = tmp_path / "out"
    res = zramfs_cmd("plot", str(a), str(b), "--out", str(out))
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*FIGURES, "fragmentation-1.png", "fragmentation-2.png"])
    for name in names:
        check_png(out / name)
    summary = [line for line in res.stdout.splitlines() if not line.endswith(".png")]
    assert [line.split(":")[0] for line in summary] == ["chain_size=4", "chain_size=8"]
    # the two configurations' pools differ, and the summary says so
    assert summary[0].split(":", 1)[1] != summary[1].split(":", 1)[1]


def test_same_configuration_twice_is_told_apart_by_file(tmp_path: Path) -> None:
    a, b = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    write_record(a, seed=1)
    write_record(b, seed=2)
    res = zramfs_cmd("plot", str(a), str(b), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    summary = [line for line in res.stdout.splitlines() if not line.endswith(".png")]
    assert [line.split(":")[0] for line in summary] == ["one.jsonl", "two.jsonl"]


def test_file_with_configuration_keys(tmp_path: Path) -> None:
    """One file carrying two configurations (config_key) overlays like two files."""
    path = tmp_path / "multi.jsonl"
    dev4 = Registry(chain_size=4).devices[0]
    dev8 = Registry(chain_size=8).devices[0]
    for dev in (dev4, dev8):
        attrs.store(dev, "disksize", "4M")
        dev.open()
    with RecordWriter(path, config={"algorithm": "lz4"}, source="test") as w:
        w.add_config("c4", {"chain_size": "4"})
        w.add_config("c8", {"chain_size": "8"})
        for step in range(3):
            for key, dev in (("c4", dev4), ("c8", dev8)):
                for i in range(100):
                    dev.write((step * 100 + i) * PAGE, bytes([i]) * 700 + os.urandom(700))
                w.sample(step * 0.5, {"zram0": device_sample(dev)}, config_key=key)
    res = zramfs_cmd("plot", str(path), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    summary = [line for line in res.stdout.splitlines() if not line.endswith(".png")]
    assert [line.split(":")[0] for line in summary] == ["chain_size=4", "chain_size=8"]


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "no such file"),
        ("", "empty file"),
        ("not json\n", "line 1: not a JSON object (truncated?)"),
        (
            '{"schema": "zramfs-trace", "version": 1, "config": {}}\n',
            "not a zramfs-record file (schema 'zramfs-trace')",
        ),
        (
            '{"schema": "zramfs-record", "version": 9, "config": {}}\n',
            "zramfs-record version 9; this zramfs reads version 1",
        ),
        ("TRUNCATED", "line {n}: not a JSON object (truncated?)"),
    ],
)
def test_bad_files(tmp_path: Path, content: str | None, why: str) -> None:
    """A bad FILE among good ones: one line naming it, exit code 2, no directory, no PNG."""
    good = tmp_path / "good.jsonl"
    write_record(good)
    bad = tmp_path / "bad.jsonl"
    if content == "TRUNCATED":  # a recorder killed in the middle of its last sample
        lines = good.read_text().splitlines(keepends=True)
        bad.write_text("".join(lines[:-2]) + lines[-2][:40])
        why = why.format(n=len(lines) - 1)
    elif content is not None:
        bad.write_text(content)
    out = tmp_path / "out"
    res = zramfs_cmd("plot", str(good), str(bad), "--out", str(out))
    assert res.returncode == 2
    assert res.stderr == f"zramfs plot: {bad}: {why}\n"
    assert res.stdout == ""
    assert not out.exists()


def test_bad_arguments(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    write_record(good)
    res = zramfs_cmd("plot", str(good))  # no --out
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    (tmp_path / "file").write_text("x")
    res = zramfs_cmd("plot", str(good), "--out", str(tmp_path / "file"))
    assert res.returncode == 2
    assert res.stderr == f"zramfs plot: {tmp_path / 'file'}: not a directory\n"


def test_without_matplotlib(tmp_path: Path, monkeypatch, capsys) -> None:
    good = tmp_path / "good.jsonl"
    write_record(good)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert cli.main(["plot", str(good), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == MISSING_MATPLOTLIB + "\n"
    assert not (tmp_path / "o").exists()


def test_curves_numbers(tmp_path: Path) -> None:
    """What the figures draw: sums over devices, the heatmap's obj_used / obj_allocated per
    class, and counters that survive a reset (pages_compacted falls back to zero)."""
    from zramfs.plot_figures import curves

    def dev(compacted: int, classes: list[tuple[int, int, int]]) -> dict:
        mm = dict.fromkeys(MM_STAT_FIELDS, 0)
        mm.update(orig_data_size=4096 * 10, compr_data_size=1000, pages_compacted=compacted)
        rows = [
            {"class": 0, "size": size, "obj_used": used, "obj_allocated": alloc}
            for size, used, alloc in classes
        ]
        return {"mm_stat": mm, "classes": rows, "stat": {"write_sectors": 8 * compacted}}

    path = tmp_path / "c.jsonl"
    with RecordWriter(path, config={}, source="test") as w:
        w.sample(0.0, {"zram0": dev(5, [(32, 1, 4)]), "zram1": dev(1, [(32, 3, 4)])})
        w.sample(1.0, {"zram0": dev(7, [(48, 2, 2)]), "zram1": dev(0, [])})  # zram1 was reset
        w.sample(2.0, {"zram0": dev(7, []), "zram1": dev(4, [(32, 0, 8)])})
    c = curves(read_record(path).series[None], "x")
    assert c.mm["orig_data_size"].tolist() == [81920.0] * 3
    assert c.compacted.tolist() == [6.0, 8.0, 12.0]  # 5+1, +2 on zram0, +4 after the reset
    assert c.class_sizes == [32, 48]
    assert c.fill[0].tolist()[0] == 0.5 and c.fill[0].tolist()[2] == 0.0
    assert c.fill[1].tolist()[1] == 1.0
    assert [v != v for v in (c.fill[0][1], c.fill[1][0], c.fill[1][2])] == [True] * 3  # NaN
