"""Smoke tests for scripts/bench.py (the scripts/bench/ package), the side-by-side fio
benchmark, so it cannot rot.

- the lock_stat / fio-JSON parsers on fixed inputs (no FUSE needed);
- a ``--quick`` run on tiny images, zramfs-lz4 and nullfs only, one round, a subset of the jobs
  that still covers every code path (fio read/write/mixed/numjobs, the real-data image writer,
  mm_stat, lock_stat, the Markdown/JSON/PNG outputs);
- SIGTERM in the middle of a run: the harness unmounts everything it mounted and exits 130;
- the ``server-cpu`` subcommand against a null-backend mount.

The runs need root, /dev/fuse and fio; they skip without them (a missing FUSE fails instead when
ZRAMFS_REQUIRE_FUSE=1, as in CI). Together well under 60 s.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

# The harness (scripts/bench) is interpreted in either build; the servers it starts are the
# compiled pass's business: the pure pass of scripts/test.sh need not run it again.
pytestmark = pytest.mark.same_in_both_builds

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench.py"
PACKAGE = REPO / "scripts" / "bench"


def _load(module: str) -> ModuleType:
    """``bench.<module>`` of the harness package, imported as its entry point imports it (the
    package is not installed: it lives in scripts/)."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench", PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)]
        )
        assert spec and spec.loader
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = pkg  # submodules and dataclasses look the package up by name
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"bench.{module}")


def _need_run() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root"
    elif not os.path.exists("/dev/fuse"):
        problem = "needs /dev/fuse"
    if problem:
        if os.environ.get("ZRAMFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"FUSE required (ZRAMFS_REQUIRE_FUSE=1) but unavailable: {problem}")
        pytest.skip(problem)
    if shutil.which("fio") is None:
        pytest.skip("needs fio")


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if prefix in line.split()[1]]


def _assert_torn_down(stdout: str, line_start: str) -> None:
    """The run's working directory (from its ``LINE_START IMAGE`` progress line) has nothing
    mounted under it and is gone; this run's mounts only: another benchmark may be running."""
    workdir = next(
        line.split()[2].split("/zramfs-lz4/")[0]
        for line in stdout.splitlines()
        if line.startswith(line_start)
    )
    assert "zramfs-bench." in workdir and not _mounts_under(workdir), stdout
    assert not os.path.exists(workdir)


LOCK_STAT = """lock_stat version 0.4
------------------------------------------------------------------------------------------------
                              class name    contentions   waittime-min   waittime-max waittime-total   waittime-avg   acquisitions
------------------------------------------------------------------------------------------------

                  &pool->migrate_lock-W:              3           1.50          20.25          30.00          10.00             12
                                                     --------------
                    &pool->migrate_lock              3          [compact]

                  &pool->migrate_lock-R:              0           0.00           0.00           0.00           0.00           4567
                              PG_locked:              0           0.00           0.00           0.00           0.00             99
"""


def test_parsers() -> None:
    b = _load("readings")
    rows = b.parse_lock_stat(LOCK_STAT)
    assert rows["&pool->migrate_lock-W"] == {
        "contentions": 3,
        "wait_max_us": 20.25,
        "wait_total_us": 30.0,
        "acquisitions": 12,
    }
    assert rows["&pool->migrate_lock-R"]["acquisitions"] == 4567
    assert rows["PG_locked"]["acquisitions"] == 99
    d = b.lock_delta(
        {
            "PG_locked": {
                "contentions": 0,
                "wait_total_us": 0.0,
                "wait_max_us": 0.0,
                "acquisitions": 90,
            }
        },
        rows,
    )
    assert d["PG_locked"]["acquisitions"] == 9 and d["&pool->migrate_lock-W"]["contentions"] == 3
    fio = {
        "jobs": [
            {
                "read": {
                    "total_ios": 70,
                    "iops": 700.0,
                    "bw_bytes": 2867200,
                    "clat_ns": {"percentile": {"99.000000": 150000}},
                },
                "write": {
                    "total_ios": 30,
                    "iops": 300.0,
                    "bw_bytes": 1228800,
                    "clat_ns": {"percentile": {"99.000000": 250000}},
                },
            }
        ]
    }
    s = _load("jobs").summarise_fio(fio)
    assert s["iops"] == 1000.0 and s["p99_us"] == 150.0 and s["p99_write_us"] == 250.0
    size = _load("cli").image_size_arg
    assert size("1") == 4096 and size("16M") == 16 << 20 and size("1GiB") == 1 << 30
    for bad in ("0", "x", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)


def test_settle_defaults_and_bad_value() -> None:
    """Idle time before each run: the default for a full run, none for --quick, and a
    negative value refused before anything is mounted."""
    b = _load("cli")
    assert b.DEFAULT_SETTLE_S > 0
    assert b.make_parser().parse_args([]).settle is None  # main() fills in the default
    with pytest.raises(SystemExit, match="--settle must be >= 0"):
        b.main(["--settle", "-1", "--out", "/nonexistent/never-created"])


def test_profile_summary(tmp_path: Path) -> None:
    b = _load("profile")
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "FUSE._wrapper (mfusepy.py:1487);FUSE.write (mfusepy.py:1633);ZramFS.write (zramfs/fs.py:350);"
        "ZramDevice.write (zramfs/device.py:620);Lz4Codec.compress (zramfs/codecs.py:125) 3\n"
        "FUSE._wrapper (mfusepy.py:1487);FUSE.write (mfusepy.py:1633);"
        "string_at (ctypes/__init__.py:519) 1\n"
    )
    s = b.summarise_profile(raw)
    assert s["samples"] == 4
    assert dict(s["categories"]) == {"codec": 75.0, "FUSE binding": 25.0}
    assert s["self"][0] == ("Lz4Codec.compress (zramfs/codecs.py)", 75.0)


def test_quick_run(tmp_path: Path) -> None:
    _need_run()
    out = tmp_path / "out"
    jobs = "randwrite-4k,randread-4k-4j,seqread-128k,randrw-70-30,real-write-128k,real-randread-4k"
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--size",
            "8M",
            "--systems",
            "zramfs-lz4,nullfs",
            "--rounds",
            "1",
            "--jobs",
            jobs,
            "--settle",
            "0.1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert time.monotonic() - t0 < 60, p.stdout
    _assert_torn_down(p.stdout, "bench: zramfs-lz4: ")
    assert p.stdout.count("round 1/1") == 12, p.stdout  # one progress line per job run
    report = json.loads((out / "results.json").read_text())
    for job in jobs.split(","):
        per = report["summary"][job]
        assert set(per) == {"zramfs-lz4", "nullfs"}, (job, per)
        for row in per.values():
            assert row["iops"]["median"] > 0 and row["mbps"]["median"] > 0
            if job != "real-write-128k":  # 8 MiB written in a few ms: below the tick
                assert row["cpu_us_per_io"]["median"] > 0  # the server's CPU time per I/O
        assert per["zramfs-lz4"]["ratio_to_ref"] == 1.0
    mm = report["memory"]["zramfs-lz4"]["mm_stat"]
    assert mm["orig_data_size"] > 0 and 0 < mm["compr_data_size"] < mm["orig_data_size"]
    assert report["memory"]["zramfs-lz4"]["rss_kib"]["zramfs"] > 0
    assert "randwrite-4k" in report["migrate_lock"]
    assert report["options"]["settle"] == 0.1
    md = (out / "results.md").read_text()
    assert "0.1 s idle before each run" in md
    assert "| job | system | IOPS | MB/s | p99 µs | server CPU µs/IO | × zramfs-lz4 |" in md
    assert "### Targets" in md and "### Memory after the real-data image" in md
    assert (out / "jobs" / "randwrite-4k.fio").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart" in p.stdout
    else:
        assert (out / "results.png").stat().st_size > 1000


def test_sigterm_tears_down(tmp_path: Path) -> None:
    _need_run()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--size",
            "8M",
            "--runtime",
            "60",
            "--systems",
            "zramfs-lz4,nullfs",
            "--jobs",
            "randread-4k",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workdir = None
    lines = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("bench: zramfs-lz4: ") and workdir is None:
                workdir = line.split()[2].split("/zramfs-lz4/")[0]
            if line.startswith("bench: prefilled nullfs"):
                time.sleep(1.0)  # fio is running its 60 s job now
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert workdir and _mounts_under(workdir), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert not _mounts_under(workdir), "".join(lines) + rest
    assert not os.path.exists(workdir)


def test_server_cpu_on_a_null_mount(zmount) -> None:
    """The server-cpu subcommand: per-thread CPU per I/O of a server we start by hand (the
    fixture's foreground ``zramfs mount --backend null``, unmounted after)."""
    _need_run()
    m = zmount("--backend", "null", "--size", "8M")
    p = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "server-cpu",
            str(m.proc.pid),
            str(m.image()),
            "--jobs",
            "randwrite-4k,randread-4k",
            "--runtime",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    for job in ("randwrite-4k", "randread-4k"):
        assert f"{job}: ios=" in p.stdout, p.stdout
    assert p.stdout.count("  total user ") == 2, p.stdout


def test_device_128k_reports_the_write_outside_the_codec() -> None:
    """``device-128k`` on a few requests of one tree: the three figures per page, the replay
    round's data checked with the rest (no FUSE needed)."""
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "device-128k", "--pages", "96", "--rounds", "1"]
        + ["--codecs", "lz4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    line = next(x for x in p.stdout.splitlines() if " lz4: " in x)
    figures = dict(
        (part.rsplit(" ", 2)[0], float(part.rsplit(" ", 2)[1]))
        for part in line.split(": ", 1)[1].split(", ")
    )
    assert set(figures) == {"128 KiB write", "128 KiB read", "write outside the codec"}, line
    # no order between them: on 96 pages a prefault chunk (the process's CPU) can land in any
    assert all(v > 0 for v in figures.values()), line


def test_device_128k_replay_that_falls_out_of_step_stops() -> None:
    """A replay codec left with outputs (the device compressed fewer pages than counted)
    stops the run instead of timing the wrong work."""
    dev_mod = _load("device")
    pages = [bytes([k]) * 8 + bytes(range(256)) * 15 + bytes(248) for k in range(32)]
    reqs = [b"".join(pages)]
    dev = dev_mod.new_device(REPO, "lz4", 32, 1 << 12)
    try:
        real = dev._meta.comps[0]
        outs = [real.compress(pg) for pg in pages]
        assert dev_mod._replay_round(dev, reqs, outs) >= 0  # in step: exactly consumed
        assert dev.read(0, len(reqs[0])) == reqs[0]
        with pytest.raises(SystemExit, match="fell out of step"):
            dev_mod._replay_round(dev, reqs, outs + outs[:1])
        assert dev._meta.comps[0] is real  # put back either way
    finally:
        dev.reset()


def test_daemon_ab_helpers() -> None:
    """``daemon-ab``'s order rotation, policy list and ratios on fixed figures (no FUSE)."""
    d = _load("daemon_ab")
    states = ["off", "shrinker", "threshold:64"]
    orders = [d.rotated(states, r) for r in range(3)]
    assert [o[0] for o in orders] == states  # each state runs first once in three rounds
    assert d.policy_list("threshold:0x40, shrinker") == ["threshold:64", "shrinker"]
    for bad in ("bogus", "off", "shrinker,shrinker", "threshold:"):
        with pytest.raises(argparse.ArgumentTypeError):
            d.policy_list(bad)

    def run(iops: float, cpu: float, compactions: int = 0, freed: int = 0) -> dict[str, float]:
        return {
            "iops": iops,
            "cpu_us_per_io": cpu,
            "compactions": compactions,
            "pages_freed": freed,
            "daemon_cpu_us": 1000.0 * compactions,  # 1 ms a pass
            "io_wait_us": 500.0 * compactions,
            "wall_s": 2.0,
        }

    runs = {
        "randwrite-4k": {
            "off": [run(100, 20), run(200, 20), run(100, 25)],
            "shrinker": [run(104, 20), run(180, 22), run(101, 25)],
            "threshold:64": [run(90, 30, 2, 30), run(150, 24, 1, 5), run(80, 25, 1, 0)],
        }
    }
    row = d.summarise(runs, states)["randwrite-4k"]
    assert row["off_iops"] == 100 and row["off"]["compactions"] == 0
    assert row["shrinker"]["ratio"] == pytest.approx(1.01)  # median of 1.04, 0.90, 1.01
    assert (row["shrinker"]["ratio_min"], row["shrinker"]["ratio_max"]) == (0.9, 1.04)
    assert row["shrinker"]["cpu_ratio"] == 1.0  # median of 1.0, 1.1, 1.0
    t = row["threshold:64"]
    assert (t["ratio"], t["cpu_ratio"], t["compactions"], t["pages_freed"]) == (0.8, 1.2, 4, 35)
    # 4 ms of the daemon's CPU over 6 s of runs; 2 ms of I/O waiting on migrate_lock
    assert t["daemon_cpu_share"] == pytest.approx(4e-3 / 6) and t["io_wait_ms"] == 2.0
    text = d.table(d.summarise(runs, states), states)
    assert (
        "| randwrite-4k | 100 | 1.010 (0.90–1.04) | 1.000 | 0.000% | 0.0 ms | 0 (0) "
        "| 0.800 (0.75–0.90) | 1.200 | 0.067% | 2.0 ms | 4 (35) |" in text
    ), text
    assert "shrinker: IOPS within 5% of off on 1 of 1 jobs; the daemon's CPU at most 0.000%" in text
    assert (
        "threshold:64: IOPS within 5% of off on 0 of 1 jobs (not: randwrite-4k); the daemon's "
        "CPU at most 0.067% of a core; I/O waited 2.0 ms on migrate_lock in its runs (off: 0.0 ms)"
    ) in text


def test_daemon_ab_quick_run(tmp_path: Path) -> None:
    """One mount, the policy switched between runs: the interval policy compacts in its runs,
    off in none; a real-data job runs after the synthetic one; the report and the JSON say so;
    nothing is left mounted."""
    _need_run()
    out = tmp_path / "dab.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "daemon-ab", "--size", "8M", "--runtime", "1"]
        + ["--rounds", "1", "--jobs", "real-write-128k,randwrite-4k", "--settle", "0.3"]
        + ["--policies", "interval:100", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    _assert_torn_down(p.stdout, "bench: daemon-ab: ")
    report = json.loads(out.read_text())
    assert report["options"]["states"] == ["off", "interval:100"]
    runs = report["runs"]["randwrite-4k"]
    assert runs["off"][0]["compactions"] == 0 and runs["off"][0]["iops"] > 0
    assert runs["off"][0]["cpu_us_per_io"] > 0  # the server's CPU over fio's I/Os
    assert runs["interval:100"][0]["compactions"] > 0, p.stdout  # ~10 passes in 1 s
    assert runs["interval:100"][0]["daemon_cpu_us"] > 0 and runs["off"][0]["daemon_cpu_us"] == 0
    assert report["options"]["jobs"] == ["randwrite-4k", "real-write-128k"]  # the full run's order
    real = report["runs"]["real-write-128k"]["off"][0]
    assert real["ios"] == 64 and real["cpu_us_per_io"] > 0  # 8 MiB of real files, 128 KiB a write
    assert "| randwrite-4k |" in p.stdout and "| real-write-128k |" in p.stdout
    assert "interval:100: IOPS within 5% of off on" in p.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "daemon-ab", "--policies", "off"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "off is always run" in bad.stderr


def test_write_image_shifted_wraps_around(zmount, tmp_path: Path) -> None:
    """``write_image(..., shift)``: the device's byte 0 gets the source's byte ``shift`` and the
    source wraps around (daemon-ab's real-rewrite-128k); unshifted it is a plain copy."""
    _need_run()
    realdata = _load("realdata")
    size = 1 << 20
    src = tmp_path / "src.img"
    # no two pages alike: a shift by whole pages shows in every block
    data = bytes(i % 251 for i in range(size // 2)) + random.Random(7).randbytes(size // 2)
    src.write_bytes(data)
    m = zmount("--size", "1M")
    for shift in (0, 7 * 4096, size - 4096, 200 * 4096):
        res = realdata.write_image(src, m.image(), size, shift)
        assert res["bytes"] == size and res["ios"] == 8
        assert m.image().read_bytes() == data[shift:] + data[:shift], shift
