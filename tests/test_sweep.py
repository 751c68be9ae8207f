"""``zramfs replay``: sweeps over --set values, their executors and their bad input.

The traces are small and made in process: a `MountTracer` on a `Registry` device records
writes of mixed compressibility, discards and an explicit compact, as a mount's tracer
would.  Every executor (in process, ``--jobs 2``, a Dask ``LocalCluster``, real ``dask
scheduler`` + ``dask worker`` processes) must give the same JSON, bar ``seconds``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.trace_files import MOUNT
from zramfs.cli import main
from zramfs.device import Registry
from zramfs.record_schema import read_record
from zramfs.stat_fields import MM_STAT_FIELDS
from zramfs.sweep import SweepInputError, configurations, parse_sets
from zramfs.trace_hook import MountTracer
from zramfs.trace_writer import TraceWriter

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["--set", "algorithm=lz4,zstd", "--set", "chain_size=4,8"]
SWEEP_ORDER = [("lz4", "4"), ("lz4", "8"), ("zstd", "4"), ("zstd", "8")]


def make_trace(path: Path, pages: int = 192, seed: int = 14) -> Path:
    """A trace of one device: `pages` writes (zero, small, mid-size, huge and
    incompressible pages), a discard of every third page, then an explicit compact."""
    rng = random.Random(seed)
    registry = Registry(chain_size=4, chain_rule="max-used", num_devices=1)
    dev = registry.devices[0]
    tracer = MountTracer(TraceWriter(path, dict(MOUNT)))
    tracer.attach(registry)
    tracer.store(dev, "comp_algorithm", "lzo-rle")
    tracer.store(dev, "disksize", str(pages * 2 * 4096))
    words = [b"zram ", b"zsmalloc ", b"size class ", b"zspage ", b"handle "]
    for i in range(pages):
        kind = rng.randrange(5)
        if kind == 0:
            data = bytes(4096)
        elif kind == 4:
            data = rng.randbytes(4096)
        else:  # text with a random tail: 3 sizes of compressed object
            text = b"".join(rng.choice(words) for _ in range(700))[: 4096 - 600 * kind]
            data = text + rng.randbytes(4096 - len(text))
        dev.write(i * 4096, data)
    for i in range(0, pages, 3):
        dev.discard(i * 4096, 4096)
    tracer.store(dev, "compact", "1")
    tracer.close()
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trace(tmp_path_factory.mktemp("sweep") / "small.ztrace")


def replay_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    """Run ``zramfs replay ... --json`` in this process; its JSON list."""
    assert main(["replay", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def without_seconds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zramfs", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


# ---- configurations ----------------------------------------------------------------------
def test_cross_product_first_set_slowest() -> None:
    sets = parse_sets(["algorithm=lz4,zstd,lzo", "chain_size=4,8", "mem_limit=1M"])
    assert sets == [
        ("algorithm", ["lz4", "zstd", "lzo"]),
        ("chain_size", ["4", "8"]),
        ("mem_limit", ["1M"]),
    ]
    configs = configurations(sets)
    assert [(c["algorithm"], c["chain_size"], c["mem_limit"]) for c in configs] == [
        (a, c, "1M") for a in ("lz4", "zstd", "lzo") for c in ("4", "8")
    ]
    assert configurations([]) == [{}]


@pytest.mark.parametrize(
    "items, why",
    [
        (["algorithm=lz4", "algorithm=zstd"], "given twice"),
        (["algorithm"], "expected NAME=V1,V2"),
        (["=lz4"], "expected NAME=V1,V2"),
        (["algorithm=lz4,,zstd"], "empty value"),
        (["algorithm=lz4,lz4"], "listed twice"),
        (["nosuch=1"], "unknown setting 'nosuch'"),
        (["chain_size=4,99"], "chain_size='99'"),
        (["compact_policy=sometimes"], "compact_policy='sometimes'"),
    ],
)
def test_parse_sets_refuses(items: list[str], why: str) -> None:
    with pytest.raises(SweepInputError) as info:
        parse_sets(items)
    assert why in str(info.value) and "\n" not in str(info.value)


# ---- output ------------------------------------------------------------------------------
def test_json_one_object_per_configuration_in_order(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = replay_json(capsys, str(trace), *SWEEP)
    assert [(r["config"]["algorithm"], r["config"]["chain_size"]) for r in results] == SWEEP_ORDER
    for r in results:
        assert {
            "config",
            "mm_stat",
            "peak_mem_used",
            "seconds",
            "mean_mem_used",
            "pages_compacted",
            "write_failures",
        } <= r.keys()
        assert tuple(r["mm_stat"]) == MM_STAT_FIELDS
        assert all(isinstance(v, int) for v in r["mm_stat"].values())
        # the settings not swept keep the trace's: chain_rule, and no mem_limit
        assert r["config"]["chain_rule"] == "max-used" and r["mm_stat"]["mem_limit"] == 0
        assert r["mm_stat"]["orig_data_size"] > 0 and r["seconds"] > 0
        assert r["peak_mem_used"] >= r["mm_stat"]["mem_used_total"]
        assert r["write_failures"] == 0 and r["trace_complete"]
    # the settings act: the chain size changes the pool's pages, the codec the sizes
    by = {(r["config"]["algorithm"], r["config"]["chain_size"]): r["mm_stat"] for r in results}
    assert by["lz4", "8"]["mem_used_total"] != by["lz4", "4"]["mem_used_total"]
    assert by["lz4", "4"]["compr_data_size"] != by["zstd", "4"]["compr_data_size"]


def test_table_one_row_per_configuration(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(trace), *SWEEP, "--set", "mem_limit=0,256K"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ALGORITHM", "CHAIN_SIZE", "MEM_LIMIT", "DATA"]
    assert lines[0].split()[-4:] == ["PEAK", "MEAN", "WRITE-FAIL", "SECONDS"]
    rows = [line.split() for line in lines[1:]]
    assert [r[:3] for r in rows] == [[a, c, m] for a, c in SWEEP_ORDER for m in ("0", "256K")]
    # 256K is less than the trace needs: writes refused, counted; mem_limit shown as a size
    for r in rows:
        failures = int(r[-2])
        assert (failures > 0) == (r[2] == "256K")
        assert r[6] == ("256K" if r[2] == "256K" else "0B")
    assert "8 configuration(s)" in err


def test_no_set_replays_the_recorded_configuration(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [result] = replay_json(capsys, str(trace))
    assert result["config"]["algorithm"] == "lzo-rle" and result["config"]["chain_size"] == "4"
    [same] = replay_json(capsys, str(trace), "--set", "algorithm=lzo-rle")
    assert same["mm_stat"] == result["mm_stat"]


# ---- executors ---------------------------------------------------------------------------
def test_jobs_2_gives_the_results_of_jobs_1(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = replay_json(capsys, str(trace), *SWEEP)
    two = replay_json(capsys, str(trace), *SWEEP, "--jobs", "2")
    assert without_seconds(two) == without_seconds(one)


def test_record_one_file_keyed_by_configuration(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {}
    for jobs in ("1", "2"):
        files[jobs] = tmp_path / f"sweep-{jobs}.jsonl"
        results = replay_json(
            capsys,
            str(trace),
            *SWEEP,
            "--record",
            str(files[jobs]),
            "--interval",
            "0.004",
            "--jobs",
            jobs,
        )
        rec = read_record(files[jobs])
        assert list(rec.series) == [f"algorithm={a} chain_size={c}" for a, c in SWEEP_ORDER]
        for series, result in zip(rec.series.values(), results, strict=True):
            assert series.config == result["config"]
            assert len(series.samples) >= 2
            times = [s["t"] for s in series.samples]
            assert times == sorted(times)
            # the last sample is the device at the end of the trace: the final mm_stat
            assert series.samples[-1]["devices"]["zram0"]["mm_stat"] == result["mm_stat"]
    # the same time series whichever executor took the samples, bar the block layer's times
    # (/sys/block/zram0/stat's *_ticks, io_ticks, time_in_queue: this replay's wall time)
    assert record_lines(files["1"]) == record_lines(files["2"])


def record_lines(path: Path) -> list[dict[str, Any]]:
    """A record file's lines after the header (its creation time), without the block
    layer's times."""
    return [without_times(json.loads(x)) for x in path.read_text().splitlines()[1:]]


def without_times(line: dict[str, Any]) -> dict[str, Any]:
    for dev in line.get("devices", {}).values():
        stat = dev["stat"]
        for name in [k for k in stat if k.endswith("_ticks") or k == "time_in_queue"]:
            del stat[name]
    return line


@pytest.fixture
def distributed_module() -> Any:
    return pytest.importorskip(
        "distributed",
        reason="dask[distributed] is not installed "
        "(pip install 'zramfs[dask]'; the test extra has it)",
    )


def test_dask_local_cluster_gives_the_results_of_jobs_1(
    trace: Path, capsys: pytest.CaptureFixture[str], distributed_module: Any
) -> None:
    one = replay_json(capsys, str(trace), *SWEEP)
    with distributed_module.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        on_cluster = replay_json(
            capsys, str(trace), *SWEEP, "--scheduler", cluster.scheduler_address
        )
    assert without_seconds(on_cluster) == without_seconds(one)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End a process we started in its own session, and its children (the workers a nanny
    started): SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
    # the nanny's workers share the group: make sure none outlives the test
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def dask_on_localhost(
    tmp_path: Path, distributed: Any, *, workers: int, worker_python: list[str], nanny: bool = True
) -> Iterator[tuple[str, Path]]:
    """A real ``dask scheduler`` and a ``dask worker`` with `workers` worker processes on
    localhost, on a free port, always stopped on the way out; yields (scheduler address, the
    workers' TMPDIR).  `worker_python` is how the worker's Python starts (``-m dask`` or a
    ``-c`` that launches the same command line); without a `nanny` the worker runs in the
    process `worker_python` started."""
    address = f"tcp://127.0.0.1:{free_port()}"
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(worker_tmp), "PYTHONPATH": str(REPO)}
    scheduler = f"scheduler --host 127.0.0.1 --port {address.rsplit(':', 1)[1]} --no-dashboard"
    worker = (
        f"worker {address} --host 127.0.0.1 --nworkers {workers} --nthreads 1 --no-dashboard"
        f" --death-timeout 60 --local-directory {tmp_path / 'dask-worker-space'}"
        + ("" if nanny else " --no-nanny")
    )
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as logs:
        try:
            for argv, log in (
                ([sys.executable, "-m", "dask", *scheduler.split()], "scheduler.log"),
                ([*worker_python, *worker.split()], "worker.log"),
            ):
                out = logs.enter_context(open(tmp_path / log, "wb"))
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=out,
                        stderr=out,
                        start_new_session=True,
                        env=env,
                        cwd=tmp_path,
                    )
                )
            with distributed.Client(address, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=60)
                # where the workers put their copy of a trace (checked empty after a sweep)
                assert set(client.run(tempfile.gettempdir).values()) == {str(worker_tmp)}
            yield address, worker_tmp
        finally:
            for proc in reversed(procs):
                stop_group(proc)


@pytest.fixture
def dask_processes(tmp_path: Path, distributed_module: Any) -> Iterator[tuple[str, Path]]:
    """`dask_on_localhost` with two worker processes (a nanny each)."""
    with dask_on_localhost(
        tmp_path, distributed_module, workers=2, worker_python=[sys.executable, "-m", "dask"]
    ) as cluster:
        yield cluster


def test_dask_scheduler_and_worker_processes(
    trace: Path, capsys: pytest.CaptureFixture[str], dask_processes: tuple[str, Path]
) -> None:
    address, worker_tmp = dask_processes
    records = [worker_tmp.parent / "here.jsonl", worker_tmp.parent / "cluster.jsonl"]
    one = replay_json(capsys, str(trace), *SWEEP, "--record", str(records[0]))
    on_cluster = replay_json(
        capsys, str(trace), *SWEEP, "--scheduler", address, "--record", str(records[1])
    )
    assert without_seconds(on_cluster) == without_seconds(one)
    # the samples the workers took came back whole, in sweep order
    assert record_lines(records[1]) == record_lines(records[0])
    # each worker's copy of the trace is gone once the sweep is over
    assert [p.name for p in worker_tmp.iterdir() if p.name.startswith("zramfs-trace-")] == []


def test_worker_without_zramfs_one_line_exit_2(
    trace: Path, tmp_path: Path, distributed_module: Any
) -> None:
    """A worker that cannot import zramfs would die unpickling the first task (and lose the
    scattered trace): the sweep asks the workers first and stops with one line."""
    no_zramfs = (
        "import sys; sys.modules['zramfs'] = None; "
        "sys.argv[0] = 'dask'; from dask.cli import run_cli; run_cli()"
    )
    with dask_on_localhost(
        tmp_path,
        distributed_module,
        workers=1,
        worker_python=[sys.executable, "-c", no_zramfs],
        nanny=False,
    ) as (address, _):
        res = run_cli("replay", str(trace), "--scheduler", address)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert "cannot import zramfs" in res.stderr and "install zramfs on every worker" in res.stderr


# ---- bad input ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def garbage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("garbage") / "garbage.ztrace"
    path.write_bytes(random.Random(3).randbytes(5000))
    return path


@pytest.mark.parametrize(
    "argv, why",
    [
        (["{missing}"], "no such trace file"),
        (["{garbage}"], "not a zramfs trace"),
        (["{trace}", "--set", "nosuch=1"], "unknown setting 'nosuch'"),
        (["{trace}", "--set", "algorithm=lz4,nosuch"], "algorithm='nosuch'"),
        (["{trace}", "--set", "chain_size=4", "--set", "chain_size=8"], "given twice"),
        (["{trace}", "--jobs", "0"], "--jobs '0'"),
        (["{trace}", "--jobs", "two"], "--jobs 'two'"),
        (["{trace}", "--scheduler", "localhost:8786"], "expected tcp://HOST:PORT"),
        (["{trace}", "--scheduler", "tcp://127.0.0.1:99999"], "expected tcp://HOST:PORT"),
        (["{trace}", "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"], "exclude each other"),
        (["{trace}", "--record", "{missing}/r.jsonl"], "no such directory"),
        (["{trace}", "--record", "{trace}"], "is the trace itself"),
        ([], "required: TRACE"),
        (["{trace}", "--interval", "abc"], "invalid float value"),
        (["{trace}", "--interval", "0"], "--interval 0: must be > 0"),
        (["{trace}", "--connect-timeout", "-1"], "--connect-timeout -1: must be > 0"),
    ],
)
def test_bad_input_one_line_exit_2(
    argv: list[str], why: str, trace: Path, garbage: Path, tmp_path: Path
) -> None:
    names = {"trace": trace, "garbage": garbage, "missing": tmp_path / "nothing-here"}
    res = run_cli("replay", *(a.format(**names) for a in argv))
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and why in res.stderr, res.stderr
    assert res.stderr.startswith("zramfs replay: ")


def test_unreachable_scheduler_one_line_exit_2(trace: Path, distributed_module: Any) -> None:
    started = time.monotonic()
    res = run_cli(
        "replay",
        str(trace),
        "--scheduler",
        f"tcp://127.0.0.1:{free_port()}",
        "--connect-timeout",
        "1",
    )
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "no Dask scheduler answered" in res.stderr
    assert time.monotonic() - started < 20


def test_scheduler_without_dask_one_line_exit_2(trace: Path) -> None:
    code = (
        "import sys; sys.modules['distributed'] = None; from zramfs.cli import main; "
        f"sys.exit(main(['replay', {str(trace)!r}, '--scheduler', 'tcp://127.0.0.1:8786']))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "zramfs replay: --scheduler needs pip install 'zramfs[dask]'\n"


def test_truncated_trace_replays_up_to_its_last_complete_record(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [whole] = replay_json(capsys, str(trace))
    cut = tmp_path / "cut.ztrace"
    data = trace.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    [part] = replay_json(capsys, str(cut), "--set", "chain_size=4,8")[:1]
    assert not part["trace_complete"] and whole["trace_complete"]
    assert 0 < part["records"] < whole["records"]
    assert part["mm_stat"]["orig_data_size"] > 0
