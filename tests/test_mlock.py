"""``zramfs mount --mlock``: the daemon pins itself (mlockall MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)
and marks itself PR_SET_IO_FLUSHER before any thread exists; its simulated RAM is a memfd whose
freed frames are hole-punched (MADV_DONTNEED fails on locked memory).  Real mounts.

What is measured where:
- VmLck (/proc/PID/status) is the kernel's ``locked_vm``: the *size* of the locked mappings,
  resident or not — with MCL_ONFAULT it includes the whole sparse arena (max_pages x 4 KiB), so it
  proves the arena is locked but says nothing about use.  What is really pinned is the
  ``Locked:`` line of /proc/PID/smaps_rollup (resident pages of locked mappings): that one must
  follow the data, and so must VmRSS.
- IO_FLUSHER is not shown in /proc/PID/status; the module parameter ``io_flusher`` answers
  PR_GET_IO_FLUSHER from the FUSE worker thread serving the read.  Setting (and reading) it needs
  CAP_SYS_RESOURCE: where the test process lacks it, the positive tests mount with
  ``--mlock --no-io-flusher`` and the IO_FLUSHER test skips, while the failure test checks that
  a plain ``--mlock`` is refused with the prctl's errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.mountutil import REPO, is_mounted, opened, require_fuse, run, unmount
from support.reliability import MiB, punch_hole, rss_kib, varied_data
from zramfs import process_protect

pytestmark = pytest.mark.fuse

CAN_IO_FLUSHER = process_protect.has_cap(process_protect.CAP_SYS_RESOURCE)
MLOCK = ("--mlock",) if CAN_IO_FLUSHER else ("--mlock", "--no-io-flusher")
ARENA_KIB = (1 << 22) * 4  # PhysicalMemory's default max_pages x 4 KiB


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def rollup_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key}: for {pid}")


def locked_kib(pid: int) -> int:
    """Resident pages of locked mappings (smaps_rollup ``Locked:``, proportional like Pss:
    libraries shared with other processes count in part), in KiB."""
    return rollup_kib(pid, "Locked")


def all_locked(pid: int) -> bool:
    """Every resident page of the daemon is in a locked mapping: Locked == Pss."""
    return locked_kib(pid) >= rollup_kib(pid, "Pss") - 64


def test_default_mount_is_not_pinned(zmount) -> None:
    m = zmount("--size", "4M")
    assert m.param("mlock") == "N" and m.param("io_flusher") == "N"
    assert status_kib(m.proc.pid, "VmLck") == 0
    assert "/memfd:zramfs-arena" not in Path(f"/proc/{m.proc.pid}/maps").read_text()


def test_mlock_pins_the_daemon_and_discard_gives_the_memory_back(zmount) -> None:
    """The daemon's pages are all locked, the arena stays sparse, 64 MiB of incompressible data
    costs ~64 MiB of locked RSS, and discarding it gives that back (hole punching works where
    MADV_DONTNEED would fail), cycle after cycle (cf. test_reliability_stress.py::
    test_memory_is_given_back_after_discard_and_reset, the same without --mlock)."""
    size = 64 * MiB
    m = zmount(*MLOCK, "--size", str(size), "--no-compact")
    pid = m.proc.pid
    assert m.param("mlock") == "Y"
    assert "/memfd:zramfs-arena" in Path(f"/proc/{pid}/maps").read_text()
    assert status_kib(pid, "VmLck") >= ARENA_KIB  # the whole arena mapping is locked
    base_rss, base_locked = rss_kib(pid), locked_kib(pid)
    assert base_rss < 256 * 1024, base_rss  # ... but not populated (MCL_ONFAULT)
    assert all_locked(pid)
    rng = random.Random(7)
    after: list[tuple[int, int]] = []
    with opened(m.image()) as fd:
        for _ in range(5):
            for off in range(0, size, MiB):
                os.pwrite(fd, rng.randbytes(MiB), off)  # incompressible: a frame per page
            full_rss, full_locked = rss_kib(pid), locked_kib(pid)
            assert full_locked - base_locked > 60 * 1024, (base_locked, full_locked)
            assert full_rss - base_rss > 60 * 1024, (base_rss, full_rss)
            punch_hole(fd, 0, size)
            assert m.mm_stat()[0] == 0 and m.mm_stat()[2] == 0
            rss, locked = rss_kib(pid), locked_kib(pid)
            after.append((rss, locked))
            # the pool's frames are gone; what stays is the daemon's own heap
            assert full_locked - locked > 48 * 1024, (base_locked, full_locked, after)
            assert full_rss - rss > 48 * 1024, (base_rss, full_rss, after)
            assert all_locked(pid)  # still everything pinned
    # no growth once the daemon's heap has settled (its thread arenas fill in the first cycles,
    # as in test_reliability_stress; glibc cannot trim them with MADV_DONTNEED under mlock)
    assert after[-1][1] - after[2][1] < 6 * 1024, after
    assert "Traceback" not in m.log.read_text(errors="replace")


def test_mlock_reset_gives_the_slot_table_back(zmount) -> None:
    """A reset under --mlock returns the pool's frames and the slot table (a 4 GiB device:
    16 MiB of slots) although every page is locked: RSS falls by both.  (SlotTable.release
    drops the table's pages with MADV_DONTNEED_LOCKED where MADV_DONTNEED is EINVAL, for
    when something still holds a view of the table; otherwise its unmapping frees them.)"""
    m = zmount(*MLOCK, "--size", "4G", "--no-compact")
    pid = m.proc.pid
    rng = random.Random(11)
    with opened(m.image()) as fd:
        for blk in range(0, 1 << 20, 256):  # one block per 4 KiB page of the table
            os.pwrite(fd, rng.randbytes(4096), blk * 4096)
    full = rss_kib(pid)
    m.write_attr("reset", "1")
    dropped = full - rss_kib(pid)
    # 16 MiB of incompressible data + 16 MiB of slot table; without the table ~16 MiB
    assert dropped > 26 * 1024, (full, dropped)


def test_mlock_data_round_trip_and_swap_on_a_loop(zmount) -> None:
    for tool in ("losetup", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    size = 32 * MiB
    m = zmount(*MLOCK, "--size", str(size), "--mem-limit", "64M")
    rng = random.Random(3)
    blocks = {off: varied_data(rng, 64 * 1024) for off in range(0, size, 64 * 1024)}
    with opened(m.image()) as fd:
        for off, data in blocks.items():
            os.pwrite(fd, data, off)
        for off in range(0, size, 64 * 1024)[::3]:  # a third discarded again
            punch_hole(fd, off, 64 * 1024)
            blocks[off] = bytes(64 * 1024)
        for off, data in blocks.items():
            assert os.pread(fd, len(data), off) == data, off
    loop = m.losetup()
    run("mkswap", loop)
    run("swapon", loop)
    try:
        assert loop in Path("/proc/swaps").read_text()
    finally:
        run("swapoff", loop, timeout=120)
        run("losetup", "-d", loop)
    assert m.param("mlock") == "Y"


def test_io_flusher_is_set_in_the_serving_threads(zmount) -> None:
    if not CAN_IO_FLUSHER:
        pytest.skip(
            "PR_SET_IO_FLUSHER/PR_GET_IO_FLUSHER need CAP_SYS_RESOURCE, which this "
            "process lacks (not in its bounding set)"
        )
    m = zmount("--mlock", "--size", "4M")
    # Read by many threads at once so that several FUSE workers answer: every one must have
    # inherited the flag (set before libfuse created them).
    answers: list[str] = []

    def reader() -> None:
        for _ in range(20):
            answers.append(m.param("io_flusher"))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers and set(answers) == {"Y"}, answers
    assert m.param("mlock") == "Y"


# ---- failures: never half-protected -----------------------------------------------------------
def _mount_expecting_failure(
    tmp_path: Path, wrapper: list[str], *args: str, foreground: bool = False
) -> subprocess.CompletedProcess:
    """``zramfs mount`` under a wrapper (prlimit/setpriv); must fail and leave nothing mounted."""
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*wrapper, sys.executable, "-m", "zramfs", "mount", str(mnt), "--size", "4M", *args]
    if foreground:
        cmd.append("--foreground")
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, env=env, cwd=str(REPO)
        )
    finally:
        if is_mounted(mnt):
            unmount(mnt)
    assert res.returncode != 0, f"mounted although it should not: {res.stdout}{res.stderr}"
    return res


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@pytest.mark.parametrize("memlock, code", [("65536", "ENOMEM"), ("0", "EPERM")])
@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
def test_mlock_fails_without_cap_ipc_lock_and_memlock_limit(
    tmp_path, memlock, code, foreground
) -> None:
    """RLIMIT_MEMLOCK low (hard, so it cannot be raised) and CAP_IPC_LOCK dropped from the
    bounding set: mlockall fails (ENOMEM over the limit, EPERM with a 0 limit) and the mount
    fails with the call, the errno and the reason."""
    _need("prlimit", "setpriv")
    wrapper = [
        "prlimit",
        f"--memlock={memlock}:{memlock}",
        "setpriv",
        "--inh-caps=-ipc_lock,-sys_resource",
        "--bounding-set=-ipc_lock,-sys_resource",
    ]
    res = _mount_expecting_failure(
        tmp_path, wrapper, "--mlock", "--no-io-flusher", foreground=foreground
    )
    assert "mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) failed" in res.stderr, res.stderr
    assert code in res.stderr and "CAP_IPC_LOCK is missing" in res.stderr, res.stderr
    assert f"RLIMIT_MEMLOCK is {memlock} bytes" in res.stderr, res.stderr


def test_mlock_fails_when_io_flusher_is_refused(tmp_path) -> None:
    """Without CAP_SYS_RESOURCE PR_SET_IO_FLUSHER is EPERM: plain --mlock must fail, naming the
    prctl, not run pinned but without the flag."""
    _need("setpriv")
    wrapper = ["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource"]
    res = _mount_expecting_failure(tmp_path, wrapper, "--mlock")
    assert "prctl(PR_SET_IO_FLUSHER, 1) failed: EPERM" in res.stderr, res.stderr
    assert "CAP_SYS_RESOURCE" in res.stderr and "--no-io-flusher" in res.stderr, res.stderr


def test_no_io_flusher_needs_mlock(tmp_path) -> None:
    res = _mount_expecting_failure(tmp_path, [], "--no-io-flusher")
    assert "--no-io-flusher only goes with --mlock" in res.stderr, res.stderr


class _FakeLibc:
    """Stands in for process_protect._libc: mlockall/prctl fail with a chosen errno."""

    def __init__(self, mlock_errno: int = 0, prctl_errno: int = 0) -> None:
        self.mlock_errno, self.prctl_errno = mlock_errno, prctl_errno
        self.calls: list[str] = []

    def mlockall(self, flags: int) -> int:
        self.calls.append(f"mlockall {flags}")
        if self.mlock_errno:
            ctypes.set_errno(self.mlock_errno)
            return -1
        return 0

    def munlockall(self) -> int:
        self.calls.append("munlockall")
        return 0

    def prctl(self, option, *args) -> int:
        self.calls.append(f"prctl {option.value}")
        if self.prctl_errno:
            ctypes.set_errno(self.prctl_errno)
            return -1
        return 0


def test_protect_process_errors_in_process(monkeypatch) -> None:
    """The message paths without touching this process: an old kernel (prctl EINVAL) and a
    refused mlockall; a failing prctl undoes the mlockall."""
    import resource

    monkeypatch.setattr(resource, "setrlimit", lambda *a: None)
    fake = _FakeLibc(prctl_errno=errno.EINVAL)
    monkeypatch.setattr(process_protect, "_libc", fake)
    with pytest.raises(process_protect.MlockError) as info:
        process_protect.protect_process()
    assert info.value.errno == errno.EINVAL
    assert "prctl(PR_SET_IO_FLUSHER, 1) failed: EINVAL" in str(info.value)
    assert "Linux 5.6+" in str(info.value)
    assert fake.calls == ["mlockall 7", "prctl 57", "munlockall"]
    fake = _FakeLibc(mlock_errno=errno.ENOMEM)
    monkeypatch.setattr(process_protect, "_libc", fake)
    with pytest.raises(process_protect.MlockError) as info:
        process_protect.protect_process()
    assert info.value.errno == errno.ENOMEM and "mlockall" in str(info.value)
    assert fake.calls == ["mlockall 7"]  # no prctl after a failed mlockall
    fake = _FakeLibc()
    monkeypatch.setattr(process_protect, "_libc", fake)
    assert process_protect.protect_process(io_flusher=False) == {"mlock": True, "io_flusher": False}
    assert fake.calls == ["mlockall 7"]
