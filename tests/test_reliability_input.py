"""Reliability, part 1: bad input and bad requests change nothing (docs/guarantees.md, "Bad
input changes nothing" and "Bad requests on the image fail cleanly").

Every control file of a real mount (the directory is walked, so a file added later without an
entry in the tables below fails the test) gets empty writes, garbage, non-UTF-8 bytes,
negative / huge / overflowing (2**64) numbers, trailing junk, writes at an offset and several
writes on one open file.  Each must fail with the errno the kernel gives for that file — the
tables are the kernel's store functions (zram_drv.c, kstrto*/memparse/kstrtobool, param_set_*,
the compact_memory sysctl; the sysctl's answers were measured on Linux 6.18) — and change
nothing: every readable file and every image's sha256 are compared before and after.

Modes: sysfs opens with KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK and sysctls without the root
override, so even root gets EACCES opening a 0200 file for reading or a 0444 one for writing.
A plain procfs file (``/proc/vmstat``) is different: root may open it for writing, and the
write fails with EIO (measured on 6.18).

Bad image requests (negative offsets, past the end, beyond any file size, uninitialised
device, every namespace operation) fail cleanly and leave data and counters alone.  Access:
without ``--allow-other`` nobody but the mounting user can even stat the mount; with it, the
kernel enforces the attribute modes (default_permissions), so another user may read 0444
files and nothing else.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.mountutil import Mount, expect_errno, opened, require_fuse
from support.reliability import (
    PAGE,
    MiB,
    control_files,
    fallocate,
    mode_of,
    snapshot,
    snapshot_diff,
    varied_data,
)

pytestmark = pytest.mark.fuse

OK = 0  # "the kernel accepts this input" (and, for these files, nothing changes)

# ---- the inputs ------------------------------------------------------------------------------
GARBAGE = b"garbage"
NON_UTF8 = b"\xff\xfe\x80"
NEG = b"-1"
HUGE = b"99999999999999999999"  # > 2**64, wraps to a non-zero u64 in memparse
OVF = str(2**64).encode()  # 2**64: wraps to 0 in memparse
JUNK = b"1 junk"  # a number with trailing junk
NL2 = b"1\n\n"  # kstrto* allow one trailing newline, not two
NUL = b"\x00"
LEAD = b" 1"  # kstrto* allow no leading space
NEWLINE = b"\n"
LONG = b"x" * 200  # > ZRAM_MAX_ALGO_NAME_SZ (128)
BIN = b"0b1"  # Python's int(x, 0) prefixes are not the kernel's
UNDERSCORE = b"1_0"
PLUS = b"+1"

ALL_BAD = (GARBAGE, NON_UTF8, NEG, HUGE, OVF, JUNK, NL2, NUL, LEAD, NEWLINE, LONG)
_KSTRTO_EINVAL = {
    GARBAGE: errno.EINVAL,
    NON_UTF8: errno.EINVAL,
    NEG: errno.EINVAL,
    JUNK: errno.EINVAL,
    NL2: errno.EINVAL,
    NUL: errno.EINVAL,
    LEAD: errno.EINVAL,
    NEWLINE: errno.EINVAL,
    LONG: errno.EINVAL,
}


def every(code: int, inputs=ALL_BAD) -> dict[bytes, int]:
    return {i: code for i in inputs}


# ---- what the kernel answers, per file -------------------------------------------------------
# An initialised device holding data (zram0).  Inputs the kernel *accepts* for a file (and
# which would change it) are left out; files that accept anything without effect list OK.
INIT: dict[str, dict[bytes, int]] = {
    # memparse; 0 -> EINVAL before the init check; anything else -> EBUSY (initialised)
    "disksize": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        HUGE: errno.EBUSY,
        OVF: errno.EINVAL,
        JUNK: errno.EBUSY,
        NL2: errno.EBUSY,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
        b"8M": errno.EBUSY,
    },
    # kstrtou16, errors as is; 0 -> EINVAL
    "reset": {
        **_KSTRTO_EINVAL,
        HUGE: errno.ERANGE,
        OVF: errno.ERANGE,
        b"65536": errno.ERANGE,
        b"0": errno.EINVAL,
    },
    # memparse: only "nothing parsed" is an error (HUGE, OVF, JUNK, NL2 are valid limits)
    "mem_limit": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
    },
    # kstrtoul error or val != 0 -> EINVAL
    "mem_used_max": {**every(errno.EINVAL), b"1": errno.EINVAL},
    # "all" or kstrtouint(base 0); anything else EINVAL
    "idle": {**every(errno.EINVAL), b"all junk": errno.EINVAL, b"0x": errno.EINVAL},
    # 4.7 … 6.14: the store ignores its input
    "max_comp_streams": every(OK),
    # E2BIG (>= 128 bytes), unknown name EINVAL (checked before init), known name EBUSY
    "comp_algorithm": {
        **every(errno.EINVAL),
        LONG: errno.E2BIG,
        b"lz4": errno.EBUSY,
        b"lz4\n\n": errno.EINVAL,
        b" lz4": errno.EINVAL,
    },
    "backing_dev": every(errno.EBUSY),  # initialised: EBUSY before anything
    "writeback": every(errno.ENODEV),  # initialised, no backing device
    "writeback_limit": every(errno.EINVAL),  # kstrtoull error -> EINVAL
    "writeback_limit_enable": every(errno.EINVAL),
    "writeback_batch_size": {**every(errno.EINVAL), b"0": errno.EINVAL},  # kstrtouint -> EINVAL
    # kstrtobool (first character) -> EINVAL, then EBUSY when initialised
    "compressed_writeback": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        HUGE: errno.EINVAL,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
        OVF: errno.EBUSY,
        JUNK: errno.EBUSY,
        b"1": errno.EBUSY,
    },
    # next_arg: a valueless key -> EINVAL; unknown algorithm EINVAL; known one EBUSY
    "recomp_algorithm": {
        **every(errno.EINVAL),
        b"algo=": errno.EINVAL,
        b"algo=nosuch": errno.EINVAL,
        b"algo=zstd priority=9": errno.EINVAL,
        b"algo=" + LONG: errno.E2BIG,
        b"algo=zstd": errno.EBUSY,
    },
    # valueless -> EINVAL; kstrtoull errors as is; no secondary algorithm -> EINVAL
    "recompress": {
        **every(errno.EINVAL),
        b"max_pages=" + HUGE: errno.ERANGE,
        b"threshold=" + HUGE: errno.ERANGE,
        b"type=idle": errno.EINVAL,
    },
    # 241f9005b1c8: EBUSY once initialised, before parsing
    "algorithm_params": every(errno.EBUSY),
    # the kernel compacts whatever is written: no bad input while initialised (see UNINIT)
    "compact": {},
}

# An uninitialised device (zram1).
UNINIT: dict[str, dict[bytes, int]] = {
    "disksize": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        OVF: errno.EINVAL,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
        HUGE: errno.ENOMEM,
        b"8E": errno.ENOMEM,
    },  # the slot table cannot exist
    "reset": INIT["reset"],
    "compact": every(errno.EINVAL, ALL_BAD + (b"1",)),  # not initialised
    "mem_limit": INIT["mem_limit"],
    "mem_used_max": INIT["mem_used_max"],
    "idle": {**INIT["idle"], b"all": errno.EINVAL},  # not initialised
    "max_comp_streams": every(OK),
    "comp_algorithm": {**every(errno.EINVAL), LONG: errno.E2BIG, b"lz4\n\n": errno.EINVAL},
    "backing_dev": {
        b"/nonexistent/file": errno.ENOENT,
        b"/dev/null": errno.ENOTBLK,
        b"/": errno.EISDIR,
        b"/nonexistent/\xff\xfe": errno.ENOENT,
    },
    "writeback": every(errno.EINVAL, ALL_BAD + (b"huge",)),  # not initialised
    "writeback_limit": INIT["writeback_limit"],
    "writeback_limit_enable": INIT["writeback_limit_enable"],
    "writeback_batch_size": INIT["writeback_batch_size"],
    "compressed_writeback": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        HUGE: errno.EINVAL,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
    },
    "recomp_algorithm": {
        **every(errno.EINVAL),
        b"algo=nosuch": errno.EINVAL,
        b"priority=1": errno.EINVAL,
        b"algo=zstd priority=0": errno.EINVAL,
        b"algo=zstd priority=4": errno.EINVAL,
        b"algo=" + LONG: errno.E2BIG,
    },
    "recompress": {
        **every(errno.EINVAL),
        b"max_pages=" + HUGE: errno.ERANGE,
        b"type=idle": errno.EINVAL,
    },
    # skip_spaces, then next_arg pairs: a blank write sets no parameter (accepted)
    "algorithm_params": {
        **every(errno.EINVAL, tuple(i for i in ALL_BAD if i != NEWLINE)),
        b"priority=9": errno.EINVAL,
        b"algo=nosuch": errno.EINVAL,
        b"level=abc": errno.EINVAL,
        b"dict=/nonexistent/dict": errno.EINVAL,
        b"priority=" + HUGE: errno.ERANGE,
    },
}

# Files outside sys/block/zram<N>/.
OTHER: dict[str, dict[bytes, int]] = {
    # kstrtoint: errors as is; negative EINVAL; no such id ENODEV
    "sys/class/zram-control/hot_remove": {
        **_KSTRTO_EINVAL,
        HUGE: errno.ERANGE,
        OVF: errno.ERANGE,
        b"99": errno.ENODEV,
        b"zram0": errno.EINVAL,
    },
    # proc_dointvec, then != 1 -> EINVAL (answers measured on Linux 6.18; " 1", "1\n\n",
    # "0x1" are accepted, "1 junk" is a short write of 2 bytes)
    "proc/sys/vm/compact_memory": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        HUGE: errno.EINVAL,
        OVF: errno.EINVAL,
        NUL: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
        b"2": errno.EINVAL,
        BIN: errno.EINVAL,
        UNDERSCORE: errno.EINVAL,
        PLUS: errno.EINVAL,
    },
    # lock_stat_write: only a leading '0' clears; anything else is accepted and ignored
    "proc/lock_stat": every(OK, (GARBAGE, NON_UTF8, NEG, HUGE, JUNK, NEWLINE, LONG)),
    # param_set_bool: kstrtobool
    "sys/module/zramfs/parameters/compact_enabled": {
        GARBAGE: errno.EINVAL,
        NON_UTF8: errno.EINVAL,
        NEG: errno.EINVAL,
        HUGE: errno.EINVAL,
        NUL: errno.EINVAL,
        LEAD: errno.EINVAL,
        NEWLINE: errno.EINVAL,
        LONG: errno.EINVAL,
    },
    # param_set_uint: kstrtouint(base 0), errors as is
    "sys/module/zramfs/parameters/compact_interval_ms": {
        **_KSTRTO_EINVAL,
        HUGE: errno.ERANGE,
        OVF: errno.ERANGE,
        BIN: errno.EINVAL,
        UNDERSCORE: errno.EINVAL,
    },
    "sys/module/zramfs/parameters/compact_policy": every(errno.EINVAL),
    "sys/module/zramfs/parameters/compact_threshold_pages": {
        **_KSTRTO_EINVAL,
        HUGE: errno.ERANGE,
        OVF: errno.ERANGE,
        BIN: errno.EINVAL,
        UNDERSCORE: errno.EINVAL,
    },
}


def table_for(m: Mount, path: Path) -> tuple[str, dict[bytes, int]] | None:
    """(key, expectations) for a writable control file, None if the table lacks it."""
    rel = str(path.relative_to(m.path))
    if path.parent.parent.name == "block":
        table = INIT if path.parent.name == "zram0" else UNINIT
        return (path.name, table[path.name]) if path.name in table else None
    return (rel, OTHER[rel]) if rel in OTHER else None


def write_once(path: Path, data: bytes, offset: int = 0) -> int:
    """One open, one write(2) at ``offset`` (pwrite when > 0); returns what write returned."""
    with opened(path, os.O_WRONLY) as fd:
        return os.pwrite(fd, data, offset) if offset else os.write(fd, data)


def outcome(path: Path, data: bytes, offset: int = 0) -> int:
    """OK or the errno of one write."""
    try:
        n = write_once(path, data, offset)
    except OSError as exc:
        assert exc.errno is not None
        return exc.errno
    assert n == len(data), f"{path.name}: short write {n} of {len(data)}"
    return OK


def _name(code: int) -> str:
    return "OK" if code == OK else errno.errorcode.get(code, str(code))


@pytest.fixture
def loaded(zmount) -> Mount:
    """zram0 initialised with mixed data, zram1 uninitialised; no background compaction (it
    would change mm_stat between snapshots on its own)."""
    import random

    m = zmount("--size", "4M", "--devices", "2", "--no-compact")
    rng = random.Random(6)
    with opened(m.image(0)) as fd:
        for off in range(0, 4 * MiB, 64 * 1024):
            os.pwrite(fd, varied_data(rng, 64 * 1024), off)
    m.write_attr("reset", "1", dev=1)
    return m


def test_bad_input_on_every_control_file_changes_nothing(loaded: Mount) -> None:
    m = loaded
    before = snapshot(m)
    problems: list[str] = []
    covered = 0
    for path in control_files(m):
        mode = mode_of(path)
        if not mode & 0o200:
            continue
        entry = table_for(m, path)
        rel = str(path.relative_to(m.path))
        if entry is None:
            problems.append(f"{rel}: writable but has no entry in the tables (add one)")
            continue
        _, table = entry
        # An empty write(2) never reaches a sysfs store (sysfs_kf_write: count 0 -> 0) nor the
        # FUSE daemon: it returns 0.  (The real compact_memory sysctl answers EINVAL there; a
        # FUSE file cannot, see docs/guarantees.md.)
        if write_once(path, b"") != 0:
            problems.append(f"{rel}: empty write did not return 0")
        for data, want in table.items():
            got = outcome(path, data)
            covered += 1
            if got != want:
                problems.append(f"{rel} <- {data[:40]!r}: {_name(got)}, kernel: {_name(want)}")
        after = snapshot(m)
        changed = snapshot_diff(before, after)
        if changed:
            problems.append(f"{rel}: bad input changed state: {changed}")
            before = after
    print(f"\n{covered} bad inputs to {len(control_files(m))} control files")
    assert covered > 300
    assert not problems, "\n".join(problems)
    # every refusal was a deliberate errno, not an exception escaping into the binding
    log = m.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_writes_at_an_offset_and_several_writes_on_one_open(loaded: Mount) -> None:
    """sysfs ignores the file position (sysfs_kf_write) and every write(2) is one whole store:
    nothing accumulates across writes on one open file."""
    m = loaded
    before = snapshot(m)
    # Bad input at an offset: the same errno as at 0.
    for name, data, want in (
        ("disksize", GARBAGE, errno.EINVAL),
        ("reset", HUGE, errno.ERANGE),
        ("mem_limit", NEG, errno.EINVAL),
        ("idle", JUNK, errno.EINVAL),
    ):
        assert outcome(m.attr_path(name), data, offset=5) == want, name
    # Two bad writes on one open: each fails on its own.
    with opened(m.attr_path("mem_limit"), os.O_WRONLY) as fd:
        expect_errno(errno.EINVAL, os.write, fd, GARBAGE)
        expect_errno(errno.EINVAL, os.write, fd, NEG)
    assert not snapshot_diff(before, snapshot(m))
    # A valid write at an offset is a whole store too (the position is ignored).
    assert write_once(m.attr_path("mem_used_max"), b"0", offset=100) == 1
    # "1" then "M" on one open of an uninitialised disksize: the first write alone is a store
    # (disksize becomes one page), the second is a store of "M" (memparse 0: EINVAL).
    with opened(m.attr_path("disksize", dev=1), os.O_WRONLY) as fd:
        assert os.write(fd, b"1") == 1
        expect_errno(errno.EINVAL, os.write, fd, b"M")
    assert m.read_attr("disksize", dev=1) == f"{PAGE}\n"
    m.write_attr("reset", "1", dev=1)
    # Reads at an offset see the same content from there.
    with opened(m.attr_path("mm_stat"), os.O_RDONLY) as fd:
        text = m.read_attr("mm_stat").encode()
        assert os.pread(fd, 20, 3) == text[3:23]


def test_wrong_modes(loaded: Mount) -> None:
    """0200 files cannot be opened for reading, 0444 ones for writing — not even by root
    (EACCES at open, sysfs and sysctl rules); directories not for writing (EISDIR)."""
    m = loaded
    before = snapshot(m)
    checked = 0
    for path in control_files(m):
        mode = mode_of(path)
        rel = str(path.relative_to(m.path))
        if rel == "proc/vmstat":
            continue  # procfs, not sysfs: its own test below
        if not mode & 0o400:
            expect_errno(errno.EACCES, os.open, path, os.O_RDONLY)
            expect_errno(errno.EACCES, os.open, path, os.O_RDWR)
            checked += 1
        if not mode & 0o200:
            expect_errno(errno.EACCES, os.open, path, os.O_WRONLY)
            expect_errno(errno.EACCES, os.open, path, os.O_RDWR)
            expect_errno(errno.EACCES, os.open, path, os.O_WRONLY | os.O_TRUNC)
            checked += 1
    assert checked > 20
    for d in ("dev", "sys/block/zram0", "proc"):
        expect_errno(errno.EISDIR, os.open, m.path / d, os.O_WRONLY)
    assert not snapshot_diff(before, snapshot(m))


def test_proc_vmstat_write_is_eio_like_procfs(loaded: Mount) -> None:
    """/proc/vmstat is a plain procfs file: root opens it for writing and the write fails
    with EIO (pde_write without ->proc_write; measured on Linux 6.18)."""
    m = loaded
    with opened(m.path / "proc/vmstat", os.O_WRONLY) as fd:
        expect_errno(errno.EIO, os.write, fd, b"1")


# ---- differences from the kernel's parsers this file found (fixed), one regression test each --
def test_writeback_batch_size_overflow_is_einval(loaded: Mount) -> None:
    """writeback_batch_size_store: ``if (kstrtouint(buf, 10, &val)) return -EINVAL;``."""
    for dev in (0, 1):
        for data in (HUGE, OVF):
            assert _name(outcome(loaded.attr_path("writeback_batch_size", dev), data)) == "EINVAL"


def test_compact_memory_parses_like_proc_dointvec(loaded: Mount) -> None:
    """The sysctl answers EINVAL to overflow (proc_get_long) and to what the kernel's
    integer parser does not know (0b…, +1); measured on Linux 6.18.  Nothing may compact."""
    m = loaded
    before = snapshot(m)
    got = {
        d: _name(outcome(m.path / "proc/sys/vm/compact_memory", d)) for d in (HUGE, OVF, BIN, PLUS)
    }
    assert got == {d: "EINVAL" for d in got}
    assert not snapshot_diff(before, snapshot(m))


def test_module_parameters_parse_like_the_kernel(loaded: Mount) -> None:
    """param_set_uint is kstrtouint(base 0): no leading space, one trailing newline at most, no
    0b/0o prefixes or digit separators; param_set_bool is kstrtobool: no leading space.
    The rejected values must not change the knob."""
    m = loaded
    before = snapshot(m)
    got = {}
    for p in ("compact_interval_ms", "compact_threshold_pages"):
        for d in (LEAD, NL2, BIN, UNDERSCORE):
            got[(p, d)] = _name(outcome(m.param_path(p), d))
    got[("compact_enabled", LEAD)] = _name(outcome(m.param_path("compact_enabled"), LEAD))
    assert got == {k: "EINVAL" for k in got}
    assert not snapshot_diff(before, snapshot(m))


# ---- bad requests on the image ---------------------------------------------------------------
def test_bad_image_requests_fail_cleanly(loaded: Mount) -> None:
    m = loaded
    size = 4 * MiB
    before = snapshot(m)
    img = m.image(0)
    with opened(img) as fd:
        expect_errno(errno.EINVAL, os.pread, fd, 10, -1)
        expect_errno(errno.EINVAL, os.pwrite, fd, b"x", -4096)
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x" * PAGE, size)
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", 2**62)
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", 2**63 - 2)
        assert os.pread(fd, PAGE, 2**62) == b""
        assert os.pread(fd, PAGE, size) == b""
        assert len(os.pread(fd, 64 * MiB, 0)) == size  # a huge read is cut at the end
        expect_errno(errno.EFBIG, fallocate, fd, 0, size - PAGE, 2 * PAGE)  # cannot grow
        expect_errno(errno.EINVAL, fallocate, fd, 0x03, -1, PAGE)
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, 0x08, 0, PAGE)  # COLLAPSE_RANGE
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, 0x20, 0, PAGE)  # INSERT_RANGE
        expect_errno(errno.EPERM, os.ftruncate, fd, size // 2)
        expect_errno(errno.EPERM, os.ftruncate, fd, size + PAGE)
    with opened(img, os.O_WRONLY | os.O_APPEND) as fd:  # appends start at the end
        expect_errno(errno.ENOSPC, os.write, fd, b"x")
    # The namespace is fixed.
    expect_errno(errno.EPERM, os.chmod, img, 0o666)
    expect_errno(errno.EPERM, os.chown, img, 1, 1)
    expect_errno(errno.EPERM, os.link, img, m.path / "dev" / "zram7")
    expect_errno(errno.EPERM, os.symlink, "zram0", m.path / "dev" / "zram8")
    expect_errno(errno.EPERM, os.rename, m.path / "proc", m.path / "proc2")
    expect_errno(errno.EPERM, os.rename, m.attr_path("disksize"), m.attr_path("x"))
    expect_errno(errno.EPERM, os.unlink, m.path / "proc/vmstat")
    expect_errno(errno.EPERM, os.rmdir, m.path / "dev")
    expect_errno(errno.EPERM, os.mkdir, m.path / "dev" / "d")
    expect_errno(errno.EPERM, os.mkdir, m.sysfs() / "d")
    expect_errno(errno.EEXIST, os.open, img, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    for where in (m.path / "x", m.path / "dev" / "zram1x", m.sysfs() / "new", m.path / "proc/x"):
        expect_errno(errno.EACCES, os.open, where, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError):
            os.mknod(where, 0o600)
    for where in (
        m.path / "nope",
        m.path / "dev" / "zram9",
        m.sysfs(5),
        m.path / "sys/nope",
        m.path / "proc/sys/vm/drop_caches",
        m.path / "sys/block/zram0/nope",
    ):
        expect_errno(errno.ENOENT, os.stat, where)
    with pytest.raises(OSError):
        os.setxattr(img, "user.x", b"1")
    assert not snapshot_diff(before, snapshot(m))
    # io_stat counts failed bios, not requests refused before they reach the device.
    assert m.read_attr("io_stat").split()[:2] == ["0", "0"]
    assert "Traceback" not in m.log.read_text(errors="replace")


def test_uninitialised_device_requests(loaded: Mount) -> None:
    m = loaded
    before = snapshot(m)
    with opened(m.image(1)) as fd:
        assert os.fstat(fd).st_size == 0
        assert os.pread(fd, PAGE, 0) == b""
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x" * PAGE, 0)
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", 12345)
        expect_errno(errno.EFBIG, fallocate, fd, 0, 0, PAGE)
        os.ftruncate(fd, 0)  # its size already
        expect_errno(errno.EPERM, os.ftruncate, fd, PAGE)
        # the device stays uninitialised and can still be set up afterwards
    assert not snapshot_diff(before, snapshot(m))
    assert m.read_attr("initstate", dev=1) == "0\n"


def test_o_trunc_open_of_the_image_is_ignored_like_a_block_device(loaded: Mount) -> None:
    """`dd of=/dev/zram0` (no conv=notrunc) and `cat x > /dev/zram0` open with O_TRUNC, which a
    block device ignores; zram scripts do both.  With zramfs the open must succeed and leave
    the rest of the device intact (docs/design.md, "Errors": truncation to another *size* is
    refused; an O_TRUNC open is not a request to resize a block image)."""
    m = loaded
    with opened(m.image(0), os.O_RDONLY) as fd:
        tail = os.pread(fd, PAGE, 2 * MiB)
    res = subprocess.run(
        ["dd", "if=/dev/zero", f"of={m.image(0)}", "bs=4k", "count=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    with opened(m.image(0), os.O_RDONLY) as fd:
        assert os.pread(fd, PAGE, 0) == bytes(PAGE)
        assert os.pread(fd, PAGE, 2 * MiB) == tail
    assert os.stat(m.image(0)).st_size == 4 * MiB


# ---- access ---------------------------------------------------------------------------------
NOBODY = 65534


def as_nobody(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python code as uid/gid 65534 (nobody) in a child process started in ``cwd`` (the
    chdir happens as root, so the test's private temp dirs need not be opened to others).
    A system interpreter: ours may live under /root, which nobody cannot search."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return subprocess.run(
        [python, "-I", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


_PROBE = r"""
import errno, json, os, sys
def try_(fn):
    try:
        fn(); return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def read(p):
    with open(p, "rb") as f: f.read()
def write(p):
    fd = os.open(p, os.O_WRONLY)
    try: os.write(fd, b"1")
    finally: os.close(fd)
mnt = sys.argv[1]
out = {"stat_root": try_(lambda: os.stat(mnt)),
       "listdir": try_(lambda: os.listdir(mnt)),
       "mkdir": try_(lambda: os.mkdir(os.path.join(mnt, "x"))),
       "create": try_(lambda: os.close(os.open(os.path.join(mnt, "sys/block/zram0/x"),
                                               os.O_CREAT | os.O_WRONLY, 0o644)))}
for name in sys.argv[2:]:
    p = os.path.join(mnt, name)
    out["read " + name] = try_(lambda: read(p))
    out["write " + name] = try_(lambda: write(p))
print(json.dumps(out))
"""

_FILES = (
    "sys/block/zram0/mm_stat",
    "sys/block/zram0/initstate",
    "sys/block/zram0/disksize",
    "sys/block/zram0/reset",
    "sys/block/zram0/mem_limit",
    "sys/class/zram-control/hot_add",
    "sys/class/zram-control/hot_remove",
    "proc/sys/vm/compact_memory",
    "proc/vmstat",
    "proc/lock_stat",
    "sys/module/zramfs/parameters/compact_enabled",
    "dev/zram0",
)


def _probe(m: Mount) -> dict[str, str]:
    import json

    res = as_nobody(_PROBE, m.path.parent, m.path.name, *_FILES)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_private_mount_denies_other_users(zmount) -> None:
    require_fuse()
    m = zmount("--size", "1M")
    before = snapshot(m)
    got = _probe(m)
    assert got["stat_root"] == "EACCES", got  # FUSE without allow_other
    assert all(v == "EACCES" for v in got.values()), got
    assert not snapshot_diff(before, snapshot(m))


def test_allow_other_keeps_the_kernel_modes(zmount) -> None:
    require_fuse()
    m = zmount("--size", "1M", "--allow-other")
    before = snapshot(m)
    got = _probe(m)
    assert got["stat_root"] == "OK" and got["listdir"] == "OK", got
    assert got["mkdir"] == "EACCES" and got["create"] == "EACCES", got
    for name in _FILES:
        mode = mode_of(m.path / name)
        # 0444 files are readable by anyone; every write, and reads of 0400/0600/0200 files,
        # need the owner (root).
        want_read = "OK" if mode & 0o004 else "EACCES"
        assert got["read " + name] == want_read, (name, oct(mode), got)
        assert got["write " + name] == "EACCES", (name, oct(mode), got)
    # nobody's reads did not create a device (hot_add is 0400) or change anything
    assert not snapshot_diff(before, snapshot(m))
