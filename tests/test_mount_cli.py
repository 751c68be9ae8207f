"""The ``zramfs`` command: daemonised mount that returns when ready, status table/JSON, umount
refusing while a loop device is attached, SIGTERM/SIGINT unmounting cleanly, a SIGKILLed
daemon's stale mount cleaned by ``zramfs umount``, and mount errors reported by the parent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from support.mountutil import is_mounted, run, zramfs_cli

pytestmark = pytest.mark.fuse


def test_mount_returns_ready_then_status_and_umount(daemon):
    d = daemon
    res = d.mount("--size", "8M", "--devices", "2", "--algorithm", "zstd")
    assert res.returncode == 0, res.stderr
    # Ready means usable right away: no polling.
    assert (d.mnt / "sys/block/zram1/disksize").read_text() == f"{8 << 20}\n"
    with open(d.mnt / "dev/zram0", "r+b", buffering=0) as f:
        f.write(b"hello zram " * 1000)
    table = zramfs_cli("status", str(d.mnt)).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "DISKSIZE",
        "DATA",
        "COMPR",
        "ALGORITHM",
        "STREAMS",
        "ZERO-PAGES",
        "TOTAL",
        "MEM-LIMIT",
        "MEM-USED",
        "MIGRATED",
    ]
    assert len(table) == 3 and table[1].startswith(str(d.mnt / "dev/zram0"))
    assert "8M" in table[1] and "zstd" in table[1]
    data = json.loads(zramfs_cli("status", str(d.mnt), "--json").stdout)
    devs = data["mounts"][0]["devices"]
    assert [x["name"] for x in devs] == [str(d.mnt / "dev/zram0"), str(d.mnt / "dev/zram1")]
    assert devs[0]["data"] == 12 * 1024 and devs[0]["algorithm"] == "zstd"
    # The mount is private: no allow_other.
    opts = [
        ln.split()[3]
        for ln in Path("/proc/self/mounts").read_text().splitlines()
        if ln.split()[1] == str(d.mnt)
    ]
    assert opts and "allow_other" not in opts[0]
    pid = d.pid
    res = zramfs_cli("umount", str(d.mnt))
    assert res.returncode == 0
    assert d.wait_gone(pid), "daemon still running after umount"


def test_umount_refuses_with_loop_attached(daemon):
    d = daemon
    d.mount("--size", "8M")
    pid = d.pid
    loop = run("losetup", "-f", "--show", str(d.mnt / "dev/zram0")).stdout.strip()
    try:
        res = zramfs_cli("umount", str(d.mnt), check=False)
        assert res.returncode == 1
        assert loop in res.stderr and "losetup -d" in res.stderr
        assert is_mounted(d.mnt)
    finally:
        run("losetup", "-d", loop)
    # The detach completes when the last opener (udev's probe, maybe) closes the loop device.
    deadline = time.monotonic() + 10
    while zramfs_cli("umount", str(d.mnt), check=False).returncode != 0:
        assert time.monotonic() < deadline, "umount still refused after losetup -d"
        time.sleep(0.1)
    assert d.wait_gone(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(daemon, sig):
    d = daemon
    d.mount("--size", "4M")
    pid = d.pid
    os.kill(pid, sig)
    assert d.wait_gone(pid), f"{sig.name}: still mounted or running"
    assert not d.pidfile.exists()


def test_stale_mount_after_sigkill(daemon):
    """A SIGKILLed daemon leaves a stale mount: ``zramfs mount`` on the place cleans it up (and
    says so) before mounting anew; ``zramfs umount`` removes it too."""
    d = daemon

    def kill_daemon() -> None:
        pid = d.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while d.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_mounted(d.mnt)
        with pytest.raises(OSError):
            os.listdir(d.mnt)  # ENOTCONN

    d.mount("--size", "4M")
    kill_daemon()
    res = d.mount("--size", "4M", check=False)
    assert res.returncode == 0 and "cleaned up a stale zramfs mount" in res.stderr, res.stderr
    assert (d.mnt / "sys/block/zram0/disksize").read_text() == f"{4 << 20}\n"
    kill_daemon()
    res = zramfs_cli("umount", str(d.mnt), check=False)
    assert res.returncode == 0, res.stderr
    assert "stale" in res.stderr
    assert not is_mounted(d.mnt)


def test_mount_errors_are_reported(daemon, tmp_path):
    d = daemon
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    res = zramfs_cli("mount", str(not_a_dir), check=False)
    assert res.returncode == 1 and "not a directory" in res.stderr
    # An error inside the daemon (bad algorithm) comes back through the readiness pipe.
    res = d.mount("--size", "4M", "--algorithm", "no-such-codec", check=False)
    assert res.returncode == 1 and "mount failed" in res.stderr
    assert not is_mounted(d.mnt)
    res = zramfs_cli("umount", str(d.mnt), check=False)
    assert res.returncode == 1 and "not a zramfs mount" in res.stderr
    d.mount("--size", "4M")
    res = zramfs_cli("mount", str(d.mnt), check=False)
    assert res.returncode == 1 and "already" in res.stderr


def test_allow_other_adds_default_permissions(daemon):
    d = daemon
    d.mount("--size", "1M", "--allow-other")
    opts = [
        ln.split()[3]
        for ln in Path("/proc/self/mounts").read_text().splitlines()
        if ln.split()[1] == str(d.mnt)
    ]
    assert opts and "allow_other" in opts[0] and "default_permissions" in opts[0]
    pid = d.pid
    zramfs_cli("umount", str(d.mnt))
    assert d.wait_gone(pid)
