"""``zramfs status``: the zramctl-like table of a mount's devices, read from its files only.

Owns what one mount contributes to ``zramfs status`` (zramfs.cli runs it in a child process
with a deadline, zramfs.mount_probe.bounded, as a mount's daemon may not answer): the device
rows (``device_rows``: disksize and mm_stat of every device, as util-linux ``zramctl`` reads
them), the two module parameters that say whether the numbers and the loop devices can be
trusted (``mount_status``, ``status_warnings``), and the table (``format_table``), with
zramctl's columns and formatting rules (docs/zram.md, "zramctl").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATUS_COLUMNS = (
    "NAME",
    "DISKSIZE",
    "DATA",
    "COMPR",
    "ALGORITHM",
    "STREAMS",
    "ZERO-PAGES",
    "TOTAL",
    "MEM-LIMIT",
    "MEM-USED",
    "MIGRATED",
)


def human(n: int) -> str:
    """util-linux ``size_to_human_string(SIZE_SUFFIX_1LETTER)``: 0B, 4K, 1.5M, 2G."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for suffix in "KMGTPE":
        value /= 1024
        if value < 1024 or suffix == "E":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    raise AssertionError("unreachable")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def device_rows(mnt: str, *, include_all: bool = False) -> list[dict[str, Any]]:
    base = Path(mnt)
    rows: list[dict[str, Any]] = []
    try:
        names = sorted(
            (p.name for p in (base / "sys/block").iterdir()),
            key=lambda n: int(n.removeprefix("zram")),
        )
    except OSError:
        return rows
    for name in names:
        sysdir = base / "sys/block" / name
        disksize = int((_read(sysdir / "disksize") or "0").strip() or 0)
        if disksize == 0 and not include_all:
            continue  # zramctl lists only initialised devices
        mm = (_read(sysdir / "mm_stat") or "").split()
        mm_vals = [int(x) for x in mm] + [0] * (9 - len(mm))
        algo_text = _read(sysdir / "comp_algorithm") or ""
        if "[" in algo_text:
            algo = algo_text[algo_text.rindex("[") + 1 : algo_text.rindex("]")]
        else:
            algo = algo_text.strip()
        streams = (_read(sysdir / "max_comp_streams") or "").strip()
        rows.append(
            {
                "name": str(base / "dev" / name),
                "disksize": disksize,
                "data": mm_vals[0],
                "compr": mm_vals[1],
                "algorithm": algo,
                "streams": streams,
                "zero-pages": mm_vals[5],
                "total": mm_vals[2],
                "mem-limit": mm_vals[3],
                "mem-used": mm_vals[4],
                "migrated": mm_vals[6],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], *, raw_bytes: bool = False) -> str:
    def cell(key: str, value: Any) -> str:
        # As zramctl (docs/zram.md, "zramctl"): ZERO-PAGES is always the raw count, MIGRATED
        # (pages_compacted, a page count) goes through size_to_human_string like the byte columns.
        if key in ("name", "algorithm", "streams", "zero-pages") or raw_bytes:
            return str(value)
        return human(int(value))

    table = [list(STATUS_COLUMNS)]
    for row in rows:
        table.append([cell(c.lower(), row[c.lower()]) for c in STATUS_COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(STATUS_COLUMNS))]
    lines = []
    for r in table:
        # NAME and ALGORITHM left-aligned, numbers right-aligned, like zramctl.
        cells = [
            v.ljust(w) if i in (0, 4) else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def mount_status(mnt: str, *, include_all: bool = False) -> dict[str, Any]:
    """One mount's part of ``zramfs status``: its ``devices`` (`device_rows`) and three module
    parameters: two that say whether its numbers and its loop devices can be trusted,
    ``lz4_path`` (str) and ``unclamped_loops`` (list of loop devices), and ``build_mode``, the
    build its daemon runs ("compiled" or "pure"; each package's when the allocator's and the
    device's differ: ``zramfs.build_mode_text``).  Each is None when the mount does
    not serve it (``--backend null``)."""
    params = Path(mnt) / "sys/module/zramfs/parameters"
    lz4 = _read(params / "lz4_path")
    loops = _read(params / "unclamped_loops")
    build = _read(params / "build_mode")
    return {
        "devices": device_rows(mnt, include_all=include_all),
        "lz4_path": None if lz4 is None else lz4.strip(),
        "unclamped_loops": None if loops is None else loops.split(),
        "build_mode": None if build is None else build.strip(),
    }


def status_warnings(status: dict[str, Any]) -> list[str]:
    """What the text output of ``zramfs status`` says below the table about one mount."""
    from zramfs.codecs import LZ4_PATH_EXACT

    found = []
    if status["lz4_path"] not in (None, LZ4_PATH_EXACT):
        found.append(
            f"lz4_path is {status['lz4_path']}: lz4 compressed sizes and mm_stat "
            "are not the kernel's"
        )
    if status["unclamped_loops"]:
        found.append(
            f"unclamped_loops: {' '.join(status['unclamped_loops'])}: a write refused "
            "part-way (mem_limit) through these loop devices can be lost silently "
            "(see the mount's log)"
        )
    return found
