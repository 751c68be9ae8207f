"""The mounted control tree through real files: layout, modes, formats, errnos, hot_add/remove,
reset of an open device, module parameters, the proc files.  Real FUSE mounts (root, /dev/fuse).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from support.mountutil import expect_errno, mode_of, opened, write_file

pytestmark = pytest.mark.fuse


def test_layout_and_modes(zmount):
    m = zmount("--devices", "2")
    root = m.path
    for d in (
        "dev",
        "sys/block/zram0",
        "sys/block/zram1",
        "sys/class/zram-control",
        "sys/kernel/debug/zsmalloc",
        "sys/module/zramfs/parameters",
        "proc/sys/vm",
    ):
        assert (root / d).is_dir(), d
    assert sorted(os.listdir(root / "dev")) == ["zram0", "zram1"]
    assert sorted(os.listdir(root / "sys/block")) == ["zram0", "zram1"]
    assert mode_of(m.attr_path("disksize")) == 0o644
    assert mode_of(m.attr_path("initstate")) == 0o444
    assert mode_of(m.attr_path("reset")) == 0o200
    assert mode_of(m.attr_path("mm_stat")) == 0o444
    assert mode_of(root / "sys/class/zram-control/hot_add") == 0o400
    assert mode_of(root / "sys/class/zram-control/hot_remove") == 0o200
    assert mode_of(root / "proc/sys/vm/compact_memory") == 0o200
    assert mode_of(root / "proc/vmstat") == 0o444
    assert stat.S_ISREG(os.stat(m.image()).st_mode)
    # The zsmalloc debugfs directory exists only while the device has a pool.
    assert os.listdir(root / "sys/kernel/debug/zsmalloc") == []
    assert os.stat(m.image()).st_size == 0


def test_initialise_and_formats(zmount):
    m = zmount()
    assert m.read_attr("initstate") == "0\n"
    m.write_attr("comp_algorithm", "lz4")
    assert "[lz4]" in m.read_attr("comp_algorithm")
    m.write_attr("disksize", "16M")
    assert m.read_attr("initstate") == "1\n"
    assert int(m.read_attr("disksize")) == 16 << 20
    assert os.stat(m.image()).st_size == 16 << 20
    assert m.read_attr("size").strip() == str((16 << 20) // 512)
    mm = m.mm_stat()
    assert len(mm) == 9 and all(v >= 0 for v in mm)
    # The kernel's "%8llu %8llu ..." format, byte for byte.
    assert m.read_attr("mm_stat") == " ".join("%8d" % v for v in mm) + "\n"
    classes = (m.path / "sys/kernel/debug/zsmalloc/zram0/classes").read_text()
    assert classes.split()[:2] == ["class", "size"]


def test_attribute_errnos(zmount):
    m = zmount()
    expect_errno(errno.EINVAL, m.write_attr, "disksize", "lots")
    expect_errno(errno.EINVAL, m.write_attr, "comp_algorithm", "no-such-algorithm")
    m.write_attr("disksize", "8M")
    expect_errno(errno.EBUSY, m.write_attr, "disksize", "16M")  # reset first
    expect_errno(errno.EBUSY, m.write_attr, "comp_algorithm", "lz4")
    # Modes hold for root too (sysfs's extra open check): no reading write-only files, no
    # writing read-only ones.
    expect_errno(errno.EACCES, m.read_attr, "reset")
    expect_errno(errno.EACCES, m.write_attr, "initstate", "1")
    expect_errno(errno.EACCES, m.write_attr, "mm_stat", "1")
    # Nothing a bad write did changed the device.
    assert int(m.read_attr("disksize")) == 8 << 20


def test_shell_echo_reports_errno(zmount):
    """`echo foo > disksize` fails with the errno, as with kernel sysfs (O_TRUNC is ignored).
    bash, because dash's echo reports every write error as "I/O error"."""
    m = zmount()
    ok = subprocess.run(
        ["bash", "-c", f"echo 4M > {m.attr_path('disksize')}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        ["bash", "-c", f"echo 8M > {m.attr_path('disksize')}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "busy" in bad.stderr.lower()
    ok = subprocess.run(
        ["bash", "-c", f"echo 1 > {m.attr_path('reset')}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert m.read_attr("initstate") == "0\n"


def test_hot_add_and_remove(zmount):
    m = zmount()
    ctl = m.path / "sys/class/zram-control"
    assert (ctl / "hot_add").read_text() == "1\n"
    assert (ctl / "hot_add").read_text() == "2\n"
    assert sorted(os.listdir(m.path / "dev")) == ["zram0", "zram1", "zram2"]
    write_file(ctl / "hot_remove", "1")
    assert sorted(os.listdir(m.path / "dev")) == ["zram0", "zram2"]
    assert not m.sysfs(1).exists()
    assert (ctl / "hot_add").read_text() == "1\n"  # lowest free id
    expect_errno(errno.ENODEV, write_file, ctl / "hot_remove", "7")
    expect_errno(errno.EINVAL, write_file, ctl / "hot_remove", "-1")
    expect_errno(errno.EINVAL, write_file, ctl / "hot_remove", "zram1")
    expect_errno(errno.EACCES, (ctl / "hot_remove").read_text)
    expect_errno(errno.EACCES, write_file, ctl / "hot_add", "1")
    # A new device is uninitialised and fully usable.
    m.write_attr("disksize", "1M", dev=2)
    with opened(m.image(2)) as fd:
        os.pwrite(fd, b"x" * 4096, 0)
        assert os.pread(fd, 4096, 0) == b"x" * 4096


def test_reset_and_remove_of_open_device_is_ebusy(zmount):
    m = zmount("--size", "4M")
    ctl = m.path / "sys/class/zram-control"
    with opened(m.image(), os.O_RDONLY):
        expect_errno(errno.EBUSY, m.write_attr, "reset", "1")
        expect_errno(errno.EBUSY, write_file, ctl / "hot_remove", "0")
        assert m.read_attr("initstate") == "1\n"
    m.write_attr("reset", "1")  # closed: fine
    assert m.read_attr("initstate") == "0\n"
    write_file(ctl / "hot_remove", "0")
    assert os.listdir(m.path / "dev") == []


def test_tree_is_fixed(zmount):
    m = zmount("--size", "1M")
    expect_errno(errno.EACCES, os.open, m.path / "dev" / "zram9", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EACCES, os.open, m.sysfs() / "newattr", os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.EPERM, os.mkdir, m.path / "sys" / "x")
    expect_errno(errno.EPERM, os.unlink, m.image())
    expect_errno(errno.EPERM, os.unlink, m.attr_path("disksize"))
    expect_errno(errno.EPERM, os.rename, m.image(), m.path / "dev" / "zram5")
    expect_errno(errno.EPERM, os.rmdir, m.sysfs())
    expect_errno(errno.EPERM, os.symlink, "x", m.path / "dev" / "link")
    expect_errno(errno.ENOENT, os.stat, m.path / "dev" / "zram1")
    expect_errno(errno.ENOTDIR, os.stat, m.path / "proc" / "vmstat" / "x")


def test_module_parameters(zmount):
    m = zmount("--compact-interval", "250", "--compact-threshold", "10", "--chain-size", "8")
    assert m.param("compact_enabled") == "Y"
    assert m.param("compact_interval_ms") == "250"
    assert m.param("compact_threshold_pages") == "10"
    assert m.param("chain_size") == "8"
    m.set_param("compact_enabled", "N")
    assert m.param("compact_enabled") == "N"
    m.set_param("compact_threshold_pages", "0x20")
    assert m.param("compact_threshold_pages") == "32"
    expect_errno(errno.EINVAL, m.set_param, "compact_enabled", "maybe")
    expect_errno(errno.EINVAL, m.set_param, "compact_interval_ms", "-5")
    expect_errno(errno.EACCES, m.set_param, "chain_size", "4")
    expect_errno(errno.EACCES, m.set_param, "compact_runs", "4")


def test_proc_files(zmount):
    m = zmount("--size", "4M")
    vmstat = dict(line.split() for line in (m.path / "proc/vmstat").read_text().splitlines())
    assert "pgmigrate_success" in vmstat and all(v.isdigit() for v in vmstat.values())
    cm = m.path / "proc/sys/vm/compact_memory"
    write_file(cm, "1")
    expect_errno(errno.EINVAL, write_file, cm, "2")
    expect_errno(errno.EACCES, cm.read_text)
    lock_stat = m.path / "proc/lock_stat"
    assert "lock_stat" in lock_stat.read_text()
    write_file(lock_stat, "0")  # clears, accepted


def test_attribute_reads_are_fresh_and_chunkable(zmount):
    """Content is generated by the read at offset 0 and continued from that snapshot, so a
    reader with a tiny buffer sees one consistent value; re-reading from 0 shows new state."""
    m = zmount("--size", "4M")
    path = m.attr_path("mm_stat")
    with opened(path, os.O_RDONLY) as fd:
        first = os.read(fd, 4096)
        with opened(m.image()) as img:
            os.pwrite(img, os.urandom(8192), 0)
        chunks = []
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            piece = os.read(fd, 3)
            if not piece:
                break
            chunks.append(piece)
        again = b"".join(chunks)
    assert first != again  # fresh at offset 0
    assert int(again.split()[0]) == 8192  # orig_data_size now
    assert again == path.read_bytes()  # nothing changed since


def test_debugfs_block_state(zmount):
    m = zmount("--size", "1M", "--devices", "2")
    base = m.path / "sys/kernel/debug/zram"
    assert sorted(os.listdir(base)) == ["zram0", "zram1"]
    path = base / "zram0" / "block_state"
    assert mode_of(path) == 0o400
    assert path.read_text() == ""
    with opened(m.image()) as fd:
        os.pwrite(fd, b"\0" * 4096, 0)  # same-filled
        os.pwrite(fd, os.urandom(4096), 3 * 4096)  # incompressible: huge
    lines = path.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["0", "3"]
    assert lines[0].split()[2][0] == "s" and lines[1].split()[2][2] == "h"
