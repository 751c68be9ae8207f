"""What ``zramfs replay`` prints and records: the table, the JSON list, the ``--record`` file.

Owns the presentation of a sweep's `zramfs.replay.ReplayResult` list:
- `format_table`: one row per configuration, zramctl-like (sizes through
  ``size_to_human_string`` as ``zramfs status`` shows them, counts raw);
- `to_json`: the JSON list (``ReplayResult.to_json()`` of each configuration, docs/replay.md);
- `write_record`: the time series ``zramfs record`` writes (`zramfs.record.RecordWriter`),
  every configuration in one file, each sample tagged with its configuration's key, so
  ``zramfs plot`` overlays the configurations of one sweep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zramfs.replay import ReplayResult
    from zramfs.sweep import Outcome

# (heading, mm_stat field, is a size in bytes) in mm_stat's order (docs/zram.md, mm_stat).
MM_STAT_COLUMNS = (
    ("DATA", "orig_data_size", True),
    ("COMPR", "compr_data_size", True),
    ("TOTAL", "mem_used_total", True),
    ("MEM-LIMIT", "mem_limit", True),
    ("MEM-USED-MAX", "mem_used_max", True),
    ("SAME-PAGES", "same_pages", False),
    ("COMPACTED", "pages_compacted", False),
    ("HUGE", "huge_pages", False),
    ("HUGE-SINCE", "huge_pages_since", False),
)
AS_RECORDED = "(as recorded)"


def config_label(config: dict[str, str]) -> str:
    """``algorithm=zstd chain_size=8``; the trace's own configuration when nothing is set."""
    return " ".join(f"{k}={v}" for k, v in config.items()) or AS_RECORDED


def format_table(results: Sequence[ReplayResult], names: Sequence[str]) -> str:
    """One row per configuration: the swept settings (one column each, or CONFIG when
    nothing was swept), the final mm_stat, peak and time-weighted mean mem_used_total, write
    failures (refused by mem_limit) and the replay's wall time."""
    from zramfs.cli import human

    heads = [n.upper() for n in names] or ["CONFIG"]
    heads += [h for h, _, _ in MM_STAT_COLUMNS] + ["PEAK", "MEAN", "WRITE-FAIL", "SECONDS"]
    rows = [heads]
    for r in results:
        row = [r.config.get(n, "") for n in names] if names else [AS_RECORDED]
        row += [
            human(r.mm_stat[f]) if size else str(r.mm_stat[f]) for _, f, size in MM_STAT_COLUMNS
        ]
        row += [
            human(r.peak_mem_used),
            human(round(r.mean_mem_used)),
            str(r.write_failures),
            f"{r.seconds:.2f}",
        ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(heads))]
    left = max(1, len(names))  # settings left-aligned, numbers right-aligned, as zramctl
    lines = [
        " ".join(
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[ReplayResult]) -> str:
    """The JSON list, one object per configuration, in sweep order (docs/replay.md)."""
    return json.dumps([r.to_json() for r in results], indent=2) + "\n"


def write_record(
    path: str, outcomes: Sequence[Outcome], *, source: str, names: Sequence[str]
) -> str:
    """Write the samples of every configuration to the record file ``path`` (schema
    ``zramfs-record``, docs/experiments.md) and return it.

    One file for the whole sweep: the header's ``config`` holds the settings every
    configuration shares; each configuration is declared with ``add_config`` under the key
    `config_label` gives its swept settings (``algorithm=zstd chain_size=8``) and its samples
    carry that ``config_key``, in sweep order.  A replay without ``--set`` is one plain
    series (no key), as ``zramfs record`` writes.  Times are trace seconds."""
    from zramfs.record import RecordWriter

    configs = [o.result.config for o in outcomes]
    shared = (
        {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs[1:])}
        if configs
        else {}
    )
    with RecordWriter(
        path, config=shared, source=source, replay={"settings": list(names)}
    ) as writer:
        for outcome in outcomes:
            key = None
            if names:
                key = config_label({n: outcome.result.config[n] for n in names})
                writer.add_config(key, outcome.result.config)
            for t, devices in outcome.samples:
                writer.sample(t, devices, config_key=key)
    return path
