"""Looking at a zramfs mount that may have no working daemon, and removing it without one.

Owns what ``zramfs mount``, ``umount`` and ``status`` (zramfs.cli) need to know about mounts
before they trust one: which zramfs mounts exist (``zramfs_mounts``, from /proc/self/mounts),
whether a mount's daemon answers (``probe``: "ok", "stale" when the daemon is gone and the
kernel says ENOTCONN, "hung" when nothing answers in time), and how to remove a mount without
its daemon's help (``unmount_without_daemon``: umount2(2), or ``fusermount -u -z`` without
root).

Every look at a mount that may have no working daemon goes through ``probe`` / ``bounded``,
which ask in a child process with a deadline: a request to a hung FUSE daemon can block the
asking thread uninterruptibly, and a stuck thread would keep this process from exiting.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import pickle
import select
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any, Literal

FSTYPE = "fuse.zramfs"
# How long a mount's daemon may take to answer one look (stat, or the status files).
PROBE_TIMEOUT_S = 5.0


def zramfs_mounts() -> list[str]:
    """Mount points of zramfs mounts, from /proc/self/mounts."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == FSTYPE:
                found.append(parts[1].encode().decode("unicode_escape"))
    return found


def bounded(fn: Callable[[], Any], timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, Any]:
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
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
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


def probe(mnt: str) -> MountState:
    """ "ok" (the daemon answers), "stale" (daemon gone: ENOTCONN) or "hung" (no answer)."""
    answered, code = bounded(functools.partial(_stat_errno, mnt))
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


def unmount_without_daemon(mnt: str, state: MountState) -> str | None:
    """Remove a mount whose daemon is gone or does not answer; None, or why it failed."""
    if os.geteuid() != 0:
        res = subprocess.run(
            ["fusermount", "-u", "-z", mnt], capture_output=True, text=True, timeout=30, check=False
        )
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
