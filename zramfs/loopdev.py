"""Loop devices backed by a mount's images: finding them, and keeping their requests whole.

Why a FUSE block image needs this (found with a mem_limit test, Linux 6.18): the loop driver
hands each request to the backing file as one write; FUSE carries a write in requests of at
most ``max_write`` bytes (128 KiB) *and* at most ``max_pages`` pages of memory (32 with
libfuse 2, which cannot raise it), and when a later piece fails (mem_limit: EIO) it returns
the *short count* of the pieces that succeeded.  The loop driver completes a short write as
success (``lo_complete_rq`` retries only short *reads*), so the rest of the request is lost
without an error reaching the user.  zram itself fails the whole bio.  With the loop device's
``queue/max_sectors_kb`` small enough that any request fits one FUSE request, a failure fails
it whole — the loop user sees EIO, as with zram.

How small: the bytes are not the binding limit, the pages are.  A request's memory is a list
of segments, each a multiple of 512 bytes at a 512-byte aligned address (the loop queue's
``dma_alignment`` is 511), so every page a request touches holds at least 512 bytes of it: a
request of S bytes touches at most S / 512 pages.  `whole_request_kb` is therefore
``max_pages * 512`` bytes (16 KiB), and not ``max_write``: a 128 KiB request from a buffer
512 bytes into a page touches 33 pages and went to FUSE as two writes, one jbd2 journal
request built from 1 KiB buffers of scattered pages touches up to 128.  Page-aligned requests
(swap, filesystems with 4 KiB blocks) would fit in 128 KiB; the guard cannot tell what a loop
device's user will send, and a lost write is silent, so it uses the bound that always holds.

`LoopGuard` therefore watches for loop devices on the mount's images and lowers their
``max_sectors_kb`` to that size (logging it once per device), lowers it again if someone raises
it while the device is attached, and puts the old value back once the device is detached
from the mount (the setting outlives a detach).  It listens to the kernel's uevents
(NETLINK_KOBJECT_UEVENT): attaching a loop device sends a ``change`` event for it, so the
device is clamped within a fraction of a millisecond, before its user (mkfs, swapon) has
written anything — and the guard costs nothing while no loop device changes (no polling, so
no GIL traffic next to the I/O threads).  Where uevents are not available it scans every
second, and every 50 ms for a second after an image is opened (losetup opens the image just
before it configures the loop device).

When a device cannot be clamped (sysfs refuses the write: not root, a read-only /sys), that is
an error, not a warning: the mount's log gets an ERROR line naming the device and the command
that fixes it, `LoopGuard.unclamped` lists such devices for as long as they stay attached and
unclamped (read live from sysfs: the ``unclamped_loops`` module parameter and ``zramfs status``
show it), and the guard tries again at every scan.  What the daemon cannot do is refuse that
device's I/O: a FUSE request does not say which loop device (if any) it comes from.
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
NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h; multicast group 1 = the kernel's events
# With uevents, a scan anyway this often (a missed event, ENOBUFS).
EVENT_RESCAN_S = 5.0
#: FUSE_DEFAULT_MAX_PAGES_PER_REQ: the pages of memory one FUSE request carries, unless the
#: daemon negotiates FUSE_MAX_PAGES (libfuse 3 only; libfuse 2 is what zramfs.fs loads).
FUSE_MAX_PAGES = 32
#: The loop queue's smallest unit of a request's memory: segments are multiples of it, at
#: addresses aligned to it (logical_block_size >= 512, dma_alignment 511).
SECTOR_SIZE = 512


def whole_request_kb(max_write_kb: int, max_pages: int = FUSE_MAX_PAGES) -> int:
    """The largest ``max_sectors_kb`` whose requests FUSE always carries as one request: at
    most ``max_write_kb``, and at most ``max_pages`` pages even when every page holds a single
    512-byte sector of the request (module docstring)."""
    if max_write_kb <= 0 or max_pages <= 0:
        raise ValueError(
            f"max_write_kb ({max_write_kb}) and max_pages ({max_pages}) must be positive"
        )
    return min(max_write_kb, max_pages * SECTOR_SIZE // 1024)


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
            with open(f"{SYS_BLOCK}/{dev}/loop/backing_file") as f:  # only while bound
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
    """Clamps every loop device backed by an image under ``mnt`` so that its requests reach
    the image whole (see the module docstring).  ``max_write_kb`` is FUSE's ``max_write`` in
    KiB, ``max_pages`` its page limit per request; the clamp is `whole_request_kb` of them
    (``limit_kb``).  ``start``/``stop`` bracket the mount; ``image_opened`` is called by the
    file system on each image open and makes the scans frequent for a while."""

    def __init__(self, mnt: str, max_write_kb: int, *, max_pages: int = FUSE_MAX_PAGES) -> None:
        self.mnt = mnt
        self.limit_kb = whole_request_kb(max_write_kb, max_pages)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._burst_until = 0.0
        self._clamped: set[tuple[str, str]] = set()  # (loop, backing file) seen clamped
        self._failed: dict[tuple[str, str], str] = {}  # (loop, backing file) -> why not
        self._lowered: dict[str, int] = {}  # loop -> its max_sectors_kb before
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()  # wakes a thread waiting for uevents

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zramfs-loopguard", daemon=True)
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
            self.scan(clamp=False)  # give the detached devices their old limit back
        except OSError:
            pass

    def image_opened(self) -> None:
        self._burst_until = time.monotonic() + BURST_LENGTH_S
        self._wake.set()

    def unclamped(self) -> list[str]:
        """Loop devices on the mount's images whose requests may be cut by FUSE right now
        (``max_sectors_kb`` above `limit_kb`, or unreadable), read from sysfs at the call."""
        found = []
        for loop, _ in attached_loops(self.mnt):
            try:
                if max_request_kb(loop) <= self.limit_kb:
                    continue
            except (OSError, ValueError):
                pass  # unreadable: cannot be vouched for
            found.append(loop)
        return found

    def scan(self, *, clamp: bool = True) -> None:
        """One pass: clamp the attached devices that are above the limit (new ones, ones that
        failed before, ones raised by someone since); restore the ones detached since."""
        loops = set(attached_loops(self.mnt))
        attached = {loop for loop, _ in loops}
        for loop in sorted(set(self._lowered) - attached):
            self._restore(loop, self._lowered.pop(loop))
        # A detached device may come back re-attached: it is new again then.
        self._clamped &= loops
        self._failed = {key: why for key, why in self._failed.items() if key in loops}
        if not clamp:
            return
        for key in sorted(loops):
            self._check(*key)

    def _check(self, loop: str, backing: str) -> None:
        key = (loop, backing)
        before: int | None = None
        why = ""
        try:
            before = max_request_kb(loop)
            ok = before <= self.limit_kb or clamp_requests(loop, self.limit_kb)
            if not ok:
                why = "the limit did not stick"
        except (OSError, ValueError) as exc:
            ok = False
            why = str(exc)
        if not ok:
            if key not in self._failed:  # once per attached device; retried at every scan
                log.error(
                    "%s (%s): cannot lower max_sectors_kb to %d (%s): a write refused "
                    "part-way (mem_limit) can be reported to the loop's user as success "
                    "and its data lost; run: echo %d > /sys/block/%s/queue/"
                    "max_sectors_kb",
                    loop,
                    backing,
                    self.limit_kb,
                    why,
                    self.limit_kb,
                    Path(loop).name,
                )
            self._failed[key] = why
            self._clamped.discard(key)
            return
        assert before is not None
        if before > self.limit_kb:
            self._lowered.setdefault(loop, before)
            if key in self._clamped:
                log.warning(
                    "%s (%s): max_sectors_kb was raised to %d while attached; lowered to %d again",
                    loop,
                    backing,
                    before,
                    self.limit_kb,
                )
            else:
                log.info(
                    "%s (%s): max_sectors_kb %d -> %d so that a failed write fails the "
                    "whole request",
                    loop,
                    backing,
                    before,
                    self.limit_kb,
                )
        if self._failed.pop(key, None) is not None:
            log.warning(
                "%s (%s): max_sectors_kb is at most %d now: clamped", loop, backing, self.limit_kb
            )
        self._clamped.add(key)

    def _restore(self, loop: str, before: int) -> None:
        """Put a detached device's limit back, unless someone changed it since."""
        attr = SYS_BLOCK / Path(loop).name / "queue" / "max_sectors_kb"
        try:
            if int(attr.read_text()) == self.limit_kb:
                attr.write_text(f"{before}\n")
        except OSError:
            pass  # the device went away: nothing to restore

    def _run(self) -> None:
        events = _uevent_socket()
        try:
            while not self._stop.is_set():
                try:
                    self.scan()
                except Exception:  # noqa: BLE001 - a sysfs hiccup must not end the guard
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
    watched: list[socket.socket | int] = [sock, stop_fd]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(watched, [], [], left)
        if stop_fd in ready or not ready:
            return
        try:
            msg = sock.recv(65536)
        except OSError:  # ENOBUFS after a burst of events: rescan to be safe
            return
        # "ACTION@DEVPATH\0KEY=VALUE\0..." ; the devpath of a loop is .../block/loopN
        head = msg.split(b"\0", 1)[0]
        if b"/block/loop" in head:
            return
