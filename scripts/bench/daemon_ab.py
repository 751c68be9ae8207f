"""``daemon-ab``: the compaction daemon on against off, on one mount.

The benchmark run compares two servers, ``zramfs-lz4`` (daemon on) and ``zramfs-lz4-nocompact``
(off).  On this shared 2-core host two identical servers differed by up to 24 % on one job, so a
5 % bound cannot be judged that way.  Here one server serves every run: between runs the daemon's
policy is switched through ``MNT/sys/module/zramfs/parameters/compact_policy`` (as an
administrator would), ``off`` and each policy named, round after round, the order rotated each
round so that no state always runs first.  Each state's IOPS is divided by the ``off`` run's of
the same round; the median of those ratios is the daemon's cost on that job.  So is the server's
CPU time per I/O (user + system, every thread, the daemon's included), which moves less with the
host's load than IOPS do.  Both states share the process, the image and its fragmentation, and
alternate within seconds.  And the daemon's cost is read directly, run by run: its scans' CPU
time (``compact_cpu_us``) as a share of one core over the run, and the time I/O waited for
``migrate_lock``'s read side (taken for writing only by compaction; ``MNT/proc/lock_stat``).  On
a host where two runs of one state seconds apart differ by 10-20 %, these say what the ratios
cannot: how much of a core the daemon took and how long it held I/O up.

Under ``off`` the daemon's thread exists but sleeps (it neither reads PSI nor scans); under
``--no-compact`` there is no thread.  A sleeping thread takes no CPU, so ``off`` stands for "no
daemon".  The compactions of every run are counted too (``compact_runs``,
``compact_pages_freed``): the mount's default policy, ``shrinker``, compacts only under host memory
pressure, so on an idle host its cost is its ticks; ``interval:1000`` compacts every pool every
second whether or not it has anything to free, each pass taking ``migrate_lock`` for writing class
by class as zs_compact does: a daemon that always works.  (``threshold:64``, the threshold policy
at its default, compacted nothing on the fio jobs: fio's buffers compress to one size, so an
overwrite's new object fills the slot the previous one freed and no pool reaches 64 freeable
pages.)  The job that gives a compacting policy objects to move is this subcommand's own,
``real-rewrite-128k``: the real-data image written again, shifted further each run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from zramfs.daemon import BadPolicy, format_policy, parse_policy

from .common import (
    PAGE_SIZE,
    BenchError,
    Interrupted,
    MiB,
    install_signal_handlers,
    log,
    restore_signal_handlers,
    write_text,
)
from .jobs import JOB_BY_NAME, PREFILL, Job, run_fio
from .readings import MIGRATE_LOCK, cpu_seconds
from .realdata import build_realdata, write_image
from .report import DAEMON_TOLERANCE
from .systems import ZramfsSystem, fuse_problem, teardown

#: the states besides ``off`` unless ``--policies`` names others: the mount's default, and a
#: pass on every pool every second (the daemon always at work)
DEFAULT_POLICIES = ("shrinker", "interval:1000")
#: this subcommand's own job, last: the real-data image written again, shifted by another 7
#: pages each run, so every block gets other contents and the pool fragments — the job where a
#: compacting policy has objects to move
REWRITE = Job(
    "real-rewrite-128k",
    "real-data image rewritten, shifted 7 pages further each run (Python writer)",
    {},
    True,
    realdata=True,
    python=True,
)
SHIFT_PAGES = 7
#: every job of the full run, the real-data ones after the synthetic ones (the image of real
#: files is built in the run's directory, as the full run builds it), then REWRITE
ALL_JOBS = {**JOB_BY_NAME, REWRITE.name: REWRITE}
DEFAULT_JOBS = tuple(ALL_JOBS)


def policy_list(text: str) -> list[str]:
    """``--policies``: comma-separated compact_policy strings, each as the mount reads it back."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        try:
            spec = parse_policy(item)
        except BadPolicy as exc:
            raise argparse.ArgumentTypeError(exc.strerror) from None
        name = format_policy(spec)
        if name == "off":
            raise argparse.ArgumentTypeError("off is always run; name the policies to compare")
        if name in out:
            raise argparse.ArgumentTypeError(f"{name} given twice")
        out.append(name)
    return out


def rotated(states: list[str], rnd: int) -> list[str]:
    """Round `rnd`'s order: the states rotated by `rnd` (A B C, B C A, C A B, ...)."""
    k = rnd % len(states)
    return states[k:] + states[:k]


class PolicySwitch:
    """The daemon's policy and counters of one mount, through its module parameters."""

    def __init__(self, system: ZramfsSystem) -> None:
        assert system.mnt is not None
        self.system = system
        self.params = system.mnt / "sys/module/zramfs/parameters"

    def read(self, name: str) -> str:
        return (self.params / name).read_text().strip()

    def set(self, policy: str) -> None:
        write_text(self.params / "compact_policy", policy)
        if self.read("compact_policy") != policy:
            raise BenchError(
                f"compact_policy reads {self.read('compact_policy')!r}, not {policy!r}"
            )

    def counters(self) -> dict[str, float]:
        """What the daemon has done so far: compactions, pages freed, its scans' CPU µs
        (``compact_cpu_us``), and the time I/O waited for ``migrate_lock``'s read side (held
        for writing only by compaction; MNT/proc/lock_stat)."""
        locks = self.system.lock_stat()
        return {
            "compactions": int(self.read("compact_runs")),
            "pages_freed": int(self.read("compact_pages_freed")),
            "daemon_cpu_us": int(self.read("compact_cpu_us")),
            "io_wait_us": locks.get(f"{MIGRATE_LOCK}-R", {}).get("wait_total_us", 0.0),
        }


def _spent(runs: list[dict[str, float]]) -> dict[str, float]:
    """What the daemon did and cost over some runs: compactions, pages freed, its CPU as a
    share of one core over the runs' wall time, and the ms I/O waited on migrate_lock."""
    wall_us = sum(r["wall_s"] for r in runs) * 1e6
    return {
        "compactions": sum(int(r["compactions"]) for r in runs),
        "pages_freed": sum(int(r["pages_freed"]) for r in runs),
        "daemon_cpu_share": sum(r["daemon_cpu_us"] for r in runs) / wall_us if wall_us else 0.0,
        "io_wait_ms": sum(r["io_wait_us"] for r in runs) / 1000,
    }


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]], states: list[str]) -> dict:
    """Per job and policy: the median ratio to ``off`` over the rounds (IOPS, and server CPU
    per I/O), the IOPS ratio's range, and what the daemon did and cost in that policy's runs
    (`_spent`; ``off``'s own under "off")."""
    out: dict[str, Any] = {}
    for job, per in runs.items():
        off = per["off"]
        row: dict[str, Any] = {"off_iops": statistics.median(r["iops"] for r in off)}
        for state in states[1:]:
            ratios = [r["iops"] / o["iops"] for r, o in zip(per[state], off, strict=True)]
            cpu = [
                r["cpu_us_per_io"] / o["cpu_us_per_io"]
                for r, o in zip(per[state], off, strict=True)
                if o["cpu_us_per_io"] > 0
            ]
            row[state] = {
                "iops": statistics.median(r["iops"] for r in per[state]),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "cpu_ratio": statistics.median(cpu) if cpu else float("nan"),
                **_spent(per[state]),
            }
        row["off"] = _spent(off)
        out[job] = row
    return out


def table(summary: dict[str, Any], states: list[str]) -> str:
    head = "| job | off IOPS | " + " | ".join(
        f"{s}: IOPS × off (range) | CPU/IO × off | daemon CPU | I/O wait on migrate_lock "
        "| compactions (pages freed)"
        for s in states[1:]
    )
    lines = [head + " |", "|" + "---|" * (2 + 5 * (len(states) - 1))]
    for job, row in summary.items():
        cells = [job, f"{row['off_iops']:,.0f}"]
        for s in states[1:]:
            r = row[s]
            cells.append(f"{r['ratio']:.3f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})")
            cells.append(f"{r['cpu_ratio']:.3f}")
            cells.append(f"{r['daemon_cpu_share']:.3%}")
            cells.append(f"{r['io_wait_ms']:.1f} ms")
            cells.append(f"{r['compactions']} ({r['pages_freed']:,})")
        lines.append("| " + " | ".join(cells) + " |")
    for s in states[1:]:
        held = [j for j, row in summary.items() if abs(row[s]["ratio"] - 1) <= DAEMON_TOLERANCE]
        worst = max(summary.values(), key=lambda row: row[s]["daemon_cpu_share"])[s]
        lines.append(
            f"\n{s}: IOPS within {DAEMON_TOLERANCE:.0%} of off on {len(held)} of {len(summary)} jobs"
            + (
                ""
                if len(held) == len(summary)
                else " (not: " + ", ".join(j for j in summary if j not in held) + ")"
            )
            + f"; the daemon's CPU at most {worst['daemon_cpu_share']:.3%} of a core; I/O "
            f"waited {sum(row[s]['io_wait_ms'] for row in summary.values()):.1f} ms on "
            f"migrate_lock in its runs (off: "
            f"{sum(row['off']['io_wait_ms'] for row in summary.values()):.1f} ms)"
        )
    return "\n".join(lines)


def daemon_ab(args: argparse.Namespace) -> int:
    if shutil.which("fio") is None:
        log("bench: fio not installed (apt-get install fio)")
        return 1
    problem = fuse_problem()
    if problem:
        log(f"bench: daemon-ab: {problem}")
        return 1
    states = ["off", *args.policies]
    # the synthetic jobs first, then the real-data ones, in the full run's order
    jobs = [ALL_JOBS[n] for n in ALL_JOBS if n in args.jobs]
    workdir = Path(tempfile.mkdtemp(prefix="zramfs-bench."))
    (workdir / "jobs").mkdir()
    jobfiles = {}
    for j in (PREFILL, *jobs):
        if not j.python:
            jobfiles[j.name] = workdir / "jobs" / f"{j.name}.fio"
            jobfiles[j.name].write_text(j.jobfile())
    system = ZramfsSystem(args.size, workdir, "zramfs-lz4", "lz4", True)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    old_handlers = install_signal_handlers()
    try:
        system.start()
        log(f"bench: daemon-ab: {system.image} ({system.description})")
        switch = PolicySwitch(system)
        pids = list(system.pids().values())
        realpath = workdir / "realdata.img"

        # REWRITE's n-th run starts n * SHIFT_PAGES pages into the image
        shifts = itertools.count(SHIFT_PAGES * PAGE_SIZE, SHIFT_PAGES * PAGE_SIZE)

        def io(job: Job) -> dict[str, float]:
            if job.python:  # the real-data image written by this script, shifted for REWRITE
                shift = next(shifts) % args.size if job is REWRITE else 0
                return write_image(realpath, system.image, args.size, shift)
            return run_fio(
                job,
                jobfiles[job.name],
                system.image,
                args.size,
                args.runtime,
                timeout=args.runtime * 4 + 120,
            )

        switch.set("off")  # the preparation is not measured
        run_fio(
            PREFILL,
            jobfiles[PREFILL.name],
            system.image,
            args.size,
            0,
            timeout=max(600.0, args.size / MiB * 2),
        )
        for job in jobs:
            if job.realdata and not realpath.exists():
                build_realdata(realpath, args.size)
                if "real-write-128k" not in args.jobs:  # the other jobs start from the real data
                    switch.set("off")  # not measured
                    io(JOB_BY_NAME["real-write-128k"])
            per = runs[job.name] = {s: [] for s in states}
            for rnd in range(args.rounds):
                for state in rotated(states, rnd):
                    switch.set(state)
                    time.sleep(args.settle)  # a pass in flight finishes; the host settles
                    before = switch.counters()
                    cpu0 = cpu_seconds(pids)
                    t0 = time.monotonic()
                    res = io(job)
                    wall = time.monotonic() - t0
                    cpu = cpu_seconds(pids) - cpu0
                    after = switch.counters()
                    res.update({k: after[k] - before[k] for k in after})
                    res.update(wall_s=wall, cpu_us_per_io=cpu / max(res["ios"], 1) * 1e6)
                    per[state].append(res)
                    log(
                        f"bench: daemon-ab {job.name} round {rnd + 1}/{args.rounds} {state}: "
                        f"{res['iops']:,.0f} IOPS, {res['cpu_us_per_io']:.1f} µs CPU/IO, "
                        f"daemon {res['daemon_cpu_us'] / 1000:.1f} ms CPU, "
                        f"{res['compactions']:.0f} compactions, {res['pages_freed']:.0f} pages freed"
                    )
    except (BenchError, Interrupted, OSError) as exc:
        log(f"bench: daemon-ab: {exc}")
        return 1
    finally:
        teardown([system])
        restore_signal_handlers(old_handlers)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs, states)
    log(
        f"\ndaemon-ab: {args.size // MiB} MiB lz4 image, {args.rounds} rounds of {args.runtime} s "
        f"per state, order rotated each round; each ratio is to the same round's off run\n"
    )
    log(table(summary, states))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "options": {
                        "size": args.size,
                        "runtime": args.runtime,
                        "rounds": args.rounds,
                        "settle": args.settle,
                        "states": states,
                        "jobs": [j.name for j in jobs],
                    },
                    "summary": summary,
                    "runs": runs,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


def add_parser(sub: Any, positive: Any, size_arg: Any, job_list: Any) -> None:
    p = sub.add_parser(
        "daemon-ab",
        help="the compaction daemon on against off, on one mount (policy switched between runs)",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", type=size_arg, default=256 * MiB, help="image size (default 256M)")
    p.add_argument("--runtime", type=positive, default=3, help="seconds per run (default 3)")
    p.add_argument("--rounds", type=positive, default=5, help="rounds (default 5)")
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="S",
        help="idle seconds after each policy switch (default 1)",
    )
    p.add_argument(
        "--jobs",
        type=job_list,
        default=list(DEFAULT_JOBS),
        help="default: " + ",".join(DEFAULT_JOBS),
    )
    p.add_argument(
        "--policies",
        type=policy_list,
        default=list(DEFAULT_POLICIES),
        help="the policies run beside off (default: " + ",".join(DEFAULT_POLICIES) + ")",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="also write every run as JSON")
