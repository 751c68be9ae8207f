"""Helpers for the real-mount tests (tests/test_mount_*.py): mount zramfs in a temp dir and
ALWAYS clean up — filesystems mounted from loop devices over the image, swaps on them, the
loop devices themselves, the FUSE mount, and the daemon process — even when a test fails.

Tests need root and /dev/fuse; without them they skip with a message, except when
``ZRAMFS_REQUIRE_FUSE=1`` (CI), where a missing FUSE is a failure.

The fixtures built on these (``zmount``, a factory of `Mount`s, and ``daemon``, a `DaemonMount`)
are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CMD_TIMEOUT = 60


def fuse_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    try:
        import zramfs.fs  # noqa: F401
    except ImportError as exc:
        return f"no FUSE binding: {exc}"
    return None


def require_fuse() -> None:
    reason = fuse_unavailable()
    if reason is None:
        return
    if os.environ.get("ZRAMFS_REQUIRE_FUSE") == "1":
        pytest.fail(f"FUSE required (ZRAMFS_REQUIRE_FUSE=1) but unavailable: {reason}")
    pytest.skip(reason)


def run(
    *cmd: str, timeout: float = CMD_TIMEOUT, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run a command with a timeout; on failure raise with its output."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def zramfs_cli(*args: str, timeout: float = CMD_TIMEOUT, check: bool = True):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-m", "zramfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(REPO),
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"zramfs {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
    return res


def unmount(path: Path | str, *, lazy: bool = False) -> subprocess.CompletedProcess:
    """fusermount -u (libfuse 2's or 3's), or umount as root; never raises for a missing tool."""
    if lazy:
        return run("umount", "-l", str(path), check=False, timeout=30)
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            return run(tool, "-u", str(path), check=False, timeout=30)
    return run("umount", str(path), check=False, timeout=30)


def is_mounted(path: Path | str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 2)


def loop_unusable() -> str | None:
    """Why no loop device can be attached here (None: one can).  Asked before mounting, so a
    losetup failure afterwards is the image's fault, not the machine's."""
    if os.geteuid() != 0:
        return "needs root for loop devices"
    if shutil.which("losetup") is None:
        return "needs losetup"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop driver unavailable)"
    res = subprocess.run(["losetup", "-f"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"losetup -f: {res.stderr.strip() or 'no free loop device'}"
    return None


def loops_under(mnt: Path | str) -> list[str]:
    """Loop devices whose backing file lies under ``mnt``."""
    prefix = os.path.realpath(mnt).rstrip("/") + "/"
    found = []
    for d in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)").startswith(prefix):
            found.append(f"/dev/{d.name}")
    return found


def teardown_users(mnt: Path | str) -> list[str]:
    """Undo everything stacked on the images under ``mnt``; returns what it had to do."""
    done: list[str] = []
    loops = loops_under(mnt)
    for loop in loops:
        # Filesystems mounted from the loop device (innermost first: reverse mount order).
        with open("/proc/self/mounts") as f:
            targets = [ln.split()[1] for ln in f if ln.split()[0] == loop]
        for target in reversed(targets):
            r = run("umount", target, check=False)
            if r.returncode != 0:
                run("umount", "-l", target, check=False)
            done.append(f"umount {target}")
        with open("/proc/swaps") as f:
            swaps = [ln.split()[0] for ln in f.readlines()[1:]]
        if loop in swaps:
            run("swapoff", loop, check=False, timeout=120)
            done.append(f"swapoff {loop}")
        run("losetup", "-d", loop, check=False)
        done.append(f"losetup -d {loop}")
    return done


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen
    log: Path
    args: tuple[str, ...] = ()
    _closed: bool = field(default=False, repr=False)

    # -- paths ------------------------------------------------------------------------------
    def image(self, dev: int = 0) -> Path:
        return self.path / "dev" / f"zram{dev}"

    def sysfs(self, dev: int = 0) -> Path:
        return self.path / "sys" / "block" / f"zram{dev}"

    def attr_path(self, name: str, dev: int = 0) -> Path:
        return self.sysfs(dev) / name

    def param_path(self, name: str) -> Path:
        return self.path / "sys/module/zramfs/parameters" / name

    # -- attribute I/O as a script does it: one open, one read/write ------------------------
    def read_attr(self, name: str, dev: int = 0) -> str:
        return self.attr_path(name, dev).read_text()

    def write_attr(self, name: str, value: str | int, dev: int = 0) -> None:
        write_file(self.attr_path(name, dev), str(value))

    def mm_stat(self, dev: int = 0) -> list[int]:
        return [int(x) for x in self.read_attr("mm_stat", dev).split()]

    def set_param(self, name: str, value: str | int) -> None:
        write_file(self.param_path(name), str(value))

    def param(self, name: str) -> str:
        return self.param_path(name).read_text().strip()

    def losetup(self, dev: int = 0, *extra: str) -> str:
        return run("losetup", *extra, "-f", "--show", str(self.image(dev))).stdout.strip()

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            teardown_users(self.path)
        finally:
            for attempt in range(20):
                if not is_mounted(self.path):
                    break
                r = unmount(self.path)
                if r.returncode != 0 and attempt >= 5:
                    unmount(self.path, lazy=True)
                time.sleep(0.2)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
            if is_mounted(self.path):  # the daemon died without unmounting
                unmount(self.path, lazy=True)


def write_file(path: Path | str, text: str) -> None:
    """One open + one write(2), like `echo -n text > path`; raises the OSError the kernel gave."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def mode_of(path: Path | str) -> int:
    """The permission bits of a file of the tree (0o644 for disksize, as sysfs shows it)."""
    return stat.S_IMODE(os.stat(path).st_mode)


def expect_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, (
        f"expected {errno.errorcode[code]}, got {errno.errorcode.get(info.value.errno or 0)}: "
        f"{info.value}"
    )


def start_mount(
    base: Path,
    *args: str,
    timeout: float = 30.0,
    program: tuple[str, ...] = ("-m", "zramfs", "mount"),
) -> Mount:
    """Mount ``base/mnt`` in the foreground (a child process we own) and wait until the tree
    answers: until ``dev/`` is there, which every backend serves (``--backend null`` has only
    dev/zram0, no sys/block) — what ``zramfs mount`` itself waits for (zramfs/cli.py).
    ``program``: what Python runs, given ``MNT --foreground *args`` (scripts/nullfs.py takes
    the same)."""
    require_fuse()
    mnt = base / "mnt"
    mnt.mkdir(exist_ok=True)
    log = base / "zramfs.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "wb") as log_file:  # the child has its own descriptor of it
        proc = subprocess.Popen(
            [sys.executable, *program, str(mnt), "--foreground", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            cwd=str(REPO),
            env=env,
        )
    m = Mount(mnt, proc, log, tuple(args))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            m.close()
            raise AssertionError(f"zramfs mount exited {proc.returncode}:\n{log.read_text()}")
        if is_mounted(mnt) and (mnt / "dev").is_dir():
            return m
        time.sleep(0.05)
    m.close()
    raise AssertionError(f"zramfs mount not ready after {timeout}s:\n{log.read_text()}")


@contextlib.contextmanager
def opened(path: Path | str, flags: int = os.O_RDWR) -> Iterator[int]:
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


# fallocate(2) on the image (os has posix_fallocate only, which cannot punch holes)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError with the errno the file system answered."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class DaemonMount:
    """A daemonised ``zramfs mount`` owned by one test: always unmounted, its daemons reaped."""

    def __init__(self, base: Path) -> None:
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        self.pidfile = base / "zramfs.pid"
        self.log = base / "zramfs.log"
        self.pids: list[int] = []  # every daemon a mount() of this object started

    def mount(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = zramfs_cli(
            "mount",
            str(self.mnt),
            "--pidfile",
            str(self.pidfile),
            "--log",
            str(self.log),
            *args,
            check=check,
        )
        if res.returncode == 0:
            self.pids.append(self.pid)
        return res

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    @staticmethod
    def alive(pid: int) -> bool:
        """Running and not a zombie (a zombie still answers kill(pid, 0))."""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def wait_gone(self, pid: int, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive(pid) and not is_mounted(self.mnt):
                return True
            time.sleep(0.05)
        return False

    def cleanup(self) -> None:
        teardown_users(self.mnt)
        pids = list(self.pids)
        with contextlib.suppress(OSError, ValueError):
            pids.append(self.pid)  # a daemon started some other way (e.g. by the test itself)
        if is_mounted(self.mnt):
            unmount(self.mnt)
        for pid in dict.fromkeys(pids):
            if self.alive(pid) and not self.wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if is_mounted(self.mnt):
            unmount(self.mnt, lazy=True)
