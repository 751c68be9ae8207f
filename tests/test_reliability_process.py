"""Reliability, part 3: process faults and swap (docs/guarantees.md, "Faults: nothing hung",
and the swap cases of "Nothing lost").

tests/test_mount_cli.py already shows: SIGTERM/SIGINT of an idle daemon unmount cleanly,
``zramfs umount`` cleans the stale mount a SIGKILL leaves, and refuses while a loop device is
attached.  Here, what it does not cover:
- SIGTERM / SIGINT / SIGHUP / SIGKILL *while I/O is in flight*: the process exits, the mount
  goes (or is stale and removable), and the writer gets an error instead of hanging;
- ``zramfs mount`` on the place a SIGKILLed daemon left stale: detected, cleaned, mounted anew;
- ``zramfs umount`` while a process holds the image open: refused quickly with a clear message;
- SIGTERM / SIGINT / SIGHUP while a loop device is attached must not pull the device from under
  the loop user (swap, a filesystem) — the same rule as ``zramfs umount``;
- a hung (SIGSTOPped) daemon does not hang ``zramfs status`` / ``zramfs umount``;
- bad ``zramfs mount`` arguments leave nothing behind; openers that die leave no device busy;
- the swap experiment (scripts/swap_experiment.sh) on a mount of ours with aggressive
  compaction: a memory-limited cgroup process pushes pages through swap on a loop device over
  the image and reads every byte back; nothing is left behind.

Every daemon here is started by the test (its pid from --pidfile) and torn down by the fixture
even on failure; every wait has a deadline.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.mountutil import (
    REPO,
    DaemonMount,
    expect_errno,
    is_mounted,
    loops_under,
    run,
    write_file,
    zramfs_cli,
)
from support.reliability import PAGE, MiB, Watchdog

pytestmark = pytest.mark.fuse


Daemon = DaemonMount  # the ``daemon`` fixture (tests/conftest.py) is one


class Writer(threading.Thread):
    """Writes and reads the image in a loop until an error or ``stop``; keeps the error."""

    def __init__(self, image: Path) -> None:
        super().__init__(name="writer", daemon=True)
        self.image = image
        self.stop = threading.Event()
        self.started_io = threading.Event()
        self.error: OSError | None = None
        self.ops = 0

    def run(self) -> None:
        try:
            fd = os.open(self.image, os.O_RDWR)
        except OSError as exc:
            self.error = exc
            return
        try:
            data = os.urandom(128 * 1024)
            off = 0
            while not self.stop.is_set():
                os.pwrite(fd, data, off)
                os.pread(fd, len(data), off)
                off = (off + len(data)) % (32 * MiB)
                self.ops += 1
                self.started_io.set()
        except OSError as exc:
            self.error = exc
        finally:
            try:
                os.close(fd)
            except OSError:
                pass


# errors a request in flight may see when the daemon goes away
GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV, errno.ENOENT}


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_during_io_unmounts_without_hanging(daemon: Daemon, sig: signal.Signals) -> None:
    daemon.mount("--size", "64M", "--compact-interval", "0", "--compact-threshold", "1")
    pid = daemon.pid
    w = Writer(daemon.mnt / "dev/zram0")
    with Watchdog(60, lambda: os.kill(pid, signal.SIGKILL), what=f"{sig.name} during I/O"):
        w.start()
        assert w.started_io.wait(20), "the writer never got going"
        os.kill(pid, sig)
        # libfuse unmounts lazily while a file is open; the daemon must still exit, and the
        # writer must get an error (or finish) rather than block.
        w.join(30)
        assert not w.is_alive(), "writer hung after the signal"
        assert w.error is not None and w.error.errno in GONE, w.error
        assert daemon.wait_gone(pid, 30), f"{sig.name}: daemon or mount still there"
    assert not daemon.pidfile.exists()


def test_sigkill_during_io_then_mount_again_on_the_stale_place(daemon: Daemon) -> None:
    daemon.mount("--size", "64M")
    pid = daemon.pid
    w = Writer(daemon.mnt / "dev/zram0")
    with Watchdog(60, what="SIGKILL during I/O"):
        w.start()
        assert w.started_io.wait(20)
        os.kill(pid, signal.SIGKILL)
        w.join(30)
        assert not w.is_alive(), "writer hung after SIGKILL"
        assert w.error is not None and w.error.errno in GONE, w.error
    deadline = time.monotonic() + 10
    while Daemon.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert is_mounted(daemon.mnt)  # stale: nobody serves it
    with pytest.raises(OSError) as info:
        os.stat(daemon.mnt / "dev")
    assert info.value.errno == errno.ENOTCONN
    # Mounting again on the same place: the stale mount is detected, said so, and replaced.
    res = daemon.mount("--size", "8M", check=False)
    assert res.returncode == 0, res.stderr
    assert "stale" in res.stderr, res.stderr
    assert (daemon.mnt / "sys/block/zram0/disksize").read_text() == f"{8 * MiB}\n"
    with open(daemon.mnt / "dev/zram0", "rb", buffering=0) as f:
        assert f.read(PAGE) == bytes(PAGE)  # volatile: a new, empty device
    new_pid = daemon.pid
    assert zramfs_cli("umount", str(daemon.mnt)).returncode == 0
    assert daemon.wait_gone(new_pid)


def test_umount_while_the_image_is_open_is_refused_quickly(daemon: Daemon) -> None:
    daemon.mount("--size", "8M")
    pid = daemon.pid
    fd = os.open(daemon.mnt / "dev/zram0", os.O_RDWR)
    try:
        os.pwrite(fd, b"keep me" * 100, 0)
        t0 = time.monotonic()
        res = zramfs_cli("umount", str(daemon.mnt), check=False, timeout=60)
        assert time.monotonic() - t0 < 30
        assert res.returncode == 1
        assert "busy" in res.stderr and str(daemon.mnt) in res.stderr, res.stderr
        assert is_mounted(daemon.mnt) and Daemon.alive(pid)
        assert os.pread(fd, 700, 0) == b"keep me" * 100  # still served, data intact
    finally:
        os.close(fd)
    assert zramfs_cli("umount", str(daemon.mnt)).returncode == 0
    assert daemon.wait_gone(pid)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_with_a_loop_attached_keeps_the_device(daemon: Daemon, sig: signal.Signals) -> None:
    """Like ``zramfs umount`` (and ``rmmod zram`` while swap is on it), a signal must not take
    the device away from an attached loop device: it keeps serving (and says why in the log)
    until the loop is detached, and exits cleanly on the same signal afterwards."""
    daemon.mount("--size", "8M")
    pid = daemon.pid
    loop = run("losetup", "-f", "--show", str(daemon.mnt / "dev/zram0")).stdout.strip()
    data = os.urandom(64 * 1024)
    with open(loop, "r+b", buffering=0) as f:
        f.write(data)
        os.fsync(f.fileno())
    os.kill(pid, sig)
    time.sleep(2)
    try:
        fd = os.open(loop, os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap

            buf = mmap.mmap(-1, len(data))
            n = os.preadv(fd, [buf], 0)
        finally:
            os.close(fd)
        assert n == len(data) and buf[:] == data, "loop lost its device"
        assert Daemon.alive(pid) and is_mounted(daemon.mnt)
        assert "loop" in daemon.log.read_text(), "no word in the log about why it stays"
    finally:
        run("losetup", "-d", loop, check=False)
    # the loop's release may arrive a moment after losetup -d returns
    deadline = time.monotonic() + 30
    while not daemon.wait_gone(pid, 1):
        assert time.monotonic() < deadline, f"{sig.name} after detaching: still running"
        os.kill(pid, sig)


@pytest.mark.parametrize(
    "args",
    [
        ("--size", "-5"),
        ("--size", "abc"),
        ("--mem-limit", "1x"),
        ("--devices", "-1"),
        ("--chain-size", "5"),
        ("--size", "1E"),
        ("--algorithm", "nosuch"),
        # the knobs are the uint module parameters: the CLI must refuse what the files refuse
        ("--compact-interval", "-1"),
        ("--compact-threshold", "-1"),
        ("--compact-threshold", str(2**40)),
    ],
)
def test_bad_mount_arguments_leave_nothing_behind(daemon: Daemon, args: tuple[str, ...]) -> None:
    res = daemon.mount(*args, check=False)
    assert res.returncode != 0, f"zramfs mount {' '.join(args)} was accepted"
    assert res.stderr.strip(), "no message"
    assert not is_mounted(daemon.mnt)
    assert not daemon.pidfile.exists()


# ---- the swap experiment -------------------------------------------------------------------------
def memory_cgroup() -> str | None:
    """'v2' when the unified hierarchy has the memory controller, 'v1' for a v1 memory
    hierarchy, else None (the script could use systemd-run; we do not rely on that)."""
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            if "memory" in Path(root, "cgroup.controllers").read_text().split():
                return "v2"
        except OSError:
            continue
    if Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
        return "v1"
    return None


def swap_run(zmount, *, size: str, limit: str, alloc: str, min_swapped_mib: int) -> str:
    kind = memory_cgroup()
    if kind is None:
        pytest.skip("no memory cgroup controller (v2 or v1)")
    for tool in ("losetup", "mkswap", "swapon", "swapoff", "mountpoint", "numfmt"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    m = zmount(
        "--size", size, "--algorithm", "lz4", "--compact-interval", "0", "--compact-threshold", "1"
    )
    env = dict(os.environ, LIMIT=limit, ALLOC=alloc, DISCARD="pages")
    # the script's record goes beside the mount's files, not to a new /tmp/zramfs-record.*
    env["RECORD_DIR"] = str(m.path.parent / "record")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.monotonic()
    with Watchdog(3000, what="swap experiment"):
        res = subprocess.run(
            ["bash", str(REPO / "scripts/swap_experiment.sh"), str(m.path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=2900,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "PASS:" in out and " 0 bad" in out, out[-4000:]
    assert f"cgroup: {kind}" in out, out[-4000:]
    # the worker really swapped: its VmSwap after the fill, and the device stored pages then
    swapped = re.search(r"after fill: RSS .*?, swapped out (\d+) kB", out)
    assert swapped and int(swapped.group(1)) > min_swapped_mib * 1024, out[-4000:]
    fill_mm = re.search(r"after fill: .*mm_stat\s+(\d+)", out)
    assert fill_mm and int(fill_mm.group(1)) > min_swapped_mib * MiB, out[-4000:]
    io_stat = m.read_attr("io_stat").split()
    assert io_stat[:2] == ["0", "0"], io_stat
    # the script tore down what it set up: no loop on our image (so no swap on it either),
    # no cgroup
    assert loops_under(m.path) == []
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory"):
        assert not list(Path(root).glob("zramfs-swap.*")), root
    return (
        f"{swapped.group(0)}; {time.monotonic() - started:.0f}s; "
        f"daemon runs {m.param('compact_runs')}"
    )


def test_swap_through_a_memory_limited_cgroup(zmount) -> None:
    """A process limited to 24 MiB writes 96 MiB of patterned pages (same-filled, text, half
    random, random), so most of it must go to swap on a loop device over the image, and reads
    every byte back — while the daemon compacts at interval 0.  cgroup v2 memory.max when the
    memory controller is there, else the v1 memory hierarchy."""
    print("\n" + swap_run(zmount, size="256M", limit="24M", alloc="96M", min_swapped_mib=32))


@pytest.mark.soak
def test_swap_through_a_memory_limited_cgroup_soak(zmount) -> None:
    """1 GiB through swap with a 64 MiB limit."""
    print("\n" + swap_run(zmount, size="2G", limit="64M", alloc="1G", min_swapped_mib=512))


def test_users_that_die_do_not_leave_the_device_busy(zmount) -> None:
    """Every open is matched by a release, even when the opener is SIGKILLed or its threads
    race: afterwards reset (EBUSY while open) succeeds and hot_remove works."""
    m = zmount("--size", "4M", "--devices", "2")
    img = str(m.image(1))  # --size initialises both devices
    code = (
        "import os, sys, time\n"
        "fds = [os.open(sys.argv[1], os.O_RDWR) for _ in range(20)]\n"
        "os.pwrite(fds[0], b'x' * 4096, 0)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    for _ in range(3):
        child = subprocess.Popen(["python3", "-c", code, img], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            expect_errno(errno.EBUSY, m.write_attr, "reset", "1", 1)
        finally:
            child.kill()
            child.wait(30)

    # many short-lived opens from threads
    def churn() -> None:
        for _ in range(200):
            os.close(os.open(img, os.O_RDONLY))

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # the releases of a killed process arrive asynchronously: allow a moment
    deadline = time.monotonic() + 10
    while True:
        try:
            m.write_attr("reset", "1", dev=1)
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert m.read_attr("initstate", dev=1) == "0\n"
    write_file(m.path / "sys/class/zram-control/hot_remove", "1")
    assert os.listdir(m.path / "dev") == ["zram0"]


def test_a_hung_daemon_does_not_hang_umount_or_status(daemon: Daemon) -> None:
    """A daemon that stops answering (deadlocked; here SIGSTOPped) must not make the tools
    hang: ``zramfs status MNT`` and ``zramfs umount MNT`` return within 15 s — umount removes
    the mount (e.g. by aborting the FUSE connection) or says that the daemon does not answer."""
    daemon.mount("--size", "8M")
    pid = daemon.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for args in (("status", str(daemon.mnt)), ("umount", str(daemon.mnt))):
            try:
                res = zramfs_cli(*args, check=False, timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"zramfs {' '.join(args)} hung on an unresponsive daemon")
            if args[0] == "umount":
                assert (res.returncode == 0 and not is_mounted(daemon.mnt)) or (
                    res.returncode != 0 and "respond" in res.stderr
                ), res.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        if is_mounted(daemon.mnt):
            run("umount", "-l", str(daemon.mnt), check=False)
