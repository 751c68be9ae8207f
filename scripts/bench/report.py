"""The figures of a run and what is made of them: per-round results, medians and ratios to the
reference system, the performance targets, the Markdown report and the bar chart."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MiB, log
from .jobs import JOBS, Job
from .readings import MIGRATE_LOCK
from .systems import REFERENCE

# (job, system, peer, minimum ratio of median IOPS) — docs/performance.md's targets: the
# speed targets of the compiled build against the null image and nbdkit, and the 4 KiB ones
# against nbdkit held since the pure build.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("randwrite-4k", "zramfs-lz4", "nullfs", 0.85),
    ("randwrite-4k", "zramfs-lz4", "nbdkit-zstd", 2.0),
    ("randread-4k", "zramfs-lz4", "nullfs", 0.95),
    ("randread-4k", "zramfs-lz4", "nbdkit-zstd", 1.2),
    ("randwrite-4k-4j", "zramfs-lz4", "nullfs", 0.80),
    ("seqwrite-128k", "zramfs-lz4", "nbdkit-zstd", 2.0),
    ("seqread-128k", "zramfs-lz4", "nbdkit-zstd", 1.5),
    *((j.name, "zramfs-zstd", "nbdkit-zstd", 1.5) for j in JOBS if j.writes),
)
DAEMON_TOLERANCE = 0.05  # zramfs-lz4 vs zramfs-lz4-nocompact: within 5 % on every job


@dataclass
class Results:
    """Every measured run: ``rounds[job][system]`` holds one figure dict per round (iops, mbps,
    p99_us, ios, cpu_us_per_io…); ``locks`` the migrate_lock contention summed per job and
    system; ``errors`` the runs that failed, one line each."""

    rounds: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    locks: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def add(self, job: str, system: str, res: dict[str, float]) -> None:
        self.rounds.setdefault(job, {}).setdefault(system, []).append(res)

    def median(self, job: str, system: str, key: str = "iops") -> float | None:
        rs = self.rounds.get(job, {}).get(system)
        if not rs:
            return None
        return float(statistics.median(r[key] for r in rs))

    def paired(self, job: str, system: str, peer: str) -> list[float]:
        a = self.rounds.get(job, {}).get(system, [])
        b = self.rounds.get(job, {}).get(peer, [])
        return [x["iops"] / y["iops"] for x, y in zip(a, b) if y["iops"] > 0]


def summary(results: Results, names: list[str], jobs: list[Job]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for job in jobs:
        per: dict[str, Any] = {}
        ref = results.median(job.name, REFERENCE)
        for name in names:
            rs = results.rounds.get(job.name, {}).get(name)
            if not rs:
                continue
            row: dict[str, Any] = {"n": len(rs)}
            for key in ("iops", "mbps", "p99_us", "cpu_us_per_io"):
                vals = [r[key] for r in rs if key in r]
                if not vals:
                    continue
                row[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
            row["ratio_to_ref"] = (row["iops"]["median"] / ref) if ref else None
            per[name] = row
        out[job.name] = per
    return out


def targets(results: Results, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for job, system, peer, minimum in TARGETS:
        a, b = results.median(job, system), results.median(job, peer)
        if a is None or b is None or b == 0:
            rows.append(
                {
                    "job": job,
                    "system": system,
                    "peer": peer,
                    "target": minimum,
                    "ratio": None,
                    "holds": None,
                }
            )
            continue
        paired = results.paired(job, system, peer)
        rows.append(
            {
                "job": job,
                "system": system,
                "peer": peer,
                "target": minimum,
                "ratio": a / b,
                "paired_min": min(paired) if paired else None,
                "paired_max": max(paired) if paired else None,
                "holds": a / b >= minimum,
            }
        )
    for on in ("zramfs-lz4", "zramfs-lz4-aggressive"):
        for job in results.rounds:
            a = results.median(job, on)
            b = results.median(job, "zramfs-lz4-nocompact")
            if a is None or b is None or b == 0:
                continue
            paired = results.paired(job, on, "zramfs-lz4-nocompact")
            rows.append(
                {
                    "job": job,
                    "system": on,
                    "peer": "zramfs-lz4-nocompact",
                    "target": f"within {DAEMON_TOLERANCE:.0%}",
                    "ratio": a / b,
                    "paired_min": min(paired) if paired else None,
                    "paired_max": max(paired) if paired else None,
                    "holds": abs(a / b - 1) <= DAEMON_TOLERANCE,
                }
            )
    return rows


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _rng(d: dict[str, float]) -> str:
    return f"{_fmt(d['median'])} ({_fmt(d['min'])}–{_fmt(d['max'])})"


def markdown(report: dict[str, Any], jobs: list[Job]) -> str:
    env = report["environment"]
    opts = report["options"]
    lines = [
        "## Results",
        "",
        f"`{report['command']}` — {report['started']}, {report['duration_s']:.0f} s; "
        f"images {opts['size'] // MiB} MiB, {opts['runtime']} s per job, {opts['rounds']} rounds "
        f"(systems alternating within each round, {opts.get('settle', 0):g} s idle before each "
        f"run); commit {env['commit']}"
        + (
            f" + uncommitted changes to {', '.join(x.split()[-1] for x in env['uncommitted'])}"
            if env.get("uncommitted")
            else ""
        )
        + f", Linux {env['kernel']}, "
        f"{env['cpus']} CPUs, Python {env['python']}, {env['fio']}, binding {env['binding']}; "
        f"load average {env['loadavg_before'][0]:.2f} before, {env['loadavg_after'][0]:.2f} after.",
        "",
        "Medians over the rounds, (min–max) in brackets; p99 = fio's 99th percentile completion "
        "latency (reads for the mixed job); server CPU = user+system time of the serving "
        "process(es) (zramfs, nullfs, nbdkit+nbdfuse; the kernel's is not counted) per I/O — "
        "less sensitive to the machine's load than IOPS; × = ratio of median IOPS to "
        "zramfs-lz4.",
        "",
    ]
    if report["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()), ""]
    lines += [
        "| job | system | IOPS | MB/s | p99 µs | server CPU µs/IO | × zramfs-lz4 |",
        "|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        per = report["summary"].get(job.name, {})
        for name, row in per.items():
            i, m, p = row["iops"], row["mbps"], row["p99_us"]
            ratio = f"{row['ratio_to_ref']:.2f}" if row["ratio_to_ref"] is not None else "–"
            cpu = _fmt(row["cpu_us_per_io"]["median"]) if "cpu_us_per_io" in row else "–"
            lines.append(
                f"| {job.name} | {name} | {_rng(i)} | {_rng(m)} | {_fmt(p['median'])} "
                f"| {cpu} | {ratio} |"
            )
    lines += [
        "",
        "### Targets",
        "",
        "| job | system | vs | target | ratio (medians) | per round | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        if t["ratio"] is None:
            target = t["target"] if isinstance(t["target"], str) else f"≥ {t['target']:.2f}×"
            lines.append(
                f"| {t['job']} | {t['system']} | {t['peer']} | {target} | – | – | not measured |"
            )
            continue
        target = t["target"] if isinstance(t["target"], str) else f"≥ {t['target']:.2f}×"
        per_round = (
            f"{t['paired_min']:.2f}–{t['paired_max']:.2f}"
            if t.get("paired_min") is not None
            else "–"
        )
        lines.append(
            f"| {t['job']} | {t['system']} | {t['peer']} | {target} | {t['ratio']:.2f} "
            f"| {per_round} | {'yes' if t['holds'] else '**no**'} |"
        )
    locks = report["migrate_lock"]
    if locks:
        lines += [
            "",
            f"### `{MIGRATE_LOCK}` contention (MNT/proc/lock_stat, summed over the rounds)",
            "",
            "| job | system | write-side waits | write wait µs | read-side waits | "
            "read wait µs | acquisitions (R+W) |",
            "|---|---|---|---|---|---|---|",
        ]
        for job in jobs:
            for name, acc in locks.get(job.name, {}).items():
                lines.append(
                    f"| {job.name} | {name} | {int(acc.get('W_contentions', 0))} | "
                    f"{acc.get('W_wait_total_us', 0):,.0f} | {int(acc.get('R_contentions', 0))} | "
                    f"{acc.get('R_wait_total_us', 0):,.0f} | "
                    f"{int(acc.get('R_acquisitions', 0) + acc.get('W_acquisitions', 0)):,} |"
                )
        comp = {n: e for n, e in report["extra"].items() if "compact_runs" in e}
        if comp:
            lines += [
                "",
                "Compaction daemon at the end: "
                + "; ".join(
                    f"{n}: enabled={e.get('compact_enabled')}, runs={e.get('compact_runs')}, "
                    f"pages freed={e.get('compact_pages_freed')}"
                    for n, e in comp.items()
                )
                + ".",
            ]
        builds = {n: e["build_mode"] for n, e in report["extra"].items() if "build_mode" in e}
        if builds:
            lines += [
                "",
                'Allocator build (docs/performance.md, "Compiled build"): '
                + "; ".join(f"{n}: {b}" for n, b in builds.items())
                + ".",
            ]
    mem = report["memory"]
    if mem:
        rd = report.get("realdata")
        what = (
            f"after the real-data image ({rd['bytes'] // MiB} MiB of {rd['files']} files, "
            f"{rd['zero_pages']} zero pages)"
            if rd
            else "at the end"
        )
        lines += [
            "",
            f"### Memory {what}",
            "",
            "| system | orig_data | compr_data | mem_used_total | same_pages | huge_pages | "
            "pages_compacted | orig/compr | orig/mem_used | server RSS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in mem.items():
            rss = ", ".join(f"{p} {v / 1024:.0f} MiB" for p, v in m["rss_kib"].items() if v) or "–"
            mm = m["mm_stat"]
            if mm:
                o, c, u = mm["orig_data_size"], mm["compr_data_size"], mm["mem_used_total"]
                lines.append(
                    f"| {name} | {o / MiB:.1f} MiB | {c / MiB:.1f} MiB | {u / MiB:.1f} MiB | "
                    f"{mm['same_pages']} | {mm['huge_pages']} | {mm['pages_compacted']} | "
                    f"{o / c if c else 0:.2f} | {o / u if u else 0:.2f} | {rss} |"
                )
            else:
                lines.append(f"| {name} | – | – | – | – | – | – | – | – | {rss} |")
    if report["errors"]:
        lines += ["", "### Errors", "", *(f"- {e}" for e in report["errors"])]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], jobs: list[Job], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("bench: matplotlib not installed (pip install '.[plot]'): no chart")
        return None
    names = report["options"]["systems"]
    shown = [j for j in jobs if report["summary"].get(j.name)]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=80)
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, job in enumerate(shown):
            row = report["summary"][job.name].get(name)
            if not row:
                continue
            m = row["mbps"]
            xs.append(i + (k - (len(names) - 1) / 2) * width)
            ys.append(m["median"])
            lo.append(m["median"] - m["min"])
            hi.append(m["max"] - m["median"])
        ax.bar(xs, ys, width, label=name, yerr=[lo, hi], capsize=2, error_kw={"lw": 0.7})
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([j.name for j in shown], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MB/s (median, min–max), log scale")
    ax.set_title(
        f"fio, {report['options']['size'] // MiB} MiB images, "
        f"{report['options']['runtime']} s/job, {report['options']['rounds']} rounds",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=min(len(names), 6), loc="upper left")
    ax.grid(axis="y", which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
