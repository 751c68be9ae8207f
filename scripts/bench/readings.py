"""What the harness reads off the machine: a process's CPU time and RSS, per-thread CPU, faults
and context switches (/proc), and a zram mount's (or the kernel's) mm_stat and lock_stat."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from zramfs.stat_fields import MM_STAT_FIELDS

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the lock class whose contention the report shows (zsmalloc's pool migrate_lock)
MIGRATE_LOCK = "&pool->migrate_lock"


def _stat_fields(text: str) -> list[str]:
    """The fields of a /proc/…/stat line after the command name (which may hold spaces and
    parentheses): index 0 is field 3 (state) of proc(5)."""
    return text[text.rindex(")") + 2 :].split()


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of whole processes (every thread, live or exited), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = _stat_fields(f.read())
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


@dataclass(frozen=True)
class ThreadSample:
    """One thread's counters at one moment (times in clock ticks)."""

    comm: str
    utime: int
    stime: int
    minflt: int
    voluntary_switches: int
    involuntary_switches: int


def thread_samples(pid: int) -> dict[int, ThreadSample]:
    """tid → counters of every live thread of ``pid`` (a thread that ends meanwhile is left
    out)."""
    out: dict[int, ThreadSample] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except FileNotFoundError:  # the thread ended between listdir and open
            continue
        fields = _stat_fields(stat)
        out[int(tid)] = ThreadSample(
            comm=stat[stat.index("(") + 1 : stat.rindex(")")],
            utime=int(fields[11]),
            stime=int(fields[12]),
            minflt=int(fields[7]),
            voluntary_switches=int(status["voluntary_ctxt_switches"]),
            involuntary_switches=int(status["nonvoluntary_ctxt_switches"]),
        )
    return out


def parse_mm_stat(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    values = [int(x) for x in text.split()]
    return dict(zip(MM_STAT_FIELDS, values))


LockRow = dict[str, float]


def parse_lock_stat(text: str | None) -> dict[str, LockRow]:
    """{class name: {contentions, wait_total_us, wait_max_us, acquisitions}} from a lock_stat
    file (the kernel's version 0.4 layout, as zramfs writes it)."""
    rows: dict[str, LockRow] = {}
    for line in (text or "").splitlines():
        m = re.match(
            r"\s*(\S.*?):\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$", line
        )
        if m:
            rows[m.group(1)] = {
                "contentions": int(m.group(2)),
                "wait_max_us": float(m.group(4)),
                "wait_total_us": float(m.group(5)),
                "acquisitions": int(m.group(7)),
            }
    return rows


def lock_delta(before: dict[str, LockRow], after: dict[str, LockRow]) -> dict[str, LockRow]:
    out: dict[str, LockRow] = {}
    for name, row in after.items():
        base = before.get(name, {})
        out[name] = {k: (v - base.get(k, 0) if k != "wait_max_us" else v) for k, v in row.items()}
    return out
