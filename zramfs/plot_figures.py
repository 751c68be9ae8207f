"""The figures of ``zramfs plot`` (`zramfs.plot` is the command): record series turned into
arrays (`Curves`, numbers summed over the devices of a sample) and drawn with matplotlib's Agg
backend, imported only when drawing (it is the optional ``plot`` extra).  What each PNG shows
and how to read it: docs/experiments.md, "Plots".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zramfs.record_schema import MM_STAT_FIELDS, Record, Series

MIB = 1 << 20


@dataclass
class Curves:
    """The numbers of one configuration, one entry per sample (summed over its devices)."""

    label: str
    t: np.ndarray
    mm: dict[str, np.ndarray]  # MM_STAT_FIELDS
    compacted: np.ndarray  # pages compacted since the start (resets do not lose any)
    migrated: np.ndarray  # vmstat pgmigrate_success since the start
    read_bytes: np.ndarray  # cumulative, since the start
    write_bytes: np.ndarray
    lock_contentions: dict[str, np.ndarray]  # migrate_lock side -> contentions in the interval
    lock_wait_us: dict[str, np.ndarray]
    has_locks: bool
    class_sizes: list[int]  # rows of the heatmap
    fill: np.ndarray  # len(class_sizes) x samples: obj_used / obj_allocated, NaN if empty
    events: list[tuple[float, str]] = field(default_factory=list)


def _counter(series: list[dict[str, Any]], get: Any) -> np.ndarray:
    """A cumulative counter over the samples, summed over devices, that survives resets: per
    device, a value lower than the last one means the counter restarted from zero."""
    last: dict[str, int] = {}
    total = 0
    out = np.zeros(len(series))
    for i, sample in enumerate(series):
        for name, dev in sample["devices"].items():
            v = get(dev)
            before = last.get(name)
            total += v if before is None or v < before else v - before
            last[name] = v
        out[i] = total
    return out


def _vm_counter(samples: list[dict[str, Any]], key: str) -> np.ndarray:
    values = np.array([float(s.get("vmstat", {}).get(key, 0)) for s in samples])
    if len(values) == 0:
        return values
    d = np.diff(values, prepend=values[0])
    return np.cumsum(np.where(d < 0, values, d))


def curves(s: Series, label: str) -> Curves:
    samples = s.samples
    t = np.array([float(x["t"]) for x in samples])
    mm = {
        f: np.array([sum(d["mm_stat"][f] for d in x["devices"].values()) for x in samples], float)
        for f in MM_STAT_FIELDS
    }

    def stat(key: str) -> Any:
        return lambda dev: dev.get("stat", {}).get(key, 0)

    sides = {"read side": "migrate_lock-R", "write side": "migrate_lock-W"}
    cont = {k: np.zeros(len(samples)) for k in sides}
    wait = {k: np.zeros(len(samples)) for k in sides}
    for i, x in enumerate(samples):
        for name, row in (x.get("lock_stat") or {}).items():
            for side, suffix in sides.items():
                if name.endswith(suffix):
                    cont[side][i] += row["contentions"]
                    wait[side][i] += row["wait_total_us"]
    sizes = sorted(
        {r["size"] for x in samples for d in x["devices"].values() for r in d["classes"]}
    )
    row_of = {size: j for j, size in enumerate(sizes)}
    used = np.zeros((len(sizes), len(samples)))
    alloc = np.zeros((len(sizes), len(samples)))
    for i, x in enumerate(samples):
        for d in x["devices"].values():
            for r in d["classes"]:
                used[row_of[r["size"]], i] += r["obj_used"]
                alloc[row_of[r["size"]], i] += r["obj_allocated"]
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = np.where(alloc > 0, used / alloc, np.nan)
    return Curves(
        label=label,
        t=t,
        mm=mm,
        compacted=_counter(samples, lambda dev: dev["mm_stat"]["pages_compacted"]),
        migrated=_vm_counter(samples, "pgmigrate_success"),
        read_bytes=_counter(samples, stat("read_sectors")) * 512,
        write_bytes=_counter(samples, stat("write_sectors")) * 512,
        lock_contentions=cont,
        lock_wait_us=wait,
        has_locks=any("lock_stat" in x for x in samples),
        class_sizes=sizes,
        fill=fill,
        events=[(float(e["t"]), f"{e['event']} {e['device']}") for e in s.events],
    )


def _fmt(v: Any) -> str:
    return str(v)


def labels(series: list[tuple[Record, Series]]) -> list[str]:
    """Legend text per configuration: the settings in which the configurations differ (the
    file name, and the configuration key, when that is all that tells them apart)."""
    configs = [s.config for _, s in series]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if len({_fmt(c.get(k)) for c in configs}) > 1]
    out = []
    for rec, s in series:
        text = " ".join(f"{k}={_fmt(s.config.get(k))}" for k in differ)
        if not text or len({tuple(sorted(c.items())) for c in configs}) < len(configs):
            name = Path(rec.path).name + (f"[{s.key}]" if s.key is not None else "")
            text = f"{name} {text}".strip()
        out.append(text)
    return out


def summary(c: Curves) -> str:
    peak = c.mm["mem_used_total"].max() if len(c.t) else 0.0
    orig, compr = c.mm["orig_data_size"][-1], c.mm["compr_data_size"][-1]
    ratio = f"{orig / compr:.2f}" if compr else "n/a (nothing stored)"
    return (
        f"{c.label}: {len(c.t)} samples over {c.t[-1] - c.t[0]:.1f} s; peak mem_used_total "
        f"{peak / MIB:.2f} MiB; final compression ratio {ratio}; pages compacted "
        f"{int(c.compacted[-1])}"
    )


# ---- drawing -----------------------------------------------------------------------------------
def _markers(ax: Any, c: Curves, y: np.ndarray, colour: Any) -> None:
    """Compaction (▼) and migration (●) at the samples where their counters went up."""
    grew = np.diff(c.compacted, prepend=c.compacted[:1]) > 0
    moved = np.diff(c.migrated, prepend=c.migrated[:1]) > 0
    ax.scatter(
        c.t[grew],
        y[grew],
        marker="v",
        s=40,
        color=colour,
        edgecolors="black",
        zorder=3,
    )
    ax.scatter(
        c.t[moved],
        y[moved],
        marker="o",
        s=18,
        color=colour,
        edgecolors="grey",
        zorder=3,
    )


def _legends(
    ax: Any, labels: list[tuple[str, Any]], styles: dict[str, Any], *, markers: bool = False
) -> None:
    """Two legends instead of one entry per curve: the configurations (colours) and what the
    line styles (and markers) stand for, so N configurations × M quantities stay readable."""
    from matplotlib.lines import Line2D

    configs = [Line2D([], [], color=col, label=text) for text, col in labels]
    kinds = [Line2D([], [], color="black", linestyle=ls, label=name) for name, ls in styles.items()]
    if markers:
        kinds += [
            Line2D(
                [],
                [],
                color="grey",
                marker="v",
                markeredgecolor="black",
                linestyle="",
                label="compaction",
            ),
            Line2D([], [], color="grey", marker="o", linestyle="", label="migration"),
        ]
    first = ax.legend(handles=configs, fontsize=7, loc="upper left")
    if len(kinds) > 1:
        ax.add_artist(first)
        ax.legend(handles=kinds, fontsize=7, loc="upper right")


def _events(ax: Any, c: Curves, colour: Any) -> None:
    for t, text in c.events:
        ax.axvline(t, color=colour, linestyle=":", linewidth=0.8)
        ax.annotate(
            text,
            (t, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=6,
            va="top",
            ha="right",
            color=colour,
        )


def _rate(t: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    if len(t) < 2:
        return np.zeros_like(t)
    dt = np.diff(t)
    d = np.diff(cumulative)
    rate = np.divide(d, dt, out=np.zeros_like(d), where=dt > 0)
    return np.concatenate([[0.0], rate])


def draw(all_curves: list[Curves], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def colour(i: int) -> Any:
        return colours[i % len(colours)]

    labels = [(c.label, colour(i)) for i, c in enumerate(all_curves)]

    styles = {
        "orig_data_size": "-",
        "compr_data_size": "--",
        "mem_used_total": "-.",
        "mem_used_max": ":",
        "mem_limit": (0, (1, 4)),
    }
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, c in enumerate(all_curves):
        for f, ls in styles.items():
            y = c.mm[f] / MIB
            if f == "mem_limit" and not y.any():
                continue
            ax.plot(c.t, y, linestyle=ls, color=colour(i))
        _markers(ax, c, c.mm["mem_used_total"] / MIB, colour(i))
        _events(ax, c, colour(i))
    ax.set(xlabel="time (s)", ylabel="MiB", title="Memory (mm_stat, all devices)")
    ax.grid(alpha=0.3)
    if not any(c.mm["mem_limit"].any() for c in all_curves):
        styles.pop("mem_limit")
    _legends(ax, labels, styles, markers=True)
    fig.tight_layout()
    save(fig, "memory.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, c in enumerate(all_curves):
        orig = c.mm["orig_data_size"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(c.mm["compr_data_size"] > 0, orig / c.mm["compr_data_size"], np.nan)
            eff = np.where(c.mm["mem_used_total"] > 0, orig / c.mm["mem_used_total"], np.nan)
        ax.plot(c.t, ratio, color=colour(i))
        ax.plot(c.t, eff, color=colour(i), linestyle="--")
    ax.set(xlabel="time (s)", ylabel="ratio", title="Compression ratio")
    ax.grid(alpha=0.3)
    _legends(ax, labels, {"orig/compr": "-", "orig/mem_used_total": "--"})
    fig.tight_layout()
    save(fig, "ratio.png")

    for i, c in enumerate(all_curves):
        fig, ax = plt.subplots(figsize=(10, 6))
        if c.class_sizes and len(c.t):
            edges_t = np.concatenate([c.t, [c.t[-1] + (c.t[-1] - c.t[-2] if len(c.t) > 1 else 1)]])
            edges_y = np.arange(len(c.class_sizes) + 1)
            mesh = ax.pcolormesh(
                edges_t,
                edges_y,
                np.ma.masked_invalid(c.fill),
                cmap="viridis",
                vmin=0,
                vmax=1,
                shading="flat",
            )
            fig.colorbar(mesh, ax=ax, label="obj_used / obj_allocated")
            step = max(1, len(c.class_sizes) // 20)
            ax.set_yticks(np.arange(0, len(c.class_sizes), step) + 0.5)
            ax.set_yticklabels([str(s) for s in c.class_sizes[::step]], fontsize=7)
        else:
            ax.text(0.5, 0.5, "no zspage in any sample", ha="center", transform=ax.transAxes)
        _events(ax, c, "red")
        ax.set(
            xlabel="time (s)",
            ylabel="size class (object size, bytes)",
            title=f"Fragmentation: {c.label}",
        )
        fig.tight_layout()
        save(fig, "fragmentation.png" if len(all_curves) == 1 else f"fragmentation-{i + 1}.png")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for i, c in enumerate(all_curves):
        top.plot(c.t, c.compacted, color=colour(i))
        _markers(top, c, c.compacted, colour(i))
        bottom.plot(c.t, c.migrated, color=colour(i))
    top.set(ylabel="pages compacted", title="Compaction and migration (cumulative)")
    bottom.set(xlabel="time (s)", ylabel="pages migrated (pgmigrate_success)")
    _legends(top, labels, {}, markers=True)
    for a in (top, bottom):
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, "compaction.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, c in enumerate(all_curves):
        ax.plot(c.t, _rate(c.t, c.write_bytes) / MIB, color=colour(i))
        ax.plot(c.t, _rate(c.t, c.read_bytes) / MIB, color=colour(i), linestyle="--")
    ax.set(xlabel="time (s)", ylabel="MiB/s", title="I/O rates (block stat, all devices)")
    ax.grid(alpha=0.3)
    _legends(ax, labels, {"write": "-", "read": "--"})
    fig.tight_layout()
    save(fig, "io.png")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for i, c in enumerate(all_curves):
        for side, ls in (("read side", "-"), ("write side", "--")):
            top.plot(
                c.t,
                _rate(c.t, np.cumsum(c.lock_contentions[side])),
                color=colour(i),
                linestyle=ls,
            )
            bottom.plot(
                c.t,
                _rate(c.t, np.cumsum(c.lock_wait_us[side])) / 1000,
                color=colour(i),
                linestyle=ls,
            )
    if not any(c.has_locks for c in all_curves):
        top.text(0.5, 0.5, "no lock_stat in these records", ha="center", transform=top.transAxes)
    top.set(ylabel="contentions / s", title="migrate_lock contention (lock_stat deltas)")
    bottom.set(xlabel="time (s)", ylabel="wait (ms / s)")
    _legends(top, labels, {"read side": "-", "write side": "--"})
    for a in (top, bottom):
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, "locks.png")
    return written
