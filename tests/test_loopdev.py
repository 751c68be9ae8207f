"""zramfs.loopdev: finding a mount's loop devices and clamping their request size.

Unit tests run on a fake /sys/block; the mount test attaches a real loop device with plain
``losetup`` (what a zram script does) and checks the daemon lowered its max_sectors_kb to the
largest request FUSE always carries whole, which is what keeps a part-failed write from being
completed as success (the end-to-end checks are test_loop_mem_limit.py and
test_reliability_stress's loop mem_limit test).  A guard that cannot clamp is loud: ERROR in
the log, ``unclamped()`` (the ``unclamped_loops`` module parameter) lists the device.
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
    fake_loop(sysblock, "loop1", f"{tmp_path}/mnt2/dev/zram0")  # a sibling mount
    fake_loop(sysblock, "loop2", None)  # unbound
    fake_loop(sysblock, "loop3", f"{mnt}/dev/zram1 (deleted)")
    assert loopdev.attached_loops(str(mnt)) == [
        ("/dev/loop0", f"{mnt}/dev/zram0"),
        ("/dev/loop3", f"{mnt}/dev/zram1 (deleted)"),
    ]


def test_clamp_lowers_only_larger_limits(sysblock: Path) -> None:
    big = fake_loop(sysblock, "loop0", "/x", max_kb=1280)
    small = fake_loop(sysblock, "loop1", "/y", max_kb=64)
    assert loopdev.clamp_requests("/dev/loop0", 128)
    assert (big / "queue/max_sectors_kb").read_text().strip() == "128"
    assert loopdev.clamp_requests("/dev/loop1", 128)
    assert (small / "queue/max_sectors_kb").read_text().strip() == "64"  # left alone
    with pytest.raises(OSError):
        loopdev.clamp_requests("/dev/loop9", 128)  # no such device


def test_whole_request_kb_is_bounded_by_pages_not_bytes() -> None:
    """Every page a loop request touches holds at least one 512-byte sector of it, so FUSE's
    32 pages carry any request of up to 16 KiB whole; more pages (libfuse 3's max_pages)
    allow more, never beyond max_write."""
    assert loopdev.whole_request_kb(128) == 16
    assert loopdev.whole_request_kb(128, max_pages=256) == 128
    assert loopdev.whole_request_kb(8) == 8
    for bad in ((0, 32), (128, 0), (-1, 32)):
        with pytest.raises(ValueError):
            loopdev.whole_request_kb(*bad)


def read_kb(dev: Path) -> int:
    return int((dev / "queue/max_sectors_kb").read_text())


def test_guard_scan_clamps_new_devices_once_and_restores_after_detach(
    sysblock: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0")
    small = fake_loop(sysblock, "loop2", f"{mnt}/dev/zram0", max_kb=8)
    guard = loopdev.LoopGuard(str(mnt), 128)
    assert guard.limit_kb == 16
    with caplog.at_level(logging.INFO, logger="zramfs.loopdev"):
        guard.scan()
        guard.scan()  # nothing new
    assert read_kb(ok) == 16 and read_kb(small) == 8  # a smaller one: kept
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "/dev/loop0" in caplog.records[0].getMessage()
    assert guard.unclamped() == []
    # Detached: the old limit comes back (it would outlive the detach).
    shutil.rmtree(ok / "loop")
    guard.scan()
    assert read_kb(ok) == 1280
    # Re-attached: clamped again; detached while someone set another value: left alone.
    (ok / "loop").mkdir()
    (ok / "loop" / "backing_file").write_text(f"{mnt}/dev/zram0\n")
    guard.scan()
    assert read_kb(ok) == 16
    (ok / "queue/max_sectors_kb").write_text("256\n")
    shutil.rmtree(ok / "loop")
    guard.stop()
    assert read_kb(ok) == 256


def test_guard_lowers_a_limit_raised_while_attached(
    sysblock: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone raising max_sectors_kb by hand is seen at the next scan and undone, with a
    warning; the detach still restores the value from before the first clamp."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dev = fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0", max_kb=512)
    guard = loopdev.LoopGuard(str(mnt), 128)
    guard.scan()
    (dev / "queue/max_sectors_kb").write_text("1024\n")
    assert guard.unclamped() == ["/dev/loop0"]  # read live
    with caplog.at_level(logging.WARNING, logger="zramfs.loopdev"):
        guard.scan()
    assert read_kb(dev) == 16 and guard.unclamped() == []
    assert len(caplog.records) == 1 and "raised to 1024" in caplog.records[0].getMessage()
    shutil.rmtree(dev / "loop")
    guard.scan()
    assert read_kb(dev) == 512


def refuse_sysfs_writes(monkeypatch: pytest.MonkeyPatch, refused: set[str]) -> None:
    """Make writes to the named devices' max_sectors_kb fail as a read-only /sys does."""
    real = Path.write_text

    def write_text(self: Path, data: str, *args, **kwargs) -> int:
        if self.name == "max_sectors_kb" and self.parent.parent.name in refused:
            raise OSError(30, "Read-only file system", str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_guard_that_cannot_clamp_says_so_loudly_and_keeps_trying(
    sysblock: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sysfs refusing the write: one ERROR line per attached device naming the fix, the device
    listed by unclamped() for as long as it stays unclamped, a retry at every scan, and a
    warning once a retry succeeds."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    good = fake_loop(sysblock, "loop0", f"{mnt}/dev/zram0")
    bad = fake_loop(sysblock, "loop1", f"{mnt}/dev/zram1")
    gone = fake_loop(sysblock, "loop2", f"{mnt}/dev/zram2")
    (gone / "queue" / "max_sectors_kb").unlink()  # unreadable
    refused = {"loop1"}
    refuse_sysfs_writes(monkeypatch, refused)
    guard = loopdev.LoopGuard(str(mnt), 128)
    with caplog.at_level(logging.INFO, logger="zramfs.loopdev"):
        guard.scan()
        guard.scan()
        guard.scan()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors  # once per device
    assert "/dev/loop1" in errors[0] and "Read-only file system" in errors[0]
    assert "echo 16 > /sys/block/loop1/queue/max_sectors_kb" in errors[0]
    assert "/dev/loop2" in errors[1]
    assert read_kb(good) == 16 and read_kb(bad) == 1280
    assert guard.unclamped() == ["/dev/loop1", "/dev/loop2"]
    # sysfs lets go: the next scan clamps it and says so.
    refused.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zramfs.loopdev"):
        guard.scan()
    assert read_kb(bad) == 16 and guard.unclamped() == ["/dev/loop2"]
    assert any(
        r.levelno == logging.WARNING
        and "/dev/loop1" in r.getMessage()
        and "clamped" in r.getMessage()
        for r in caplog.records
    )
    # Detached (its old limit restored), then attached again while sysfs refuses: the device
    # is new again, and gets its own ERROR line.
    shutil.rmtree(bad / "loop")
    guard.scan()
    assert read_kb(bad) == 1280
    refused.add("loop1")
    (bad / "loop").mkdir()
    (bad / "loop" / "backing_file").write_text(f"{mnt}/dev/zram1\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="zramfs.loopdev"):
        guard.scan()
    assert len(caplog.records) == 1 and "/dev/loop1" in caplog.records[0].getMessage()
    assert "/dev/loop1" in guard.unclamped()


@pytest.mark.parametrize("uevents", [True, False], ids=["uevents", "polling"])
def test_guard_thread_starts_and_stops(
    sysblock: Path, tmp_path: Path, uevents: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    while read_kb(d) != guard.limit_kb:
        assert time.monotonic() < deadline, "the guard thread did not clamp the device"
        time.sleep(0.01)
    monkeypatch.setattr(loopdev, "EVENT_RESCAN_S", 60.0)
    time.sleep(0.1)  # now waiting for uevents (or polling) for a long time
    t0 = time.monotonic()
    guard.stop()
    assert time.monotonic() - t0 < 1.0
    assert guard._thread is None


@pytest.mark.fuse
def test_a_plain_losetup_gets_whole_fuse_requests(zmount) -> None:
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("needs losetup and root")
    m = zmount("--size", "16M")
    loop = subprocess.run(
        ["losetup", "-f"], capture_output=True, text=True, check=True
    ).stdout.strip()
    queue = Path("/sys/block") / Path(loop).name / "queue"
    original = (queue / "max_sectors_kb").read_text().strip()
    hw_max = int((queue / "max_hw_sectors_kb").read_text())
    if hw_max <= 128:
        pytest.skip(f"{loop} cannot take requests larger than 128 KiB: nothing to see")
    (queue / "max_sectors_kb").write_text(f"{hw_max}\n")  # the kernel's default
    from zramfs.fs import MAX_IO

    limit_kb = loopdev.whole_request_kb(MAX_IO // 1024)
    try:
        subprocess.run(["losetup", loop, str(m.image(0))], check=True)
        try:
            # The guard scans every few ms after an image open: clamped before anyone used it.
            wait_for(lambda: loopdev.max_request_kb(loop) == limit_kb, f"{loop} clamped")
            assert m.param("unclamped_loops") == ""
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
