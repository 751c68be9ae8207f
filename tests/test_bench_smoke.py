"""Smoke tests: the allocator benchmark (--quick), the allocator demo and the replay
speed-up benchmark (--quick, on a real mount) run and print their figures."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 120) -> str:
    p = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


def test_bench_quick() -> None:
    out = run("scripts/bench_allocator.py", "--quick")
    pair = re.search(r"malloc\+free\s*:\s*([\d,]+) pairs/s\s+([\d.]+) µs/pair", out)
    assert pair, out
    assert float(pair.group(2)) > 0
    assert re.search(r"map\+unmap RO in-frame\s*:\s*[\d.]+ µs", out), out
    assert re.search(r"map\+unmap RO spanning\s*:\s*[\d.]+ µs", out), out
    m = re.search(r"compaction\s*:\s*(\d+) pages freed", out)
    assert m and int(m.group(1)) > 0, out
    assert "target <= 8 µs" in out and "target <= 4 µs" in out
    for label in ("pool total_pages*page_size", "process RSS delta", "dict of bytes (tracemalloc)"):
        assert label in out, out


def test_demo_runs() -> None:
    out = run("scripts/demo_allocator.py", "--pages", "3000")
    assert out.count(" class  size almost_full almost_empty obj_allocated") == 2, out
    m = re.search(r"pool.compact\(\): (\d+) pages freed", out)
    assert m and int(m.group(1)) > 0, out
    m = re.search(r"memory.compact\(\): (\d+) pages migrated", out)
    assert m and int(m.group(1)) > 0, out
    assert "all intact" in out


@pytest.mark.fuse
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_bench_replay_quick_runs_twice_and_summarises() -> None:
    """scripts/bench_replay.py mounts, runs fio, replays, and with --runs 2 prints both runs
    and the summary; every replay reproduced the live mm_stat (exit 0)."""
    out = run("scripts/bench_replay.py", "--quick", "--replays", "1", "--runs", "2", timeout=300)
    assert out.count("mm_stat equal: True") == 2, out
    ups = [float(x) for x in re.findall(r"speed-up:\s+([\d.]+)x", out)]
    assert len(ups) == 2 and all(u > 0 for u in ups), out
    m = re.search(r"speed-ups:\s+min ([\d.]+)x, median ([\d.]+)x, max ([\d.]+)x", out)
    assert m and float(m.group(1)) <= float(m.group(2)) <= float(m.group(3)), out
    lives = [float(x) for x in re.findall(r"live fio run:\s+([\d.]+) s", out)]
    replays = [float(x) for x in re.findall(r"replay:\s+([\d.]+) s", out)]
    best = re.search(r"best against best: ([\d.]+)x  \(live ([\d.]+) s, replay ([\d.]+) s\)", out)
    assert best and (float(best.group(2)), float(best.group(3))) == (min(lives), min(replays))
    # (the times are printed to the millisecond: the ratio of the printed ones is near)
    assert float(best.group(1)) == pytest.approx(min(lives) / min(replays), rel=0.1), out
    assert "trace reader" in out.splitlines()[0], out
