"""Smoke tests: the allocator benchmark (--quick) and the allocator demo run and print
their figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
