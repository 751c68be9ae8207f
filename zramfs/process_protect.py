"""Protecting the serving process of a mount: ``--mlock`` and the signals that end it.

Owns what ``zramfs mount`` (zramfs.cli) does to its own serving process so that swap or a
filesystem on a loop over the image keeps working:

- ``protect_process`` (``--mlock``): RLIMIT_MEMLOCK raised when allowed,
  ``mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)`` (ONFAULT: the arena is max_pages x 4 KiB of
  sparse address space, only the pages in use get populated and locked), and
  ``prctl(PR_SET_IO_FLUSHER)`` (PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE: its allocations do not
  recurse into I/O reclaim; inherited by every thread created afterwards).  Either call failing
  raises ``MlockError`` naming the call and its errno; ``io_flusher_set`` asks the kernel
  whether the flag is on (the module parameter ``io_flusher``).  Why swap over FUSE needs
  this: docs/fuse-and-codecs.md, "Loop over FUSE, swap and deadlocks".
- ``block_exit_signals`` / ``watch_exit_signals``: SIGINT/SIGTERM/SIGHUP are taken away from
  libfuse and refused while a loop device is backed by the image (leaving would pull the
  device from under the loop's user, as ``rmmod zram`` refuses while a device is in use).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import threading
from typing import Any

from zramfs.loopdev import attached_loops

# The signals that end a mount (libfuse's own handlers would fuse_exit() on each of them).
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_libc = ctypes.CDLL(None, use_errno=True)
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
PR_SET_IO_FLUSHER, PR_GET_IO_FLUSHER = 57, 58  # Linux 5.6+
CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24


class MlockError(OSError):
    """--mlock could not protect the process (the message names the call and its errno)."""


def has_cap(cap: int) -> bool:
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
    try:  # as mount helpers do; raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(lim, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(lim, (resource.getrlimit(lim)[1],) * 2)
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        code = ctypes.get_errno()
        soft = resource.getrlimit(lim)[0]
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        cap = "present" if has_cap(CAP_IPC_LOCK) else "missing"
        raise MlockError(
            code,
            f"--mlock: mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) failed: "
            f"{_errno_text(code)}; RLIMIT_MEMLOCK is {limit}, CAP_IPC_LOCK is "
            f"{cap} (the daemon maps far more than any small limit)",
        )
    if io_flusher and _prctl(PR_SET_IO_FLUSHER, 1) != 0:
        code = ctypes.get_errno()
        _libc.munlockall()
        why = "it needs CAP_SYS_RESOURCE, which this process " + (
            "has" if has_cap(CAP_SYS_RESOURCE) else "lacks"
        )
        if code == errno.EINVAL:
            why = "the kernel has no PR_SET_IO_FLUSHER (Linux 5.6+)"
        raise MlockError(
            code,
            f"--mlock: prctl(PR_SET_IO_FLUSHER, 1) failed: "
            f"{_errno_text(code)}; {why}; --no-io-flusher mounts pinned "
            f"without it (allocations may then recurse into I/O)",
        )
    return {"mlock": True, "io_flusher": io_flusher}


def block_exit_signals() -> None:
    """Block SIGINT/SIGTERM/SIGHUP in the calling thread, so in every thread it creates later:
    call it first thing in the serving process, before imports that start threads (numpy's
    BLAS pool), or the kernel may deliver the signal to a thread that has it unblocked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)


def watch_exit_signals(ops: Any, mnt: str) -> None:
    """Take SIGINT/SIGTERM/SIGHUP away from libfuse and decide here whether to leave.

    They are blocked in every thread (the FUSE workers are created later and inherit the
    mask) and received by one thread with sigwait().  libfuse's handlers would fuse_exit()
    at once; with a loop device backed by the image that yanks the device from under the
    loop's user — swap or a filesystem gets EIO and loses data, which is what ``zramfs
    umount`` refuses to do.  So while a loop is attached the signal is refused with a line in
    the log and the mount keeps serving; otherwise ``ops.request_exit`` ends the FUSE loop
    exactly as libfuse's handler would (files still open get ENOTCONN).  SIGKILL stays the
    way to force it.  The signals must already be blocked (`block_exit_signals`).
    """
    log = logging.getLogger(__name__)

    def watch() -> None:
        while True:
            sig = signal.Signals(signal.sigwait(EXIT_SIGNALS))
            loops = attached_loops(mnt)
            if loops:
                listing = ", ".join(f"{dev} ({path})" for dev, path in loops)
                log.warning(
                    "%s: not exiting on %s: loop device(s) still attached: %s; detach "
                    "them (swapoff/umount, losetup -d) and signal again (SIGKILL forces "
                    "it, and the loop's user then gets I/O errors)",
                    mnt,
                    sig.name,
                    listing,
                )
                continue
            ops.request_exit(mnt)

    threading.Thread(target=watch, name="zramfs-signals", daemon=True).start()
