"""The ``device-ab`` and ``device-128k`` subcommands: CPU time of `ZramDevice.write`/`read`
requests in process (no FUSE), for one checkout or as an A/B of two.

``device-ab [ROOT_A [ROOT_B]]``: the hot paths on fio-like pages (`pages.fio_like_pages`): a
16 MiB lz4 device filled by 128 KiB writes, then per round 20,000 random 4 KiB overwrites,
20,000 random 4 KiB reads and the whole device read in 128 KiB requests; best round of 7 (one
tree) or 15 (two), µs per request (per page for the 128 KiB reads).

``device-128k [ROOT_A [ROOT_B]]``: 128 KiB writes and reads of `pages.mixed_pages` (the mix
of scripts/bench_device.py), 8192 pages as 256 requests, lz4 and zstd, best of 5, µs per page;
and the writes again with the codec replaced by a replay of its outputs: the time per page
outside the codec.

A ROOT is the top of a checkout (``git archive REV | tar -x -C /tmp/base`` makes one); none
means this one.  With two roots both trees are imported into one process (`load_tree`: each
its own ``allocator`` and ``zramfs``) and their rounds interleave, A B B A …, so both see the
same machine moment for moment: on a shared, noisy machine separate processes drift by several
per cent between runs and the second of two back-to-back processes tends to be the faster.
B/A is printed; running again with the roots swapped shows what is left of the noise (on a
2-core shared machine a tree against itself stays within ±5 %).  Every device's data is read
back and checked after the timed rounds.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import random
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from .common import ROOT
from .pages import PAGE, fio_like_pages, mixed_pages

#: the packages a tree brings (imported per tree, side by side)
PACKAGES = ("allocator", "zramfs")
#: pages per 128 KiB request
REQ_PAGES = 32

F = TypeVar("F", bound=Callable[..., Any])


def load_tree(root: Path) -> tuple[Any, Any]:
    """`zramfs.device` and `allocator` of the checkout at `root`, imported side by side with
    other trees'.

    The tree's packages are imported under their usual names (their modules import each other
    by those names), then taken out of `sys.modules` so that another tree can be imported the
    same way; the modules stay alive through the objects that use them."""
    theirs = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in PACKAGES}
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("zramfs.device"), importlib.import_module("allocator")
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
            del sys.modules[k]
        sys.modules.update(theirs)


def new_device(root: Path, algorithm: str, npages: int, max_pages: int) -> Any:
    """Device 0 of a fresh `Registry` of the tree at `root`, `algorithm`, `npages` pages."""
    device, allocator = load_tree(root)
    dev = device.Registry(memory=allocator.PhysicalMemory(max_pages=max_pages)).devices[0]
    dev.set_comp_algorithm(algorithm)
    dev.set_disksize(npages * PAGE)
    return dev


def own_copy(fn: F) -> F:
    """`fn` with a code object of its own.  CPython specialises a call site for the one type
    it sees: with timed loops shared by two trees' devices, the tree measured second came out
    2-5 % faster than the same tree measured first."""
    f = cast(types.FunctionType, fn)
    return cast(F, types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__))


class Workload(Protocol):
    label: str

    def round(self) -> None: ...
    def check(self) -> None: ...
    def us(self) -> tuple[float, ...]: ...


def interleave(loads: Sequence[Workload], rounds: int) -> None:
    """`rounds` rounds of every workload, the order reversed every other round (A B B A …)."""
    for n in range(rounds):
        for w in loads if n % 2 == 0 else loads[::-1]:
            w.round()


def report(loads: Sequence[Workload], names: Sequence[str], unit: Sequence[str]) -> None:
    """One line per workload, and B/A when there are two."""
    for w in loads:
        w.check()
        print(
            f"{w.label}: " + ", ".join(f"{n} {v:.2f} {u}" for n, v, u in zip(names, w.us(), unit)),
            flush=True,
        )
    if len(loads) == 2:
        a, b = loads[0].us(), loads[1].us()
        print("B/A: " + ", ".join(f"{n} {y / x:.3f}" for n, x, y in zip(names, a, b)), flush=True)


# ------------------------------------------------------------------------------ device-ab

AB_PAGES = 4096  # 16 MiB
AB_OPS = 20000


def _hot_round(
    dev: Any, pages: list[bytes], idx: list[int], nreqs: int
) -> tuple[float, float, float]:
    """One round: the 4 KiB overwrites, the 4 KiB reads, the 128 KiB reads (CPU seconds)."""
    t0 = time.process_time()
    for k, i in enumerate(idx):
        dev.write(i * PAGE, pages[k % len(pages)])
    t1 = time.process_time()
    for i in idx:
        dev.read(i * PAGE, PAGE)
    t2 = time.process_time()
    for k in range(nreqs):
        dev.read(k * REQ_PAGES * PAGE, REQ_PAGES * PAGE)
    t3 = time.process_time()
    return t1 - t0, t2 - t1, t3 - t2


class HotPaths:
    """One tree's lz4 device filled with fio-like pages, and its best time per path."""

    def __init__(self, root: Path, label: str, seed: int = 1) -> None:
        self.label = label
        rnd = random.Random(seed)
        self.pages = fio_like_pages(AB_PAGES, rnd)
        self.reqs = [b"".join(self.pages[i : i + REQ_PAGES]) for i in range(0, AB_PAGES, REQ_PAGES)]
        self.idx = [rnd.randrange(AB_PAGES) for _ in range(AB_OPS)]
        self.dev = new_device(root, "lz4", AB_PAGES, 1 << 16)
        for k, r in enumerate(self.reqs):
            self.dev.write(k * len(r), r)
        self.w = self.r4 = self.r128 = float("inf")
        self._timed = own_copy(_hot_round)

    def round(self) -> None:
        w, r4, r128 = self._timed(self.dev, self.pages, self.idx, len(self.reqs))
        self.w, self.r4, self.r128 = min(self.w, w), min(self.r4, r4), min(self.r128, r128)

    def check(self) -> None:
        expect = {i: self.pages[i] for i in range(AB_PAGES)}
        expect.update({i: self.pages[k % AB_PAGES] for k, i in enumerate(self.idx)})
        if not all(self.dev.read(i * PAGE, PAGE) == expect[i] for i in range(AB_PAGES)):
            raise SystemExit(f"bench.py device-ab: {self.label}: data check failed")

    def us(self) -> tuple[float, float, float]:
        """4 KiB write, 4 KiB read (µs per request), 128 KiB read (µs per page)."""
        n = len(self.idx)
        return self.w / n * 1e6, self.r4 / n * 1e6, self.r128 / AB_PAGES * 1e6


def device_ab(args: argparse.Namespace) -> int:
    roots = checked_roots(args.roots)
    rounds = args.rounds or (7 if len(roots) == 1 else 15)
    loads = [HotPaths(r, label) for r, label in roots.items()]
    gc.freeze()  # as the serving process does before it serves (zramfs mount)
    interleave(loads, rounds)
    report(loads, ("4 KiB write", "4 KiB read", "128 KiB read"), ("µs", "µs", "µs/page"))
    return 0


# ---------------------------------------------------------------------------- device-128k


def _large_round(dev: Any, reqs: list[bytes]) -> tuple[float, float]:
    """One round: every request written, then read back (CPU seconds)."""
    gc.collect()
    size = REQ_PAGES * PAGE
    t0 = time.process_time()
    for k, r in enumerate(reqs):
        dev.write(k * size, r)
    t1 = time.process_time()
    for k in range(len(reqs)):
        dev.read(k * size, size)
    t2 = time.process_time()
    return t1 - t0, t2 - t1


def _replay_round(dev: Any, reqs: list[bytes], outputs: list[bytes]) -> float:
    """Every request written again with the device's compressor replaced by a replay of its
    own outputs (CPU seconds): what a 128 KiB write costs outside the codec.

    The stand-in is `functools.partial(next, iterator)`, all C: called with a page it returns
    the next output, in the order the device compresses (every page that is not same-filled,
    request by request), for ~0.05 µs.  The pages stored are the real codec's, so the data
    check after the rounds covers the replay too; an output left over means the device
    compressed fewer pages than counted, and stops the run."""
    meta = dev._meta
    real = meta.comps[0]
    outs = iter(outputs)
    meta.comps[0] = types.SimpleNamespace(compress=functools.partial(next, outs))
    size = REQ_PAGES * PAGE
    gc.collect()
    try:
        t0 = time.process_time()
        for k, r in enumerate(reqs):
            dev.write(k * size, r)
        t1 = time.process_time()
    finally:
        meta.comps[0] = real
    if next(outs, None) is not None:
        raise SystemExit("bench.py device-128k: the replay codec fell out of step")
    return t1 - t0


class LargeRequests:
    """One tree's device of one codec written and read in 128 KiB requests, and written
    again outside the codec (`_replay_round`)."""

    def __init__(self, root: Path, label: str, algorithm: str, reqs: list[bytes]) -> None:
        self.label = f"{label} {algorithm}"
        self.reqs = reqs
        self.npages = len(reqs) * REQ_PAGES
        self.dev = new_device(root, algorithm, self.npages, 1 << 18)
        real = self.dev._meta.comps[0]
        # the compressor's outputs in the order the device asks for them (same-filled pages
        # are kept as their fill word, not compressed)
        self.outputs = [
            real.compress(r[o : o + PAGE])
            for r in reqs
            for o in range(0, len(r), PAGE)
            if r[o : o + PAGE] != r[o : o + 8] * (PAGE // 8)
        ]
        self.w = self.r = self.o = float("inf")
        self._timed = own_copy(_large_round)
        self._replayed = own_copy(_replay_round)

    def round(self) -> None:
        w, r = self._timed(self.dev, self.reqs)
        o = self._replayed(self.dev, self.reqs, self.outputs)
        self.w, self.r, self.o = min(self.w, w), min(self.r, r), min(self.o, o)

    def check(self) -> None:
        size = REQ_PAGES * PAGE
        if not all(self.dev.read(k * size, size) == r for k, r in enumerate(self.reqs)):
            raise SystemExit(f"bench.py device-128k: {self.label}: data check failed")

    def us(self) -> tuple[float, float, float]:
        """128 KiB write, read and write outside the codec, µs per page."""
        n = self.npages
        return self.w / n * 1e6, self.r / n * 1e6, self.o / n * 1e6


def device_128k(args: argparse.Namespace) -> int:
    if args.pages % REQ_PAGES:
        print(
            f"bench.py device-128k: --pages {args.pages} is not a multiple of {REQ_PAGES}",
            file=sys.stderr,
        )
        return 2
    roots = checked_roots(args.roots)
    pages = mixed_pages(args.pages)
    reqs = [b"".join(pages[i : i + REQ_PAGES]) for i in range(0, len(pages), REQ_PAGES)]
    for algorithm in args.codecs:
        loads = [LargeRequests(r, label, algorithm, reqs) for r, label in roots.items()]
        interleave(loads, args.rounds)
        report(
            loads,
            ("128 KiB write", "128 KiB read", "write outside the codec"),
            ("µs/page",) * 3,
        )
        for w in loads:
            w.dev.reset()
    return 0


# ------------------------------------------------------------------------------ arguments


def checked_roots(given: Sequence[str]) -> dict[Path, str]:
    """The trees to measure (this checkout when none is given), each with its label; one
    line on stderr and exit code 2 for more than two or one that is not a checkout."""
    if len(given) > 2:
        print("bench.py: at most two roots (A and B)", file=sys.stderr)
        raise SystemExit(2)
    roots: dict[Path, str] = {}
    for text in given or [str(ROOT)]:
        root = Path(text).resolve()
        if not all((root / pkg / "__init__.py").is_file() for pkg in PACKAGES):
            print(
                f"bench.py: {text}: not a checkout (no allocator/ and zramfs/ packages)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if root in roots:
            print(f"bench.py: {text}: given twice", file=sys.stderr)
            raise SystemExit(2)
        roots[root] = text
    return roots


def _help(part: int) -> str:
    """Paragraph `part` of this docstring and the one on roots, for a subcommand's --help."""
    paragraphs = (__doc__ or "").split("\n\n")
    return paragraphs[part] + "\n\n" + paragraphs[3]


def add_parsers(sub: Any, positive: Any, codec_list: Any) -> None:
    """The two subcommands' parsers (`positive`: an argparse type for counts ≥ 1;
    `codec_list`: one for a comma-separated list of codecs)."""
    ab = sub.add_parser(
        "device-ab",
        help="in process: µs per request of the hot device paths, one tree or an A/B of two",
        description=_help(1),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ab.add_argument("roots", nargs="*", metavar="ROOT", help="a checkout (default: this one)")
    ab.add_argument(
        "--rounds",
        type=positive,
        default=None,
        help="best of N rounds (default 7, with two roots 15)",
    )
    large = sub.add_parser(
        "device-128k",
        help="in process: µs per page of 128 KiB writes and reads, one tree or an A/B of two",
        description=_help(2),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    large.add_argument("roots", nargs="*", metavar="ROOT", help="a checkout (default: this one)")
    large.add_argument("--rounds", type=positive, default=5, help="best of N rounds (default 5)")
    large.add_argument(
        "--pages",
        type=positive,
        default=8192,
        help="4 KiB pages per device, a multiple of 32 (default 8192)",
    )
    large.add_argument(
        "--codecs", type=codec_list, default=["lz4", "zstd"], help="default: lz4,zstd"
    )
