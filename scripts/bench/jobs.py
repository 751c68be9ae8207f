"""The fio side: the jobs (their options, written out as standalone job files), the prefill,
running one job on an image and reading fio's JSON into the harness's figures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import BenchError

COMPRESSIBLE = {
    "buffer_compress_percentage": "50",
    "buffer_compress_chunk": "4k",
    "refill_buffers": "1",
    "scramble_buffers": "0",
}
COMMON = {
    "filename": "${FILENAME}",
    "size": "${SIZE}",
    "runtime": "${RUNTIME}",
    "time_based": "1",
    "ioengine": "psync",
    "direct": "1",
    "thread": "1",
    "group_reporting": "1",
    "randrepeat": "1",
    "randseed": "1234",
}


@dataclass(frozen=True)
class Job:
    name: str
    title: str
    options: dict[str, str]
    writes: bool  # the job writes (the zstd ≥ 1.5× nbdkit target applies)
    realdata: bool = False  # runs on the real-data image (after it is written)
    python: bool = False  # not fio: the real-data image write done by this script

    def jobfile(self) -> str:
        lines = [
            f"; {self.title} (scripts/bench.py)",
            "; FILENAME=... SIZE=... RUNTIME=... fio --output-format=json THIS",
            "[global]",
            *(f"{k}={v}" for k, v in COMMON.items()),
            "",
            f"[{self.name}]",
            *(f"{k}={v}" for k, v in self.options.items()),
        ]
        return "\n".join(lines) + "\n"


JOBS: tuple[Job, ...] = (
    Job(
        "randwrite-4k",
        "4 KiB random write, QD1",
        {"rw": "randwrite", "bs": "4k", **COMPRESSIBLE},
        True,
    ),
    Job("randread-4k", "4 KiB random read, QD1", {"rw": "randread", "bs": "4k"}, False),
    Job(
        "randwrite-4k-4j",
        "4 KiB random write, 4 jobs",
        {"rw": "randwrite", "bs": "4k", "numjobs": "4", **COMPRESSIBLE},
        True,
    ),
    Job(
        "randread-4k-4j",
        "4 KiB random read, 4 jobs",
        {"rw": "randread", "bs": "4k", "numjobs": "4"},
        False,
    ),
    Job(
        "seqwrite-128k",
        "128 KiB sequential write",
        {"rw": "write", "bs": "128k", **COMPRESSIBLE},
        True,
    ),
    Job("seqread-128k", "128 KiB sequential read", {"rw": "read", "bs": "128k"}, False),
    Job(
        "randrw-70-30",
        "4 KiB random 70 % read / 30 % write",
        {"rw": "randrw", "rwmixread": "70", "bs": "4k", **COMPRESSIBLE},
        True,
    ),
    Job(
        "real-write-128k",
        "real-data image written, 128 KiB O_DIRECT (Python writer)",
        {},
        True,
        realdata=True,
        python=True,
    ),
    Job(
        "real-seqread-128k",
        "real-data image, 128 KiB sequential read",
        {"rw": "read", "bs": "128k"},
        False,
        realdata=True,
    ),
    Job(
        "real-randread-4k",
        "real-data image, 4 KiB random read",
        {"rw": "randread", "bs": "4k"},
        False,
        realdata=True,
    ),
)
JOB_BY_NAME = {j.name: j for j in JOBS}
PREFILL = Job(
    "prefill",
    "sequential prefill, compressible",
    {"rw": "write", "bs": "128k", "time_based": "0", "runtime": "0", **COMPRESSIBLE},
    True,
)


def run_fio(
    job: Job, jobfile: Path, image: Path, size: int, runtime: int, timeout: float
) -> dict[str, Any]:
    env = dict(os.environ, FILENAME=str(image), SIZE=str(size), RUNTIME=str(runtime))
    proc = subprocess.Popen(
        ["fio", "--output-format=json", str(jobfile)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        raise BenchError(f"fio {job.name} on {image}: timed out after {timeout:.0f} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        raise
    if proc.returncode != 0:
        raise BenchError(
            f"fio {job.name} on {image} exited {proc.returncode}: {err.strip()[-400:]}"
        )
    # fio may print warnings before the JSON document
    data = json.loads(out[out.index("{") :])
    return summarise_fio(data)


def summarise_fio(data: dict[str, Any]) -> dict[str, float]:
    job = data["jobs"][0]
    iops = 0.0
    bw = 0.0
    ios = 0
    p99s: dict[str, float] = {}
    for d in ("read", "write"):
        side = job.get(d) or {}
        if not side.get("total_ios"):
            continue
        ios += int(side["total_ios"])
        iops += float(side["iops"])
        bw += float(side["bw_bytes"])
        pct = (side.get("clat_ns") or {}).get("percentile") or {}
        if "99.000000" in pct:
            p99s[d] = pct["99.000000"] / 1000
    # a mixed job reports the p99 of its reads (70 % of the I/O); others their only direction
    p99 = p99s.get("read", p99s.get("write", 0.0))
    out = {"iops": iops, "mbps": bw / 1e6, "p99_us": p99, "ios": float(ios)}
    for d, v in p99s.items():
        out[f"p99_{d}_us"] = v
    return out
