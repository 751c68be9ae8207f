"""The command line of the harness: the benchmark's options and defaults (``--quick``), and
dispatch to the benchmark run, ``--profile``, ``--micro`` or a subcommand (``server-cpu``,
``device-ab``, ``device-128k``, ``daemon-ab``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from zramfs.codecs import AVAILABLE as CODECS
from zramfs.units import parse_size

from . import __doc__ as PACKAGE_DOC
from . import daemon_ab, device
from .common import PAGE_SIZE, BenchError, MiB, log
from .jobs import JOB_BY_NAME
from .micro import micro
from .profile import profile
from .run import DEFAULT_SETTLE_S, run_bench
from .server_cpu import server_cpu
from .systems import ALL_SYSTEMS, DEFAULT_SYSTEMS

#: ``--profile``'s jobs unless ``--jobs`` says otherwise: the 4 KiB ones
PROFILE_JOBS = ["randwrite-4k", "randread-4k", "randwrite-4k-4j", "randread-4k-4j"]


def image_size_arg(text: str) -> int:
    """``--size``: a positive size, rounded up to 4 KiB as zram's disksize is (so every system
    and fio agree on the bytes)."""
    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {bad or text!r}; choose from {', '.join(choices)}"
            )
        return items

    return parse


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1: {text!r}")
    return n


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description=(PACKAGE_DOC or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="systems: " + ", ".join(ALL_SYSTEMS) + "\njobs: " + ", ".join(JOB_BY_NAME),
    )
    p.add_argument(
        "--size",
        type=image_size_arg,
        default=None,
        help="image size of every system, also the bytes fio touches (default 256M)",
    )
    p.add_argument("--runtime", type=int, default=None, help="seconds per job (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    p.add_argument(
        "--systems",
        type=_csv(ALL_SYSTEMS),
        default=list(DEFAULT_SYSTEMS),
        help="default: " + ",".join(DEFAULT_SYSTEMS),
    )
    p.add_argument(
        "--jobs",
        type=_csv(tuple(JOB_BY_NAME)),
        default=None,
        help="default: all (with --profile: " + ",".join(PROFILE_JOBS) + ")",
    )
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out/)")
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="idle seconds before every measured run (default 2; 0 with --quick): "
        "a system run right after kernel zram's lost ~20%% without it",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 16 MiB images, 1 s per job, 1 round, no settle (unless given)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the benchmark: py-spy profile of one zramfs system under "
        "the selected synthetic jobs",
    )
    p.add_argument(
        "--micro",
        action="store_true",
        help="instead of the benchmark: in-process cost of each layer per 4 KiB call "
        "(codec, allocator, device, fs callbacks; no FUSE)",
    )
    p.add_argument(
        "--profile-system",
        default="zramfs-lz4",
        choices=("zramfs-lz4", "zramfs-zstd", "zramfs-lz4-nocompact", "zramfs-lz4-pure"),
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native")

    sub = p.add_subparsers(dest="command", metavar="{server-cpu,device-ab,device-128k,daemon-ab}")
    s = sub.add_parser(
        "server-cpu",
        help="CPU per I/O of a running server, per thread, while "
        "fio runs jobs on its image (instead of the benchmark)",
        description="CPU µs, minor faults and context switches per I/O of each "
        "thread of PID while fio runs each job on IMAGE",
    )
    s.add_argument("pid", type=int, metavar="PID", help="the serving process")
    s.add_argument("image", metavar="IMAGE", help="the image it serves (MNT/dev/zram0)")
    s.add_argument(
        "--jobs",
        type=_csv(tuple(JOB_BY_NAME)),
        default=["randwrite-4k"],
        help="default: randwrite-4k",
    )
    s.add_argument("--runtime", type=int, default=3, help="seconds per job (default 3)")
    device.add_parsers(sub, _positive, _csv(CODECS))
    daemon_ab.add_parser(sub, _positive, image_size_arg, _csv(daemon_ab.DEFAULT_JOBS))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "server-cpu":
        return server_cpu(args)
    if args.command == "device-ab":
        return device.device_ab(args)
    if args.command == "device-128k":
        return device.device_128k(args)
    if args.command == "daemon-ab":
        if args.settle < 0:
            print("bench.py daemon-ab: --settle must be >= 0", file=sys.stderr)
            return 2
        return daemon_ab.daemon_ab(args)
    quick = args.quick
    args.size = args.size or (16 * MiB if quick else 256 * MiB)
    args.runtime = args.runtime or (1 if quick else 4)
    args.rounds = args.rounds or (1 if quick else 3)
    if args.settle is None:
        args.settle = 0.0 if quick else DEFAULT_SETTLE_S
    if args.settle < 0:
        raise SystemExit("bench.py: --settle must be >= 0")
    if args.rounds < 1 or args.runtime < 1:
        raise SystemExit("bench.py: --rounds and --runtime must be >= 1")
    if args.jobs is None:
        args.jobs = PROFILE_JOBS if args.profile else list(JOB_BY_NAME)
    if args.micro:
        return micro(args)
    if args.profile:
        return profile(args)
    try:
        return run_bench(args)
    except BenchError as exc:
        log(f"bench: {exc}")
        return 1
