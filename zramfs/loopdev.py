"""Loop devices backed by a mount's images: finding them, and keeping their requests whole.

Why a FUSE block image needs this (found with a mem_limit test, Linux 6.18): the loop driver
hands each request to the backing file as one write; FUSE cuts a write into ``max_write``
(128 KiB) pieces and, when a later piece fails (mem_limit: EIO), returns the *short count* of
the pieces that succeeded.  The loop driver completes a short write as success
(``lo_complete_rq`` retries only short *reads*), so the rest of the request is lost without an
error reaching the user.  zram itself fails the whole bio.  With the loop device's
``queue/max_sectors_kb`` no larger than ``max_write`` every loop request is one FUSE request,
and a failure fails it whole — the loop user sees EIO, as with zram.

`LoopGuard` therefore watches for loop devices on the mount's images and lowers their
``max_sectors_kb`` to the FUSE request size (logging it once per device), and puts the old
value back once the device is detached from the mount (the setting outlives a detach).  It
listens to the kernel's uevents (NETLINK_KOBJECT_UEVENT): attaching a loop device sends a
``change`` event for it, so the device is clamped within a fraction of a millisecond, before
its user (mkfs, swapon) has written anything — and the guard costs nothing while no loop
device changes (no polling, so no GIL traffic next to the I/O threads).  Where uevents are
not available it scans every second, and every 50 ms for a second after an image is opened
(losetup opens the image just before it configures the loop device).  Without write
permission on sysfs (a non-root mount cannot attach loop devices anyway) it logs one warning
per device.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SYS_BLOCK = Path("/sys/block")
SCAN_INTERVAL_S = 1.0
# Without uevents, after an image open: scan this often, for this long.
BURST_INTERVAL_S = 0.05
BURST_LENGTH_S = 1.0
NETLINK_KOBJECT_UEVENT = 15      # linux/netlink.h; multicast group 1 = the kernel's events
# With uevents, a scan anyway this often (a missed event, ENOBUFS).
EVENT_RESCAN_S = 5.0


def attached_loops(mnt: str) -> list[tuple[str, str]]:
    """(loop device, backing file) for every loop device backed by a file under ``mnt``."""
    # realpath() of the parent only: an lstat of the mount point itself would be a request to
    # the daemon, which may be dead or hung when this is asked.
    parent, name = os.path.split(os.path.abspath(mnt).rstrip("/"))
    prefix = os.path.join(os.path.realpath(parent), name) + "/"
    loops = []
    try:
        names = sorted(n for n in os.listdir(SYS_BLOCK) if n.startswith("loop"))
    except OSError:
        return []
    for dev in names:
        try:
            with open(f"{SYS_BLOCK}/{dev}/loop/backing_file") as f:   # only while bound
                path = f.read().strip()
        except OSError:
            continue
        if path.removesuffix(" (deleted)").startswith(prefix):
            loops.append((f"/dev/{dev}", path))
    return loops


def max_request_kb(loop: str) -> int:
    """The loop device's ``queue/max_sectors_kb`` (the largest request it sends)."""
    return int((SYS_BLOCK / Path(loop).name / "queue" / "max_sectors_kb").read_text())


def clamp_requests(loop: str, limit_kb: int) -> bool:
    """Lower ``loop``'s ``max_sectors_kb`` to ``limit_kb`` if it is larger; True if it now is
    at most ``limit_kb``.  Raises OSError when sysfs refuses (not root, device gone)."""
    attr = SYS_BLOCK / Path(loop).name / "queue" / "max_sectors_kb"
    if int(attr.read_text()) <= limit_kb:
        return True
    attr.write_text(f"{limit_kb}\n")
    return int(attr.read_text()) <= limit_kb


class LoopGuard:
    """Clamps every loop device backed by an image under ``mnt`` to ``limit_kb`` requests
    (see the module docstring).  ``start``/``stop`` bracket the mount; ``image_opened`` is
    called by the file system on each image open and makes the scans frequent for a while."""

    def __init__(self, mnt: str, limit_kb: int) -> None:
        self.mnt = mnt
        self.limit_kb = limit_kb
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._burst_until = 0.0
        self._done: set[tuple[str, str]] = set()   # (loop, backing file) already clamped/warned
        self._lowered: dict[str, int] = {}           # loop -> its max_sectors_kb before
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()       # wakes a thread waiting for uevents

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zramfs-loopguard",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not (thread is not None and thread.is_alive()):
            for fd in (self._stop_r, self._stop_w):
                if fd >= 0:
                    os.close(fd)
            self._stop_r = self._stop_w = -1
        try:
            self.scan(clamp=False)       # give the detached devices their old limit back
        except OSError:
            pass

    def image_opened(self) -> None:
        self._burst_until = time.monotonic() + BURST_LENGTH_S
        self._wake.set()

    def scan(self, *, clamp: bool = True) -> None:
        """One pass: clamp the loop devices not seen yet; restore the ones detached since."""
        loops = set(attached_loops(self.mnt))
        self._done &= loops                       # a detached device may come back re-attached
        attached = {loop for loop, _ in loops}
        for loop in sorted(set(self._lowered) - attached):
            self._restore(loop, self._lowered.pop(loop))
        if not clamp:
            return
        for loop, backing in sorted(loops - self._done):
            before = None
            try:
                before = max_request_kb(loop)
                ok = clamp_requests(loop, self.limit_kb)
            except OSError as exc:
                ok = False
                why = str(exc)
            else:
                why = "the limit did not stick"
            if ok:
                if before is not None and before > self.limit_kb:
                    self._lowered.setdefault(loop, before)
                    log.info("%s (%s): max_sectors_kb %d -> %d so that a failed write fails "
                             "the whole request", loop, backing, before, self.limit_kb)
            else:
                log.warning("%s (%s): cannot lower max_sectors_kb to %d (%s): a write that "
                            "fails part-way (mem_limit) may be completed as success by the "
                            "loop driver; set it by hand", loop, backing, self.limit_kb, why)
            self._done.add((loop, backing))

    def _restore(self, loop: str, before: int) -> None:
        """Put a detached device's limit back, unless someone changed it since."""
        attr = SYS_BLOCK / Path(loop).name / "queue" / "max_sectors_kb"
        try:
            if int(attr.read_text()) == self.limit_kb:
                attr.write_text(f"{before}\n")
        except OSError:
            pass                                  # the device went away: nothing to restore

    def _run(self) -> None:
        events = _uevent_socket()
        try:
            while not self._stop.is_set():
                try:
                    self.scan()
                except Exception:   # noqa: BLE001 - a sysfs hiccup must not end the guard
                    log.exception("loop guard scan failed")
                if events is not None:
                    _wait_for_loop_event(events, self._stop_r, EVENT_RESCAN_S)
                    continue
                bursting = time.monotonic() < self._burst_until
                self._wake.wait(BURST_INTERVAL_S if bursting else SCAN_INTERVAL_S)
                self._wake.clear()
        finally:
            if events is not None:
                events.close()


def _uevent_socket() -> socket.socket | None:
    """A socket receiving the kernel's uevents, or None where that is not allowed."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    except (OSError, AttributeError):
        return None
    try:
        sock.bind((0, 1))
    except OSError:
        sock.close()
        return None
    return sock


def _wait_for_loop_event(sock: socket.socket, stop_fd: int, timeout: float) -> None:
    """Return at the first uevent about a loop device (attach, detach), when `stop_fd` becomes
    readable, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sock, stop_fd], [], [], left)
        if stop_fd in ready or not ready:
            return
        try:
            msg = sock.recv(65536)
        except OSError:      # ENOBUFS after a burst of events: rescan to be safe
            return
        # "ACTION@DEVPATH\0KEY=VALUE\0..." ; the devpath of a loop is .../block/loopN
        head = msg.split(b"\0", 1)[0]
        if b"/block/loop" in head:
            return
