"""``zramfs plot FILE... --out DIR``: PNGs of record files (docs/experiments.md,
"Plots").

Reads every FILE first (`zramfs.record_schema.read_record`: a missing or malformed file is one
line on stderr, exit code 2 and nothing written), then draws each configuration of each file
with `zramfs.plot_figures` (numpy and matplotlib are imported only then; matplotlib is the
optional ``plot`` extra):

- ``memory.png``: orig_data_size, compr_data_size, mem_used_total, mem_used_max and mem_limit
  over time, with compaction (pages_compacted went up) and migration (vmstat pgmigrate_success
  went up) marked on mem_used_total, and device events as vertical lines;
- ``ratio.png``: compression ratio orig/compr, and orig/mem_used_total (what the pool's
  fragmentation leaves of it);
- ``fragmentation[-N].png``: one heatmap per configuration, size class × time, colour = the
  class's obj_used / obj_allocated (white: the class holds nothing);
- ``compaction.png``: pages compacted and pages migrated, cumulative, with the markers;
- ``io.png``: read and write MiB/s (the block layer's ``stat``);
- ``locks.png``: migrate_lock contentions per second and wait per second (lock_stat deltas).

Several files (or configurations) overlay with one colour each; the legend shows the settings
in which they differ.  It prints the paths it wrote, then a summary per configuration: peak
mem_used_total, final compression ratio, pages compacted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zramfs.cmdline import one_line_errors
from zramfs.record_schema import RecordError, read_record

MISSING_MATPLOTLIB = "zramfs plot needs matplotlib: pip install 'zramfs[plot]'"


# ---- the command -------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("plot", help="PNGs of record files (matplotlib)")
    p.add_argument("files", nargs="+", metavar="FILE", help="record files (zramfs record)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNGs")
    p.set_defaults(func=run)
    one_line_errors(p, "zramfs plot")


def plot_files(files: Sequence[str], out: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Read and plot; returns (PNG paths, summary lines).  Raises `RecordError` before writing
    anything."""
    from zramfs.plot_figures import curves, draw, labels, summary

    records = [read_record(f) for f in files]
    series = [(rec, s) for rec in records for s in rec.series.values() if s.samples]
    all_curves = [curves(s, label) for (_, s), label in zip(series, labels(series))]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    return draw(all_curves, outdir), [summary(c) for c in all_curves]


def run(args: argparse.Namespace) -> int:
    prog = "zramfs plot"
    if importlib.util.find_spec("matplotlib") is None:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"{prog}: {out}: not a directory", file=sys.stderr)
        return 2
    try:
        written, lines = plot_files(args.files, out)
    except RecordError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {exc.filename or out}: {exc.strerror}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    for line in lines:
        print(line)
    return 0
