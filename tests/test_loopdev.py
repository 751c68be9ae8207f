"""zramfs.loopdev: finding a mount's loop devices and clamping their request size.

Unit tests run on a fake /sys/block; the mount test attaches a real loop device with plain
``losetup`` (what a zram script does) and checks the daemon lowered its max_sectors_kb to the
FUSE request size, which is what keeps a part-failed write from being completed as success
(the end-to-end check is test_reliability_stress's loop mem_limit test).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from zramfs import loopdev


def fake_loop(root: Path, name: str, backing: str | None, max_kb: int = 1280) -> Path:
    d = root / name
    (d / "queue").mkdir(parents=True)
    (d / "queue" / "max_sectors_kb").write_text(f"{max_kb}\n")
    if backing is not None:
        (d / "loop").mkdir()
        (d / "loop" / "backing_file").write_text(backing + "\n")
    return d


@pytest.fixture
def sysblock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "sys-block"
    root.mkdir()
    monkeypatch.setattr(loopdev, "SYS_BLOCK", root)
    return root


def test_attached_loops_finds_only_files_under_the_mount(sysblock: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0")
    fake_loop(sysblock, "loop1", f"{tmp_path}/mnt2/dev/zram0")        # a sibling mount
    fake_loop(sysblock, "loop2", None)                                 # unbound
    fake_loop(sysblock, "loop3", f"{mnt}/dev/zram1 (deleted)")
    assert loopdev.attached_loops(str(mnt)) == [
        ("/dev/loop0", f"{mnt}/dev/zram0"), ("/dev/loop3", f"{mnt}/dev/zram1 (deleted)")]


def test_clamp_lowers_only_larger_limits(sysblock: Path) -> None:
    big = fake_loop(sysblock, "loop0", "/x", max_kb=1280)
    small = fake_loop(sysblock, "loop1", "/y", max_kb=64)
    assert loopdev.clamp_requests("/dev/loop0", 128)
    assert (big / "queue/max_sectors_kb").read_text().strip() == "128"
    assert loopdev.clamp_requests("/dev/loop1", 128)
    assert (small / "queue/max_sectors_kb").read_text().strip() == "64"   # left alone
    with pytest.raises(OSError):
        loopdev.clamp_requests("/dev/loop9", 128)                          # no such device


def test_guard_scan_clamps_new_devices_once_and_warns_on_failure(
        sysblock: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0")
    bad = fake_loop(sysblock, "loop1", f"{mnt}/dev/zram1")
    (bad / "queue" / "max_sectors_kb").unlink()                         # sysfs refuses
    guard = loopdev.LoopGuard(str(mnt), 128)
    with caplog.at_level(logging.INFO, logger="zramfs.loopdev"):
        guard.scan()
        guard.scan()                                                    # nothing new
    assert (ok / "queue/max_sectors_kb").read_text().strip() == "128"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/dev/loop1" in warnings[0].getMessage()
    assert sum("/dev/loop0" in r.getMessage() for r in caplog.records) == 1
    # Detached: the old limit comes back (it would outlive the detach).
    shutil.rmtree(ok / "loop")
    guard.scan()
    assert (ok / "queue/max_sectors_kb").read_text().strip() == "1280"
    # Re-attached: clamped again; detached while someone set another value: left alone.
    (ok / "loop").mkdir()
    (ok / "loop" / "backing_file").write_text(f"{mnt}/dev/zram0\n")
    guard.scan()
    assert (ok / "queue/max_sectors_kb").read_text().strip() == "128"
    (ok / "queue/max_sectors_kb").write_text("256\n")
    shutil.rmtree(ok / "loop")
    guard.stop()
    assert (ok / "queue/max_sectors_kb").read_text().strip() == "256"


@pytest.mark.parametrize("uevents", [True, False], ids=["uevents", "polling"])
def test_guard_thread_starts_and_stops(sysblock: Path, tmp_path: Path, uevents: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread clamps a device that appears (here by the polling burst after an image
    open, or the uevent wait's rescan) and stops at once even while waiting for uevents."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if uevents:
        monkeypatch.setattr(loopdev, "EVENT_RESCAN_S", 0.05)
    else:
        monkeypatch.setattr(loopdev, "_uevent_socket", lambda: None)
    guard = loopdev.LoopGuard(str(mnt), 128)
    guard.start()
    guard.image_opened()
    d = fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0")
    deadline = time.monotonic() + 5
    while (d / "queue/max_sectors_kb").read_text().strip() != "128":
        assert time.monotonic() < deadline, "the guard thread did not clamp the device"
        time.sleep(0.01)
    monkeypatch.setattr(loopdev, "EVENT_RESCAN_S", 60.0)
    time.sleep(0.1)                     # now waiting for uevents (or polling) for a long time
    t0 = time.monotonic()
    guard.stop()
    assert time.monotonic() - t0 < 1.0
    assert guard._thread is None


@pytest.mark.fuse
def test_a_plain_losetup_gets_whole_fuse_requests(zmount) -> None:
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("needs losetup and root")
    m = zmount("--size", "16M")
    loop = subprocess.run(["losetup", "-f"], capture_output=True, text=True,
                          check=True).stdout.strip()
    queue = Path("/sys/block") / Path(loop).name / "queue"
    original = (queue / "max_sectors_kb").read_text().strip()
    hw_max = int((queue / "max_hw_sectors_kb").read_text())
    if hw_max <= 128:
        pytest.skip(f"{loop} cannot take requests larger than 128 KiB anyway")
    (queue / "max_sectors_kb").write_text(f"{hw_max}\n")     # the kernel's default
    try:
        subprocess.run(["losetup", loop, str(m.image(0))], check=True)
        try:
            # The guard scans every few ms after an image open: clamped before anyone used it.
            wait_for(lambda: loopdev.max_request_kb(loop) <= 128, f"{loop} clamped")
            assert loopdev.attached_loops(str(m.path)) == [(loop, str(m.image(0)))]
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
        # Detached: the device gets its limit back (the setting would outlive the detach).
        wait_for(lambda: loopdev.max_request_kb(loop) == hw_max, f"{loop} restored")
    finally:
        (queue / "max_sectors_kb").write_text(f"{original}\n")


def wait_for(cond, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.01)
