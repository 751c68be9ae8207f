"""``--profile``: py-spy samples of one zramfs server while fio runs each selected job alone
on it, folded into the layers a request goes through (codec, allocator, device, fs, binding…)
and the top functions by self and inclusive time."""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    Interrupted,
    MiB,
    install_signal_handlers,
    log,
    read_text,
    restore_signal_handlers,
)
from .jobs import JOB_BY_NAME, PREFILL, run_fio
from .systems import make_system, teardown

# A sample is charged to the innermost frame that belongs to one of these layers (stdlib frames
# such as ctypes.string_at or threading are charged to their caller's layer).
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("codec", r"zramfs/codecs\.py|/lz4/|/zstandard/|LZ4_|ZSTD_"),
    ("locks", r"allocator/locks\.py"),
    ("allocator", r"allocator/"),
    ("device", r"zramfs/(device|slots)\.py"),
    ("fs ops", r"zramfs/(fs|tree|attrs)\.py"),
    ("compaction daemon", r"zramfs/daemon\.py"),
    ("FUSE binding", r"mfusepy|\(fuse\.py|/fuse\.py|libfuse|fuse_"),
)


def profile(args: argparse.Namespace) -> int:
    """py-spy record of a zramfs-lz4 server while fio runs each 4 KiB job alone on it."""
    spy = shutil.which("py-spy")
    if spy is None:
        log("bench: py-spy not installed (pip install py-spy)")
        return 1
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs").mkdir(exist_ok=True)
    jobs = [JOB_BY_NAME[n] for n in args.jobs if not JOB_BY_NAME[n].realdata]
    workdir = Path(tempfile.mkdtemp(prefix="zramfs-prof."))
    system = make_system(args.profile_system, args.size, workdir)
    old = install_signal_handlers()
    summaries: dict[str, Any] = {}
    try:
        reason = system.unavailable()
        if reason:
            log(f"bench: cannot profile: {reason}")
            return 1
        system.start()
        pid = system.pids().get("zramfs")
        if pid is None:
            log("bench: --profile needs a zramfs system")
            return 1
        for j in [PREFILL, *jobs]:
            (out / "jobs" / f"{j.name}.fio").write_text(j.jobfile())
        run_fio(PREFILL, out / "jobs" / "prefill.fio", system.image, args.size, 0, timeout=600)
        for job in jobs:
            raw = out / f"profile-{job.name}.txt"
            spy_cmd = [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(args.profile_rate),
                "--output",
                str(raw),
                "--nonblocking",
            ]
            if args.profile_native:
                spy_cmd.append("--native")
            rec = subprocess.Popen(
                spy_cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                time.sleep(0.5)
                res = run_fio(
                    job,
                    out / "jobs" / f"{job.name}.fio",
                    system.image,
                    args.size,
                    args.runtime,
                    timeout=args.runtime * 4 + 120,
                )
            finally:
                rec.send_signal(signal.SIGINT)
                try:
                    rec.wait(60)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    rec.wait()
            summ = summarise_profile(raw)
            summ["fio"] = res
            summaries[job.name] = summ
            log(
                f"bench: profiled {job.name}: {res['iops']:.0f} IOPS under py-spy, "
                f"{summ['samples']} samples"
            )
    except Interrupted as exc:
        log(f"bench: interrupted ({exc}); tearing down")
        return 130
    finally:
        teardown([system])
        restore_signal_handlers(old)
        shutil.rmtree(workdir, ignore_errors=True)
    (out / "profile.json").write_text(json.dumps(summaries, indent=1))
    md = profile_markdown(summaries, args)
    (out / "profile.md").write_text(md)
    log(md)
    return 0


def _frame_key(frame: str) -> str:
    # py-spy raw frames: "function (file.py:line)" — fold line numbers to the function
    return re.sub(r":\d+\)$", ")", frame)


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    cats: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    text = read_text(raw) or ""
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [_frame_key(f) for f in stack.split(";")]
        total += n
        threads[frames[0]] += n
        self_t[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
        # category: the innermost frame that belongs to a known layer
        cat = "other"
        for f in reversed(frames):
            hit = next((c for c, rx in PROFILE_CATEGORIES if re.search(rx, f)), None)
            if hit:
                cat = hit
                break
        cats[cat] += n

    def pct(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in c.most_common(top)] if total else []

    return {
        "samples": total,
        "self": pct(self_t),
        "inclusive": pct(incl),
        "categories": pct(cats),
        "threads": pct(threads),
    }


def profile_markdown(summaries: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Profile",
        "",
        f"py-spy record ({'with' if args.profile_native else 'without'} --native, "
        f"{args.profile_rate} Hz, idle threads excluded) of a {args.profile_system} server, "
        f"{args.size // MiB} MiB image, each job alone for {args.runtime} s.",
        "",
    ]
    for job, s in summaries.items():
        lines += [
            f"### {job} ({s['fio']['iops']:.0f} IOPS under the profiler, {s['samples']} samples)",
            "",
            "Layers (innermost frame of a known layer): "
            + ", ".join(f"{k} {v:.1f} %" for k, v in s["categories"]),
            "",
            "| self % | function | | inclusive % | function |",
            "|---|---|---|---|---|",
        ]
        for (sf, sp), (inf, ip) in zip(s["self"], s["inclusive"]):
            lines.append(f"| {sp:.1f} | `{sf}` | | {ip:.1f} | `{inf}` |")
        lines.append("")
    return "\n".join(lines) + "\n"
