"""The ``zramfs`` command: ``mount`` | ``umount`` | ``status``.

Owns the command line and the process life cycle of a mount:
- ``zramfs mount MNT``: builds the devices (one Registry, so one simulated RAM), configures them
  through the same attribute stores a script would use (comp_algorithm → disksize → mem_limit),
  and serves the tree.  By default it daemonises like a mount helper: the parent returns only
  when the kernel has completed the FUSE handshake (the child reports readiness from the
  ``init`` callback through a pipe), exits 0, or prints the child's error and exits 1.
  Threads (FUSE workers, the compaction daemon) start only in the child, after the fork.
  SIGINT/SIGTERM make libfuse unmount and the process exit cleanly.
  SIGINT/SIGTERM/SIGHUP are refused (with a line in the log) while a loop device is backed by
  the image: leaving would pull the device from under the loop's user (swap, a filesystem),
  like ``rmmod zram`` refuses while a device is in use; SIGKILL remains the hard way.
  Mounting on a place a killed daemon left stale cleans that mount up first, and says so.
  ``--mlock`` (for swap on a loop over the image): the serving process pins itself first
  thing, before it builds anything or starts a thread (`protect_process`): RLIMIT_MEMLOCK
  raised when allowed, ``mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)`` (ONFAULT: the arena is
  max_pages x 4 KiB of sparse address space, only the pages in use get populated and locked),
  and ``prctl(PR_SET_IO_FLUSHER)`` (PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE: its allocations do not
  recurse into I/O reclaim; inherited by every thread created afterwards: libfuse's workers,
  the compaction daemon).  The simulated RAM is then a memfd arena (``PhysicalMemory(backing=
  "memfd")``), whose freed frames are hole-punched, since MADV_DONTNEED fails on locked
  memory.  Either call failing fails the mount with the call and its errno; ``--no-io-flusher``
  knowingly skips the prctl (it needs CAP_SYS_RESOURCE).  Module parameters ``mlock`` and
  ``io_flusher`` (Y/N) show the state.
  ``--backend null --size N``: the null baseline instead of zram devices — one plain RAM image
  (`zramfs.image.MemoryImage`: no compression, no allocator) at ``MNT/dev/zram0`` and no
  other file (`zramfs.tree.ImageTree`); same FUSE front end, so it measures what FUSE and
  Python cost (``scripts/nullfs.py``, the benchmark's ``nullfs`` system).
- ``zramfs umount MNT``: refuses while a loop device is backed by a file of the mount (the
  unmount would fail with EBUSY anyway; the message says which loop to detach); recognises a
  stale mount (daemon killed: ENOTCONN) and removes it; a daemon that does not answer
  (stopped, deadlocked) does not hang it: the mount is removed without the daemon's help.
- ``zramfs status [MNT] [--json]``: a zramctl-like table read from the mounted files only; a
  mount whose daemon does not answer is reported and skipped, not waited for.

Every look at a mount that may have no working daemon goes through `zramfs.mount_probe`
(a child process with a deadline).  Pinning the serving process and its exit signals are
`zramfs.process_protect`; the status table is `zramfs.status`.  Names imported ``as``
themselves are re-exported: importers know them as this module's (docs/INTERFACES.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zramfs import plot, record, sweep
from zramfs.cmdline import one_line_errors
from zramfs.loopdev import LoopGuard, attached_loops
from zramfs.mount_probe import bounded, probe, unmount_without_daemon, zramfs_mounts
from zramfs.process_protect import MlockError as MlockError
from zramfs.process_protect import (
    block_exit_signals,
    io_flusher_set,
    protect_process,
    watch_exit_signals,
)
from zramfs.status import STATUS_COLUMNS as STATUS_COLUMNS
from zramfs.status import format_table, mount_status, status_warnings
from zramfs.status import human as human
from zramfs.units import parse_size

READY = b"READY\n"


# ---- helpers shared by the subcommands ---------------------------------------------------------
def uint_arg(text: str) -> int:
    """A value for a uint module parameter, parsed as its file does (kstrtouint, base 0)."""
    from zramfs.kparse import kstrtouint

    try:
        return kstrtouint(text, 0)
    except OSError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an unsigned 32-bit integer (what the module parameter accepts)"
        ) from None


# ---- --mlock: pin the serving process ------------------------------------------------------------
def _yn(flag: bool | None) -> str:
    return "Y" if flag else "N"


# ---- mount -------------------------------------------------------------------------------------
class _NoDaemon:
    """The null backend's stand-in for the compaction daemon: it has no pool to compact."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def null_backend_problem(args: argparse.Namespace) -> str | None:
    """Why ``--backend null`` cannot mount with these options (None: it can).  It has one
    image of ``--size`` and no zram device to configure."""
    if args.size <= 0:
        return "--backend null needs --size"
    if args.algorithm or args.mem_limit or args.devices != 1:
        return "--backend null has no zram device: no --algorithm, --mem-limit or --devices"
    return None


def _build_null_mount(args: argparse.Namespace):
    """``--backend null``: (tree, daemon, ops class, registry) as `build_mount`, for one
    `MemoryImage` at dev/zram0 in an `ImageTree` (no attribute or control file: none would
    have a zram device behind it), no daemon and no registry."""
    from zramfs.fs import ZramFS
    from zramfs.image import MemoryImage
    from zramfs.tree import ImageTree

    return ImageTree({0: MemoryImage(args.size)}), _NoDaemon(), ZramFS, None


def build_mount(args: argparse.Namespace, protection: dict[str, bool] | None = None):
    """Create the registry, configure the devices, and return (tree, ops, daemon).
    ``protection``: what `protect_process` did (for --mlock), shown as module parameters."""
    if getattr(args, "backend", "zram") == "null":
        return _build_null_mount(args)
    import zramfs
    from allocator import PhysicalMemory
    from allocator.locks import lockdep_stats, set_lockdep
    from zramfs import attrs
    from zramfs.codecs import lz4_binding, lz4_path
    from zramfs.daemon import DEFAULT_POLICY, CompactionDaemon, CompactionPolicy, ModuleParameter
    from zramfs.device import Registry
    from zramfs.fs import ZramFS
    from zramfs.tree import Tree

    if getattr(args, "lockdep", False):
        # Before any lock exists: the slot-table stripes are checked only when lockdep is on
        # at disksize time (zramfs.slots).
        set_lockdep(True)
    # --mlock: MADV_DONTNEED fails on locked memory, a memfd arena is hole-punched instead.
    memory = PhysicalMemory(backing="memfd") if getattr(args, "mlock", False) else None
    registry = Registry(
        memory=memory,
        chain_size=args.chain_size,
        chain_rule=args.chain_rule,
        num_devices=args.devices,
    )
    for dev in [registry.devices[i] for i in sorted(registry.devices)]:
        # The order a script uses: algorithm before disksize, mem_limit any time.
        if args.algorithm:
            attrs.store(dev, "comp_algorithm", args.algorithm)
        if args.size:
            attrs.store(dev, "disksize", str(args.size))
        if args.mem_limit:
            attrs.store(dev, "mem_limit", str(args.mem_limit))

    # --compact-policy (or its aliases); interval:MS sets the timer --compact-interval sets.
    policy = CompactionPolicy(interval_ms=args.compact_interval).with_spec(
        args.compact_policy or DEFAULT_POLICY
    )
    daemon = CompactionDaemon(registry, policy)
    static = (
        ModuleParameter("num_devices", 0o444, lambda: str(args.devices)),
        ModuleParameter("chain_size", 0o444, lambda: str(args.chain_size)),
        ModuleParameter("chain_rule", 0o444, lambda: args.chain_rule),
        # --mlock: mlockall done; io_flusher asks the kernel in the worker thread serving the read
        ModuleParameter("mlock", 0o444, lambda: _yn((protection or {}).get("mlock"))),
        ModuleParameter("io_flusher", 0o444, lambda: _yn(io_flusher_set())),
        # --lockdep: whether the lock checker runs, and how many violations it reported
        ModuleParameter("lockdep", 0o444, lambda: _yn(bool(lockdep_stats()["lockdep"]))),
        ModuleParameter("lockdep_violations", 0o444, lambda: str(lockdep_stats()["violations"])),
        # lz4 without a dictionary: the kernel's LZ4_compress_fast, or a fallback whose
        # compressed lengths (so mm_stat) differ from the kernel's
        ModuleParameter("lz4_path", 0o444, lz4_path),
        # how that call is made: from C (the compiled build), through ctypes, or none
        ModuleParameter("lz4_binding", 0o444, lz4_binding),
        # the build of the allocator and of the device: "compiled" (mypyc, setup.py) or "pure"
        # (ZRAMFS_PURE_PYTHON=1, or an install without a C compiler); each package's when
        # they differ (zramfs.build_mode_text)
        ModuleParameter("build_mode", 0o444, zramfs.build_mode_text),
    )
    tree = Tree(registry, [*static, *daemon.parameters()])
    return tree, daemon, ZramFS, registry


# The cyclic collector's generation thresholds in the serving process (CPython's: 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a pool's object graph.

    Every listed zspage sits in a circular fullness list, so they are all tracked (a freed
    one leaves no cycle behind and goes by reference counting, see allocator.zspage); with the
    default thresholds a full collection walked the whole pool every ~70,000 allocations —
    about 1 µs per 4 KiB write on a 256 MiB device (measured with gc.callbacks: 0.99–1.28 µs
    per write, 0.11–0.16 with this tuning), and a pause of tens of ms each time.  The objects
    built before serving (modules, the tree, the registry) are frozen out of every collection;
    larger thresholds keep the number of pending cyclic objects bounded (~10,000) while
    collecting 14× less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _serve(args: argparse.Namespace, on_ready) -> int:
    block_exit_signals()
    protection = None
    if getattr(args, "mlock", False):
        # Before any import that starts a thread (numpy's BLAS pool) and before libfuse's
        # workers: they inherit IO_FLUSHER, and MCL_FUTURE locks their stacks as they appear.
        protection = protect_process(io_flusher=not args.no_io_flusher)
    from zramfs import fs

    tree, daemon, ops_cls, registry = build_mount(args, protection)
    tracer = None
    if getattr(args, "trace", None) and registry is not None:  # --trace FILE (trace_hook)
        from zramfs.trace_hook import start_mount_trace

        tracer = start_mount_trace(args, registry, tree, daemon)
    # Keeps loop requests within one FUSE request, so a failed write fails whole (loopdev).
    guard = LoopGuard(args.mountpoint, fs.MAX_IO // 1024)
    if registry is not None:  # the zram tree: loop devices the guard could not clamp
        from zramfs.daemon import ModuleParameter

        tree.parameters["unclamped_loops"] = ModuleParameter(
            "unclamped_loops", 0o444, lambda: " ".join(guard.unclamped())
        )

    def ready() -> None:
        daemon.start()
        guard.start()
        if args.pidfile:
            Path(args.pidfile).write_text(f"{os.getpid()}\n")
        on_ready()

    def destroy() -> None:
        guard.stop()
        daemon.stop()

    ops = ops_cls(
        tree,
        image_cache=args.image_cache,
        on_init=ready,
        on_destroy=destroy,
        on_image_open=guard.image_opened,
    )
    _tune_gc()
    watch_exit_signals(ops, args.mountpoint)
    try:
        fs.serve(ops, args.mountpoint, allow_other=args.allow_other)
    finally:
        guard.stop()
        daemon.stop()
        if tracer is not None:
            tracer.close()
        if args.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(args.pidfile)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    # Uncaught errors inside FUSE callbacks are logged by the binding: give them a prefix
    # (they go to the terminal in the foreground, to --log when daemonised).
    logging.basicConfig(
        level=logging.WARNING, format="zramfs[%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    mnt = os.path.abspath(args.mountpoint)
    args.mountpoint = mnt
    # The daemon chdirs to / : make every path it keeps absolute.
    args.pidfile = os.path.abspath(args.pidfile) if args.pidfile else None
    args.log = os.path.abspath(args.log) if args.log else None
    args.trace = os.path.abspath(args.trace) if getattr(args, "trace", None) else None
    if args.trace:
        from zramfs.trace_hook import trace_path_problem

        problem = (
            "--trace needs the zram backend"
            if args.backend == "null"
            else trace_path_problem(args.trace)
        )
        if problem:
            print(f"zramfs: {problem}", file=sys.stderr)
            return 2
    if args.devices < 0:
        print("zramfs: --devices must be >= 0", file=sys.stderr)
        return 1
    if args.no_io_flusher and not args.mlock:
        print("zramfs: --no-io-flusher only goes with --mlock", file=sys.stderr)
        return 1
    if args.backend == "null" and (problem := null_backend_problem(args)):
        print(f"zramfs: {problem}", file=sys.stderr)
        return 1
    from zramfs import codecs, runtime

    if (problem := runtime.unsupported_runtime()) is not None:  # e.g. no GIL
        print(f"zramfs: {problem}", file=sys.stderr)
        return 2
    if args.backend == "zram" and (warning := codecs.lz4_path_warning()) is not None:
        print(f"zramfs: warning: {warning}", file=sys.stderr)
    if mnt in zramfs_mounts():
        found = probe(mnt)
        if found == "ok":
            print(f"zramfs: {mnt} is already a zramfs mount", file=sys.stderr)
            return 1
        if found == "hung":
            print(
                f"zramfs: {mnt} is a zramfs mount whose daemon does not respond; "
                f"`zramfs umount {mnt}` removes it",
                file=sys.stderr,
            )
            return 1
        # A killed daemon's leftover serves nothing: clean it up and mount anew, unless a
        # loop device still refers to it (its user must let go first).
        loops = attached_loops(mnt)
        if loops:
            print(
                f"zramfs: {mnt} holds a stale zramfs mount still used by loop device(s) "
                f"{', '.join(dev for dev, _ in loops)}; detach them (losetup -d) first",
                file=sys.stderr,
            )
            return 1
        why = unmount_without_daemon(mnt, "stale")
        if why is not None:
            print(
                f"zramfs: {mnt} holds a stale zramfs mount that cannot be removed: {why}",
                file=sys.stderr,
            )
            return 1
        print(
            f"zramfs: cleaned up a stale zramfs mount at {mnt} (its daemon was gone)",
            file=sys.stderr,
        )
    if not os.path.isdir(mnt):
        print(f"zramfs: mount point {mnt} is not a directory", file=sys.stderr)
        return 1
    try:
        import zramfs.fs  # noqa: F401  - fail here, in the caller's terminal, if FUSE is missing
    except ImportError as exc:
        print(f"zramfs: {exc}", file=sys.stderr)
        return 1
    if args.foreground:
        try:
            return _serve(args, lambda: None)
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"zramfs: mount failed: {exc}", file=sys.stderr)
            return 1

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return _wait_ready(rfd, pid, mnt, args.ready_timeout)
    # Child: detach from the terminal session, serve, and say when ready.
    os.close(rfd)
    os.setsid()
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    state = {"fd": wfd}

    def report_ready() -> None:
        fd = state.pop("fd", None)
        if fd is None:
            return
        os.write(fd, READY)
        os.close(fd)
        _detach_stdio(args.log)

    code = 1
    try:
        code = _serve(args, report_ready)
    except BaseException as exc:  # noqa: BLE001 - report everything, libfuse's RuntimeError too
        fd = state.pop("fd", None)
        if fd is not None:
            os.write(fd, f"mount failed: {exc}\n".encode())
            os.close(fd)
    os._exit(code)


def _detach_stdio(log_path: str | None) -> None:
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(null_in)
    os.close(target)


def _wait_ready(rfd: int, pid: int, mnt: str, timeout: float) -> int:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([rfd], [], [], 0.2)
        if not ready:
            continue
        data = os.read(rfd, 4096)
        if not data:
            break
        chunks.append(data)
        if b"".join(chunks).startswith(READY):
            os.close(rfd)
            # init ran; make sure libfuse did not give up right after it (it validates some
            # init results only then) and that the tree answers (dev/: every backend's).
            if mnt in zramfs_mounts() and os.path.isdir(os.path.join(mnt, "dev")):
                return 0
            print(
                f"zramfs: {mnt}: the daemon exited right after the FUSE handshake", file=sys.stderr
            )
            return 1
    os.close(rfd)
    message = b"".join(chunks).decode(errors="replace").strip()
    if not message:
        # No word from the child: it died (libfuse printed why on stderr) or timed out.
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            message = f"not ready after {timeout:.0f}s (pid {pid} left running)"
        else:
            message = f"mount helper exited with status {os.waitstatus_to_exitcode(status)}"
    print(f"zramfs: {mnt}: {message}", file=sys.stderr)
    return 1


# ---- umount ------------------------------------------------------------------------------------
def cmd_umount(args: argparse.Namespace) -> int:
    mnt = os.path.abspath(args.mountpoint)
    if mnt not in zramfs_mounts():
        print(f"zramfs: {mnt} is not a zramfs mount", file=sys.stderr)
        return 1
    loops = attached_loops(mnt)
    if loops:
        listing = ", ".join(f"{dev} ({path})" for dev, path in loops)
        print(
            f"zramfs: {mnt} is busy: loop device(s) still attached: {listing}; "
            "unmount/swapoff them and run `losetup -d` first",
            file=sys.stderr,
        )
        return 1
    state = probe(mnt)
    if state != "ok":
        if state == "stale":
            print(
                f"zramfs: {mnt}: stale mount (its daemon is gone: transport endpoint not "
                "connected); removing it",
                file=sys.stderr,
            )
        else:
            print(
                f"zramfs: {mnt}: its daemon does not respond; removing the mount without it",
                file=sys.stderr,
            )
        why = unmount_without_daemon(mnt, state)
        if why is None:
            return 0
        print(
            f"zramfs: cannot unmount {mnt}: {why}"
            + ("; its daemon does not respond" if state == "hung" else ""),
            file=sys.stderr,
        )
        return 1
    last_error = "no fusermount/umount found"
    for cmd in (["fusermount", "-u", mnt], ["fusermount3", "-u", mnt], ["umount", mnt]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
        if res.returncode == 0:
            break
        last_error = res.stderr.strip()
    else:
        print(f"zramfs: cannot unmount {mnt}: {last_error}", file=sys.stderr)
        return 1
    # fusermount returns once the kernel detached the mount; the daemon exits right after.
    return 0


# ---- status ------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    mounts = [os.path.abspath(args.mountpoint)] if args.mountpoint else zramfs_mounts()
    if args.mountpoint and mounts[0] not in zramfs_mounts():
        print(f"zramfs: {mounts[0]} is not a zramfs mount", file=sys.stderr)
        return 1
    result: dict[str, dict[str, Any]] = {}
    code = 0
    for m in mounts:
        answered, got = bounded(functools.partial(mount_status, m, include_all=args.all))
        if not answered or not isinstance(got, dict):
            why = "its daemon does not respond" if not answered else str(got)
            print(f"zramfs: {m}: {why}; skipped", file=sys.stderr)
            code = 1
            continue
        result[m] = got
    if args.json:
        print(
            json.dumps(
                {"mounts": [{"mountpoint": m, **status} for m, status in result.items()]}, indent=2
            )
        )
        return code
    rows = [row for status in result.values() for row in status["devices"]]
    if rows:
        sys.stdout.write(format_table(rows, raw_bytes=args.bytes))
    # Below the table, on stderr: the zramctl-like columns stay as they are.
    for m, status in result.items():
        for warning in status_warnings(status):
            print(f"zramfs: {m}: warning: {warning}", file=sys.stderr)
    return code


# ---- argument parsing --------------------------------------------------------------------------
class _CompactPolicyAction(argparse.Action):
    """``--compact-policy POLICY`` (and ``--compact-threshold PAGES``, its ``threshold:``
    alias): parsed by `zramfs.daemon.parse_policy`, the parser the module parameter uses, and
    stored normalised.  A bad value is one line on stderr and exit code 2 (no usage dump)."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, prefix: str = "", **kwargs: Any
    ) -> None:
        self.prefix = prefix
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from zramfs.daemon import BadPolicy, format_policy, parse_policy

        try:
            spec = parse_policy(self.prefix + str(values))
        except BadPolicy as exc:
            parser.exit(2, f"zramfs mount: {option_string}: {exc.strerror}\n")
        setattr(namespace, self.dest, format_policy(spec))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zramfs", description="zram in user space, over FUSE")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a zramfs tree on MNT")
    m.add_argument("mountpoint", metavar="MNT")
    m.add_argument(
        "--size",
        type=parse_size,
        default=0,
        help="initialise every device with this disksize (default: uninitialised)",
    )
    m.add_argument(
        "--backend",
        choices=("zram", "null"),
        default="zram",
        help="null: one plain RAM image of --size at dev/zram0 and no other file "
        "(no compression, no allocator): the FUSE baseline for benchmarks",
    )
    m.add_argument("--algorithm", default=None, help="comp_algorithm to set before disksize")
    m.add_argument("--devices", type=int, default=1, help="devices created at mount (num_devices)")
    m.add_argument("--mem-limit", type=parse_size, default=0, help="mem_limit of every device")
    m.add_argument(
        "--chain-size",
        type=int,
        choices=(4, 8),
        default=4,
        help="zsmalloc max pages per zspage (4 = Linux 5.17, 8 = current)",
    )
    m.add_argument("--chain-rule", choices=("max-used", "min-waste"), default="max-used")
    # The three policy options write one dest (the last one given wins); None = the default.
    m.add_argument(
        "--compact-policy",
        action=_CompactPolicyAction,
        default=None,
        metavar="POLICY",
        help="background compaction: shrinker (default; only under memory pressure "
        "or near mem_limit, as the kernel's zsmalloc shrinker, so mm_stat stays "
        "the kernel's), threshold:PAGES, interval:MS or off",
    )
    m.add_argument(
        "--compact-interval",
        type=uint_arg,
        default=1000,
        metavar="MS",
        help="background compaction: the daemon's timer (how often shrinker reads "
        "memory pressure and threshold the freeable pages; interval:MS sets it)",
    )
    m.add_argument(
        "--compact-threshold",
        action=_CompactPolicyAction,
        prefix="threshold:",
        dest="compact_policy",
        metavar="PAGES",
        help="deprecated: --compact-policy threshold:PAGES",
    )
    m.add_argument(
        "--no-compact",
        action="store_const",
        const="off",
        dest="compact_policy",
        help="--compact-policy off",
    )
    m.add_argument(
        "--image-cache",
        action="store_true",
        help="serve dev/zram* through the page cache instead of direct_io "
        "(allows shared writable mmap; hides the device's real cost)",
    )
    m.add_argument(
        "--mlock",
        action="store_true",
        help="pin the daemon in RAM (mlockall; the simulated RAM becomes a memfd whose "
        "freed frames are hole-punched) and mark it PR_SET_IO_FLUSHER, for swap "
        "on a loop over the image; fails the mount if either is refused",
    )
    m.add_argument(
        "--no-io-flusher",
        action="store_true",
        help="with --mlock: skip PR_SET_IO_FLUSHER (it needs CAP_SYS_RESOURCE)",
    )
    m.add_argument(
        "--lockdep",
        action="store_true",
        help="debug: check every lock acquisition against the lock order (as "
        "CONFIG_PROVE_LOCKING; slower); module parameter lockdep_violations "
        "counts what it found",
    )
    m.add_argument("--foreground", "-f", action="store_true", help="do not daemonise")
    m.add_argument(
        "--allow-other", action="store_true", help="let other users in (adds default_permissions)"
    )
    m.add_argument("--log", default=None, help="daemon stderr goes here (default /dev/null)")
    m.add_argument("--pidfile", default=None, help="write the serving process's pid here")
    m.add_argument(
        "--trace",
        default=None,
        metavar="FILE",
        help="record every operation reaching the devices into FILE, for "
        "`zramfs replay` (docs/trace-format.md)",
    )
    m.add_argument("--ready-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount a zramfs tree")
    u.add_argument("mountpoint", metavar="MNT")
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="zramctl-like table of the devices")
    s.add_argument("mountpoint", metavar="MNT", nargs="?")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include uninitialised devices")
    s.add_argument("--bytes", "-b", action="store_true", help="sizes in bytes")
    s.set_defaults(func=cmd_status)

    record.add_parser(sub)
    plot.add_parser(sub)
    sweep.add_parser(sub)
    one_line_errors(p, "zramfs")
    for name in ("mount", "umount", "status"):
        one_line_errors(sub.choices[name], f"zramfs {name}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # numpy's OpenBLAS starts a thread per core at import, each spinning ~0.1 s of CPU before
    # it sleeps; zramfs calls no BLAS routine, and on two cores that spin competes with a
    # mount's start and with a sweep's other replays.  Set before anything imports numpy (a
    # command imports it lazily), for this process and its children, unless the user chose.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
