"""The benchmark run: set every system up, prefill it, run each job on every system in turn,
round after round, write the real-data image, read memory and lock figures, tear everything
down (on any failure or signal too), and write the reports."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    BenchError,
    Interrupted,
    MiB,
    install_signal_handlers,
    log,
    restore_signal_handlers,
)
from .jobs import JOB_BY_NAME, PREFILL, Job, run_fio
from .readings import MIGRATE_LOCK, cpu_seconds, lock_delta, rss_kib
from .realdata import build_realdata, write_image
from .report import Results, markdown, plot, summary, targets
from .systems import System, make_system, teardown

# Idle time before every measured run.  Measured on the project VM (2026-11-27): zramfs-lz4
# randwrite-4k run right after a 4 s kernel-zram randwrite ran 17-24 % slower than right after
# a nullfs run (5 of 5 pairs); after 5 s of idle the two orders matched, after 2 s mostly.  The
# kernel system saturates a CPU without a gap, and whatever throttles this VM afterwards decays
# within seconds; the round rotation alone does not cancel it (zramfs-lz4 followed kernel zram
# in 2 of 3 rounds).
DEFAULT_SETTLE_S = 2.0


def run_bench(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs").mkdir(exist_ok=True)
    if shutil.which("fio") is None:
        log("bench: fio not installed (apt-get install fio)")
        return 1
    jobs = [JOB_BY_NAME[n] for n in args.jobs]
    synthetic = [j for j in jobs if not j.realdata]
    realjobs = [j for j in jobs if j.realdata]
    jobfiles: dict[str, Path] = {}
    for j in [PREFILL, *jobs]:
        if j.python:
            continue
        jobfiles[j.name] = out / "jobs" / f"{j.name}.fio"
        jobfiles[j.name].write_text(j.jobfile())

    workdir = Path(tempfile.mkdtemp(prefix="zramfs-bench."))
    systems: list[System] = []
    skipped: dict[str, str] = {}
    results = Results()
    memory: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    realmeta: dict[str, Any] | None = None
    started = time.time()
    load_before = os.getloadavg()
    old_handlers = install_signal_handlers()
    try:
        for name in args.systems:
            s = make_system(name, args.size, workdir)
            reason = s.unavailable()
            if reason:
                log(f"bench: skipping {name}: {reason}")
                skipped[name] = reason
                continue
            systems.append(s)  # before start(): a half-started system is torn down too
            try:
                s.start()
            except BenchError as exc:
                log(f"bench: skipping {name}: {exc}")
                skipped[name] = str(exc)
                s.stop()
                systems.remove(s)
                continue
            log(f"bench: {name}: {s.image} ({s.description})")
        if not systems:
            log("bench: no system could be set up")
            return 1
        names = [s.name for s in systems]
        n_runs = len(systems) * args.rounds * (len(jobs))
        est = n_runs * (args.runtime + 0.6 + args.settle)
        log(
            f"bench: {len(jobs)} jobs × {len(systems)} systems × {args.rounds} rounds, "
            f"{args.runtime} s each: ~{est / 60:.1f} min plus prefill"
        )

        # prefill: every block written once, so reads decompress real objects
        if synthetic:
            for s in systems:
                t = time.monotonic()
                run_fio(
                    PREFILL,
                    jobfiles["prefill"],
                    s.image,
                    args.size,
                    0,
                    timeout=max(600.0, args.size / MiB * 2),
                )
                log(f"bench: prefilled {s.name} in {time.monotonic() - t:.1f} s")

        counter = [0]

        def one(job: Job, s: System, rnd: int) -> None:
            counter[0] += 1
            # Let the machine settle after the previous system: right after a kernel-zram fio
            # run the next system ran ~20 % slower for a few seconds (see DEFAULT_SETTLE_S).
            time.sleep(args.settle)
            lock_before = s.lock_stat()
            pids = list(s.pids().values())
            cpu0 = cpu_seconds(pids)
            t = time.monotonic()
            try:
                if job.python:
                    assert realpath is not None
                    res = write_image(realpath, s.image, args.size)
                else:
                    res = run_fio(
                        job,
                        jobfiles[job.name],
                        s.image,
                        args.size,
                        args.runtime,
                        timeout=args.runtime * 4 + 120,
                    )
            except BenchError as exc:
                msg = f"{job.name} round {rnd + 1} on {s.name}: {exc}"
                log(f"bench: ERROR {msg}")
                results.errors.append(msg)
                return
            cpu = cpu_seconds(pids) - cpu0 if pids else 0.0
            # /proc/PID/stat counts clock ticks (10 ms): below 50 ms the figure means nothing
            if res.get("ios") and cpu >= 0.05:
                res["cpu_us_per_io"] = cpu * 1e6 / res["ios"]
            lock_after = s.lock_stat()
            if lock_after:
                d = lock_delta(lock_before, lock_after)
                acc = results.locks.setdefault(job.name, {}).setdefault(s.name, {})
                for side in ("W", "R"):
                    row = d.get(f"{MIGRATE_LOCK}-{side}", {})
                    for k in ("contentions", "wait_total_us", "acquisitions"):
                        acc[f"{side}_{k}"] = acc.get(f"{side}_{k}", 0) + row.get(k, 0)
            results.add(job.name, s.name, res)
            log(
                f"[{counter[0]:3d}/{n_runs}] {job.name:<18} round {rnd + 1}/{args.rounds} "
                f"{s.name:<21} {res['iops']:9.0f} IOPS {res['mbps']:8.1f} MB/s "
                f"p99 {res['p99_us']:9.1f} µs"
                + (f" cpu {res['cpu_us_per_io']:6.1f} µs/IO" if "cpu_us_per_io" in res else "")
                + f"  ({time.monotonic() - t:.1f} s)"
            )

        def rotation(rnd: int) -> list[System]:
            k = rnd % len(systems)
            return systems[k:] + systems[:k]

        realpath: Path | None = None
        for job in synthetic:
            for rnd in range(args.rounds):
                for s in rotation(rnd):
                    one(job, s, rnd)

        if realjobs:
            realpath = out / f"realdata-{args.size}.img"
            t = time.monotonic()
            realmeta = build_realdata(realpath, args.size)
            log(
                f"bench: real-data image {realpath} ({realmeta['files']} files, "
                f"{realmeta['zero_pages']} zero pages) in {time.monotonic() - t:.1f} s"
            )
            write_job = JOB_BY_NAME["real-write-128k"]
            for rnd in range(args.rounds):
                for s in rotation(rnd):
                    if write_job in realjobs:
                        one(write_job, s, rnd)
                    elif rnd == 0:
                        write_image(realpath, s.image, args.size)
            for s in systems:  # the data is the same whatever the round: measure once
                if write_job not in realjobs:
                    continue
                mem: dict[str, Any] = {"mm_stat": s.mm_stat(), "rss_kib": {}}
                for pname, pid in s.pids().items():
                    mem["rss_kib"][pname] = rss_kib(pid)
                memory[s.name] = mem
            for job in realjobs:
                if job.python:
                    continue
                for rnd in range(args.rounds):
                    for s in rotation(rnd):
                        one(job, s, rnd)
        else:
            for s in systems:
                memory[s.name] = {
                    "mm_stat": s.mm_stat(),
                    "rss_kib": {p: rss_kib(pid) for p, pid in s.pids().items()},
                }
        for s in systems:
            extras[s.name] = s.extra()
            extras[s.name]["lock_stat_final"] = s.lock_stat()
    except Interrupted as exc:
        log(f"bench: interrupted ({exc}); tearing down")
        return 130
    finally:
        teardown(systems)
        restore_signal_handlers(old_handlers)
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "environment": environment(load_before),
        "options": {
            "size": args.size,
            "runtime": args.runtime,
            "rounds": args.rounds,
            "settle": args.settle,
            "systems": names,
            "jobs": [j.name for j in jobs],
        },
        "skipped": skipped,
        "descriptions": {s.name: s.description for s in systems},
        "jobs": {j.name: {"title": j.title, "options": j.options} for j in jobs},
        "rounds": results.rounds,
        "summary": summary(results, names, jobs),
        "targets": targets(results, names),
        "migrate_lock": results.locks,
        "memory": memory,
        "realdata": realmeta,
        "extra": extras,
        "errors": results.errors,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report, jobs)
    (out / "results.md").write_text(md)
    chart = plot(report, jobs, out / "results.png")
    log("")
    log(md)
    log(
        f"bench: wrote {out / 'results.md'}, {out / 'results.json'}"
        + (f", {chart}" if chart else "")
    )
    return 1 if results.errors else 0


def environment(load_before: tuple[float, float, float]) -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=10, cwd=ROOT
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    binding = cmd(sys.executable, "-c", "import zramfs.fs as f; print(f.BINDING, f.FUSE_MAJOR)")
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "fio": cmd("fio", "--version"),
        "nbdkit": cmd("nbdkit", "--version"),
        "commit": cmd("git", "rev-parse", "--short", "HEAD"),
        # the benchmark runs the working tree: say which measured files differ from HEAD
        "uncommitted": cmd(
            "git", "status", "--porcelain", "--", "zramfs", "allocator"
        ).splitlines(),
        "binding": binding,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
