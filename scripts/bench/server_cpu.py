"""``server-cpu``: what a running FUSE server spends per I/O, thread by thread, while fio runs
the harness's jobs on an image it serves — for by-hand A/B runs on mounts set up by hand (two
zramfs trees, old and new; zramfs and ``--backend null``), alternated:

    python3 scripts/bench.py server-cpu PID MNT/dev/zram0 --jobs randwrite-4k --runtime 3

Reads /proc/PID/task/*/stat and status before and after each job and prints, per thread and in
total, user and system CPU µs per I/O, minor faults and context switches per I/O, then the whole
process's CPU per I/O (/proc/PID/stat, which keeps the time of threads that ended meanwhile).
The jobs are the benchmark's own (the same job files), the size is the image's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .common import log
from .jobs import JOB_BY_NAME, Job, run_fio
from .readings import CLK_TCK, ThreadSample, cpu_seconds, thread_samples


def image_size(path: Path) -> int:
    """Bytes of a file or block device (st_size is 0 for a block device: seek to its end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def per_io_lines(
    before: dict[int, ThreadSample], after: dict[int, ThreadSample], ios: int
) -> list[str]:
    """One line per thread that used CPU meanwhile, and the total, all per I/O."""

    def us(ticks: int) -> float:
        return ticks / CLK_TCK / ios * 1e6

    lines = []
    total_user = total_sys = 0
    for tid, a in sorted(after.items()):
        b = before.get(tid, ThreadSample(a.comm, 0, 0, 0, 0, 0))
        du, ds = a.utime - b.utime, a.stime - b.stime
        total_user += du
        total_sys += ds
        if du or ds:
            lines.append(
                f"  {tid} {a.comm:16s} user {us(du):6.2f} sys {us(ds):6.2f} us/io"
                f"  minflt/io {(a.minflt - b.minflt) / ios:.3f}"
                f" vcs/io {(a.voluntary_switches - b.voluntary_switches) / ios:.2f}"
                f" nvcs/io {(a.involuntary_switches - b.involuntary_switches) / ios:.3f}"
            )
    lines.append(f"  total user {us(total_user):.2f} sys {us(total_sys):.2f} us/io")
    return lines


def measure(pid: int, image: Path, job: Job, runtime: int, jobdir: Path) -> list[str]:
    jobfile = jobdir / f"{job.name}.fio"
    jobfile.write_text(job.jobfile())
    before, process_before = thread_samples(pid), cpu_seconds([pid])
    res = run_fio(job, jobfile, image, image_size(image), runtime, timeout=runtime * 4 + 120)
    after, process = thread_samples(pid), cpu_seconds([pid]) - process_before
    ios = int(res["ios"])
    if not ios:
        return [f"{job.name}: fio completed no I/O"]
    # libfuse retires idle workers: a thread that ended meanwhile is missing from the thread
    # lines and their total, but its CPU time stays in the process's.
    return [
        f"{job.name}: ios={ios} iops={res['iops']:.0f} wall/io={1e6 / res['iops']:.1f}us",
        *per_io_lines(before, after, ios),
        f"  process user+sys {process / ios * 1e6:.2f} us/io (ended threads included)",
    ]


def server_cpu(args: argparse.Namespace) -> int:
    if not os.path.isdir(f"/proc/{args.pid}"):
        log(f"bench: no process {args.pid}")
        return 1
    jobs = [JOB_BY_NAME[n] for n in args.jobs]
    if any(j.python for j in jobs):
        log("bench: server-cpu runs fio jobs only (real-write-128k is not one)")
        return 1
    with tempfile.TemporaryDirectory(prefix="zramfs-server-cpu.") as tmp:
        for job in jobs:
            for line in measure(args.pid, Path(args.image), job, args.runtime, Path(tmp)):
                log(line)
    return 0
