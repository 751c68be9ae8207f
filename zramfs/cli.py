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

Every look at a mount that may have no working daemon goes through `_probe` / `_bounded`,
which ask in a child process with a deadline: a request to a hung FUSE daemon can block the
asking thread uninterruptibly, and a stuck thread would keep this process from exiting.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from zramfs import plot, record, sweep
from zramfs.loopdev import LoopGuard, attached_loops
from zramfs.units import parse_size

FSTYPE = "fuse.zramfs"
READY = b"READY\n"
# How long a mount's daemon may take to answer one look (stat, or the status files).
PROBE_TIMEOUT_S = 5.0
# The signals that end a mount (libfuse's own handlers would fuse_exit() on each of them).
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STATUS_COLUMNS = ("NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES",
                  "TOTAL", "MEM-LIMIT", "MEM-USED", "MIGRATED")


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


def zramfs_mounts() -> list[str]:
    """Mount points of zramfs mounts, from /proc/self/mounts."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == FSTYPE:
                found.append(parts[1].encode().decode("unicode_escape"))
    return found


def _bounded(fn: Callable[[], Any], timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, Any]:
    """Run ``fn`` in a child process; (True, its result) or (False, None) after ``timeout``.

    A child, not a thread: a FUSE request the daemon never answers may leave the asker in an
    uninterruptible wait, and a thread there would keep this process from exiting.  The
    child is killed on timeout and left to init.  ``fn`` must return something picklable
    (exceptions are returned, not raised, by the callers' functions).
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 0
        try:
            payload = pickle.dumps(fn())
        except BaseException as exc:   # noqa: BLE001 - everything goes back to the parent
            payload = pickle.dumps(RuntimeError(str(exc)))
            code = 1
        try:
            os.write(wfd, payload)
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                _reap(pid, 2.0)
                return False, None
            data = os.read(rfd, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(rfd)
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks)) if chunks else RuntimeError("probe died")
    return True, result


def _reap(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` for a killed child: until it has exited, the request it was
    stuck in still pins the mount (an unmount right away would see EBUSY).  A child the kernel
    cannot kill (its request already read by a deadlocked daemon) is left to init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)


MountState = Literal["ok", "stale", "hung"]


def _stat_errno(path: str) -> int:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _probe(mnt: str) -> MountState:
    """"ok" (the daemon answers), "stale" (daemon gone: ENOTCONN) or "hung" (no answer)."""
    answered, code = _bounded(functools.partial(_stat_errno, mnt))
    if not answered:
        return "hung"
    return "stale" if code == errno.ENOTCONN else "ok"


_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _umount2(mnt: str, flags: int = 0) -> int:
    """umount2(2) directly: 0 or the errno.  Unlike fusermount/umount(8) it never stats the
    mount point (the kernel resolves it with LOOKUP_MOUNTPOINT), so a dead or hung daemon
    cannot block it; the kernel aborts the FUSE connection when the mount goes."""
    if _libc.umount2(os.fsencode(mnt), flags) == 0:
        return 0
    return ctypes.get_errno()


def _unmount_without_daemon(mnt: str, state: MountState) -> str | None:
    """Remove a mount whose daemon is gone or does not answer; None, or why it failed."""
    if os.geteuid() != 0:
        res = subprocess.run(["fusermount", "-u", "-z", mnt], capture_output=True, text=True,
                             timeout=30, check=False)
        return None if res.returncode == 0 else (res.stderr.strip() or "fusermount failed")
    code = _umount2(mnt)
    if code == errno.EBUSY and state == "stale":
        # Still referenced (an open file of a dead daemon): nothing can be served any more,
        # detach it lazily so the place is usable again.
        code = _umount2(mnt, MNT_DETACH)
    if code == 0:
        return None
    if code == errno.EBUSY:
        return "it is busy (a file of it is open)"
    return os.strerror(code)


# ---- --mlock: pin the serving process ------------------------------------------------------------
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
PR_SET_IO_FLUSHER, PR_GET_IO_FLUSHER = 57, 58     # Linux 5.6+
CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24


class MlockError(OSError):
    """--mlock could not protect the process (the message names the call and its errno)."""


def _has_cap(cap: int) -> bool:
    """Whether the calling thread has ``cap`` in its effective set (/proc/self/status)."""
    try:
        with open("/proc/thread-self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return False


def _prctl(option: int, arg2: int = 0) -> int:
    """prctl(2) through libc: its result, or -1 with errno set (ctypes.get_errno)."""
    ul = ctypes.c_ulong
    return _libc.prctl(ctypes.c_int(option), ul(arg2), ul(0), ul(0), ul(0))


def io_flusher_set() -> bool | None:
    """PR_GET_IO_FLUSHER of the calling thread; None when the kernel does not answer (it needs
    CAP_SYS_RESOURCE, like the set, and Linux 5.6+)."""
    r = _prctl(PR_GET_IO_FLUSHER)
    return None if r < 0 else bool(r)


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


def protect_process(*, io_flusher: bool = True) -> dict[str, bool]:
    """What ``zramfs mount --mlock`` does in the serving process before anything else: pin every
    page of it now and later (mlockall), and mark it an I/O flusher.  Call it before any
    thread exists (the IO_FLUSHER flag is per task, inherited by threads created afterwards).
    Raises `MlockError` naming what failed; on success returns ``{"mlock": True,
    "io_flusher": io_flusher}``.  Never leaves the process half protected: when the prctl
    fails the pages are unlocked again (munlockall) before the error is raised."""
    import resource
    lim = resource.RLIMIT_MEMLOCK
    try:   # as mount helpers do; raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(lim, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(lim, (resource.getrlimit(lim)[1],) * 2)
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        code = ctypes.get_errno()
        soft = resource.getrlimit(lim)[0]
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        cap = "present" if _has_cap(CAP_IPC_LOCK) else "missing"
        raise MlockError(code, f"--mlock: mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) failed: "
                               f"{_errno_text(code)}; RLIMIT_MEMLOCK is {limit}, CAP_IPC_LOCK is "
                               f"{cap} (the daemon maps far more than any small limit)")
    if io_flusher and _prctl(PR_SET_IO_FLUSHER, 1) != 0:
        code = ctypes.get_errno()
        _libc.munlockall()
        why = ("it needs CAP_SYS_RESOURCE, which this process "
               + ("has" if _has_cap(CAP_SYS_RESOURCE) else "lacks"))
        if code == errno.EINVAL:
            why = "the kernel has no PR_SET_IO_FLUSHER (Linux 5.6+)"
        raise MlockError(code, f"--mlock: prctl(PR_SET_IO_FLUSHER, 1) failed: "
                               f"{_errno_text(code)}; {why}; --no-io-flusher mounts pinned "
                               f"without it (allocations may then recurse into I/O)")
    return {"mlock": True, "io_flusher": io_flusher}


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
    from allocator import PhysicalMemory
    from zramfs import attrs
    from allocator.locks import lockdep_stats, set_lockdep
    from zramfs.codecs import lz4_path
    from zramfs.daemon import (DEFAULT_POLICY, CompactionDaemon, CompactionPolicy,
                               ModuleParameter)
    from zramfs.device import Registry
    from zramfs.fs import ZramFS
    from zramfs.tree import Tree

    if getattr(args, "lockdep", False):
        # Before any lock exists: the slot-table stripes are checked only when lockdep is on
        # at disksize time (zramfs.slots).
        set_lockdep(True)
    # --mlock: MADV_DONTNEED fails on locked memory, a memfd arena is hole-punched instead.
    memory = PhysicalMemory(backing="memfd") if getattr(args, "mlock", False) else None
    registry = Registry(memory=memory, chain_size=args.chain_size, chain_rule=args.chain_rule,
                        num_devices=args.devices)
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
        args.compact_policy or DEFAULT_POLICY)
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
    )
    tree = Tree(registry, [*static, *daemon.parameters()])
    return tree, daemon, ZramFS, registry


def _block_exit_signals() -> None:
    """Block SIGINT/SIGTERM/SIGHUP in the calling thread, so in every thread it creates later:
    call it first thing in the serving process, before imports that start threads (numpy's
    BLAS pool), or the kernel may deliver the signal to a thread that has it unblocked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)


def _watch_exit_signals(ops: Any, mnt: str) -> None:
    """Take SIGINT/SIGTERM/SIGHUP away from libfuse and decide here whether to leave.

    They are blocked in every thread (the FUSE workers are created later and inherit the
    mask) and received by one thread with sigwait().  libfuse's handlers would fuse_exit()
    at once; with a loop device backed by the image that yanks the device from under the
    loop's user — swap or a filesystem gets EIO and loses data, which is what ``zramfs
    umount`` refuses to do.  So while a loop is attached the signal is refused with a line in
    the log and the mount keeps serving; otherwise ``ops.request_exit`` ends the FUSE loop
    exactly as libfuse's handler would (files still open get ENOTCONN).  SIGKILL stays the
    way to force it.  The signals must already be blocked (`_block_exit_signals`).
    """
    log = logging.getLogger("zramfs.cli")

    def watch() -> None:
        while True:
            sig = signal.Signals(signal.sigwait(EXIT_SIGNALS))
            loops = attached_loops(mnt)
            if loops:
                listing = ", ".join(f"{dev} ({path})" for dev, path in loops)
                log.warning("%s: not exiting on %s: loop device(s) still attached: %s; detach "
                            "them (swapoff/umount, losetup -d) and signal again (SIGKILL forces "
                            "it, and the loop's user then gets I/O errors)", mnt, sig.name, listing)
                continue
            ops.request_exit(mnt)

    threading.Thread(target=watch, name="zramfs-signals", daemon=True).start()


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
    _block_exit_signals()
    protection = None
    if getattr(args, "mlock", False):
        # Before any import that starts a thread (numpy's BLAS pool) and before libfuse's
        # workers: they inherit IO_FLUSHER, and MCL_FUTURE locks their stacks as they appear.
        protection = protect_process(io_flusher=not args.no_io_flusher)
    from zramfs import fs

    tree, daemon, ops_cls, registry = build_mount(args, protection)
    tracer = None
    if getattr(args, "trace", None) and registry is not None:   # --trace FILE (trace_hook)
        from zramfs.trace_hook import start_mount_trace
        tracer = start_mount_trace(args, registry, tree, daemon)
    # Keeps loop requests within one FUSE request, so a failed write fails whole (loopdev).
    guard = LoopGuard(args.mountpoint, fs.MAX_IO // 1024)
    if registry is not None:   # the zram tree: loop devices the guard could not clamp
        from zramfs.daemon import ModuleParameter
        tree.parameters["unclamped_loops"] = ModuleParameter(
            "unclamped_loops", 0o444, lambda: " ".join(guard.unclamped()))

    def ready() -> None:
        daemon.start()
        guard.start()
        if args.pidfile:
            Path(args.pidfile).write_text(f"{os.getpid()}\n")
        on_ready()

    def destroy() -> None:
        guard.stop()
        daemon.stop()

    ops = ops_cls(tree, image_cache=args.image_cache, on_init=ready, on_destroy=destroy,
                  on_image_open=guard.image_opened)
    _tune_gc()
    _watch_exit_signals(ops, args.mountpoint)
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
    logging.basicConfig(level=logging.WARNING,
                        format="zramfs[%(process)d] %(levelname)s %(name)s: %(message)s")
    mnt = os.path.abspath(args.mountpoint)
    args.mountpoint = mnt
    # The daemon chdirs to / : make every path it keeps absolute.
    args.pidfile = os.path.abspath(args.pidfile) if args.pidfile else None
    args.log = os.path.abspath(args.log) if args.log else None
    args.trace = os.path.abspath(args.trace) if getattr(args, "trace", None) else None
    if args.trace:
        from zramfs.trace_hook import trace_path_problem
        problem = ("--trace needs the zram backend" if args.backend == "null"
                   else trace_path_problem(args.trace))
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
    if (problem := runtime.unsupported_runtime()) is not None:   # e.g. no GIL
        print(f"zramfs: {problem}", file=sys.stderr)
        return 2
    if args.backend == "zram" and (warning := codecs.lz4_path_warning()) is not None:
        print(f"zramfs: warning: {warning}", file=sys.stderr)
    if mnt in zramfs_mounts():
        found = _probe(mnt)
        if found == "ok":
            print(f"zramfs: {mnt} is already a zramfs mount", file=sys.stderr)
            return 1
        if found == "hung":
            print(f"zramfs: {mnt} is a zramfs mount whose daemon does not respond; "
                  f"`zramfs umount {mnt}` removes it", file=sys.stderr)
            return 1
        # A killed daemon's leftover serves nothing: clean it up and mount anew, unless a
        # loop device still refers to it (its user must let go first).
        loops = attached_loops(mnt)
        if loops:
            print(f"zramfs: {mnt} holds a stale zramfs mount still used by loop device(s) "
                  f"{', '.join(dev for dev, _ in loops)}; detach them (losetup -d) first",
                  file=sys.stderr)
            return 1
        why = _unmount_without_daemon(mnt, "stale")
        if why is not None:
            print(f"zramfs: {mnt} holds a stale zramfs mount that cannot be removed: {why}",
                  file=sys.stderr)
            return 1
        print(f"zramfs: cleaned up a stale zramfs mount at {mnt} (its daemon was gone)",
              file=sys.stderr)
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
    except BaseException as exc:  # report everything, including libfuse's RuntimeError
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
            print(f"zramfs: {mnt}: the daemon exited right after the FUSE handshake",
                  file=sys.stderr)
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
        print(f"zramfs: {mnt} is busy: loop device(s) still attached: {listing}; "
              "unmount/swapoff them and run `losetup -d` first", file=sys.stderr)
        return 1
    state = _probe(mnt)
    if state != "ok":
        if state == "stale":
            print(f"zramfs: {mnt}: stale mount (its daemon is gone: transport endpoint not "
                  "connected); removing it", file=sys.stderr)
        else:
            print(f"zramfs: {mnt}: its daemon does not respond; removing the mount without it",
                  file=sys.stderr)
        why = _unmount_without_daemon(mnt, state)
        if why is None:
            return 0
        print(f"zramfs: cannot unmount {mnt}: {why}"
              + ("; its daemon does not respond" if state == "hung" else ""), file=sys.stderr)
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
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def device_rows(mnt: str, *, include_all: bool = False) -> list[dict[str, Any]]:
    base = Path(mnt)
    rows: list[dict[str, Any]] = []
    try:
        names = sorted((p.name for p in (base / "sys/block").iterdir()),
                       key=lambda n: int(n.removeprefix("zram")))
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
            algo = algo_text[algo_text.rindex("[") + 1:algo_text.rindex("]")]
        else:
            algo = algo_text.strip()
        streams = (_read(sysdir / "max_comp_streams") or "").strip()
        rows.append({
            "name": str(base / "dev" / name), "disksize": disksize, "data": mm_vals[0],
            "compr": mm_vals[1], "algorithm": algo, "streams": streams,
            "zero-pages": mm_vals[5], "total": mm_vals[2], "mem-limit": mm_vals[3],
            "mem-used": mm_vals[4], "migrated": mm_vals[6],
        })
    return rows


def format_table(rows: list[dict[str, Any]], *, raw_bytes: bool = False) -> str:
    def cell(key: str, value: Any) -> str:
        # As zramctl (zram.md §7.1): ZERO-PAGES is always the raw count, MIGRATED (pages_compacted,
        # a page count) goes through size_to_human_string like the byte columns.
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
        cells = [v.ljust(w) if i in (0, 4) else v.rjust(w)
                 for i, (v, w) in enumerate(zip(r, widths, strict=True))]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def mount_status(mnt: str, *, include_all: bool = False) -> dict[str, Any]:
    """One mount's part of ``zramfs status``: its ``devices`` (`device_rows`) and two module
    parameters that say whether its numbers and its loop devices can be trusted: ``lz4_path``
    (str) and ``unclamped_loops`` (list of loop devices).  Either is None when the mount does
    not serve it (``--backend null``)."""
    params = Path(mnt) / "sys/module/zramfs/parameters"
    lz4 = _read(params / "lz4_path")
    loops = _read(params / "unclamped_loops")
    return {"devices": device_rows(mnt, include_all=include_all),
            "lz4_path": None if lz4 is None else lz4.strip(),
            "unclamped_loops": None if loops is None else loops.split()}


def status_warnings(status: dict[str, Any]) -> list[str]:
    """What the text output of ``zramfs status`` says below the table about one mount."""
    from zramfs.codecs import LZ4_PATH_EXACT
    found = []
    if status["lz4_path"] not in (None, LZ4_PATH_EXACT):
        found.append(f"lz4_path is {status['lz4_path']}: lz4 compressed sizes and mm_stat "
                     "are not the kernel's")
    if status["unclamped_loops"]:
        found.append(f"unclamped_loops: {' '.join(status['unclamped_loops'])}: a write refused "
                     "part-way (mem_limit) through these loop devices can be lost silently "
                     "(see the mount's log)")
    return found


def cmd_status(args: argparse.Namespace) -> int:
    mounts = [os.path.abspath(args.mountpoint)] if args.mountpoint else zramfs_mounts()
    if args.mountpoint and mounts[0] not in zramfs_mounts():
        print(f"zramfs: {mounts[0]} is not a zramfs mount", file=sys.stderr)
        return 1
    result: dict[str, dict[str, Any]] = {}
    code = 0
    for m in mounts:
        answered, got = _bounded(functools.partial(mount_status, m, include_all=args.all))
        if not answered or not isinstance(got, dict):
            why = "its daemon does not respond" if not answered else str(got)
            print(f"zramfs: {m}: {why}; skipped", file=sys.stderr)
            code = 1
            continue
        result[m] = got
    if args.json:
        print(json.dumps({"mounts": [{"mountpoint": m, **status}
                                     for m, status in result.items()]}, indent=2))
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

    def __init__(self, option_strings: Sequence[str], dest: str, prefix: str = "",
                 **kwargs: Any) -> None:
        self.prefix = prefix
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
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
    m.add_argument("--size", type=parse_size, default=0,
                   help="initialise every device with this disksize (default: uninitialised)")
    m.add_argument("--backend", choices=("zram", "null"), default="zram",
                   help="null: one plain RAM image of --size at dev/zram0 and no other file "
                        "(no compression, no allocator): the FUSE baseline for benchmarks")
    m.add_argument("--algorithm", default=None, help="comp_algorithm to set before disksize")
    m.add_argument("--devices", type=int, default=1, help="devices created at mount (num_devices)")
    m.add_argument("--mem-limit", type=parse_size, default=0, help="mem_limit of every device")
    m.add_argument("--chain-size", type=int, choices=(4, 8), default=4,
                   help="zsmalloc max pages per zspage (4 = Linux 5.17, 8 = current)")
    m.add_argument("--chain-rule", choices=("max-used", "min-waste"), default="max-used")
    # The three policy options write one dest (the last one given wins); None = the default.
    m.add_argument("--compact-policy", action=_CompactPolicyAction, default=None,
                   metavar="POLICY",
                   help="background compaction: shrinker (default; only under memory pressure "
                        "or near mem_limit, as the kernel's zsmalloc shrinker, so mm_stat stays "
                        "the kernel's), threshold:PAGES, interval:MS or off")
    m.add_argument("--compact-interval", type=uint_arg, default=1000, metavar="MS",
                   help="background compaction: the daemon's timer (how often shrinker reads "
                        "memory pressure and threshold the freeable pages; interval:MS sets it)")
    m.add_argument("--compact-threshold", action=_CompactPolicyAction, prefix="threshold:",
                   dest="compact_policy", metavar="PAGES",
                   help="deprecated: --compact-policy threshold:PAGES")
    m.add_argument("--no-compact", action="store_const", const="off", dest="compact_policy",
                   help="--compact-policy off")
    m.add_argument("--image-cache", action="store_true",
                   help="serve dev/zram* through the page cache instead of direct_io "
                        "(allows shared writable mmap; hides the device's real cost)")
    m.add_argument("--mlock", action="store_true",
                   help="pin the daemon in RAM (mlockall; the simulated RAM becomes a memfd whose "
                        "freed frames are hole-punched) and mark it PR_SET_IO_FLUSHER, for swap "
                        "on a loop over the image; fails the mount if either is refused")
    m.add_argument("--no-io-flusher", action="store_true",
                   help="with --mlock: skip PR_SET_IO_FLUSHER (it needs CAP_SYS_RESOURCE)")
    m.add_argument("--lockdep", action="store_true",
                   help="debug: check every lock acquisition against the lock order (as "
                        "CONFIG_PROVE_LOCKING; slower); module parameter lockdep_violations "
                        "counts what it found")
    m.add_argument("--foreground", "-f", action="store_true", help="do not daemonise")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users in (adds default_permissions)")
    m.add_argument("--log", default=None, help="daemon stderr goes here (default /dev/null)")
    m.add_argument("--pidfile", default=None, help="write the serving process's pid here")
    m.add_argument("--trace", default=None, metavar="FILE",
                   help="record every operation reaching the devices into FILE, for "
                        "`zramfs replay` (docs/trace-format.md)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
