"""scripts/nullfs.py — ``zramfs mount --backend null``, zramfs's FUSE front end over an
uncompressed RAM image, the benchmark ceiling — and the ops scripts that run on it and on zramfs
(fs_demo.sh, swap_experiment.sh: smoke runs, small sizes).

The mount tests need /dev/fuse and root; they skip without them, except when ZRAMFS_REQUIRE_FUSE=1
(set by scripts/test.sh in CI), where a missing FUSE is a failure. Every mount is unmounted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.mountutil import is_mounted, require_fuse, start_mount

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "nullfs.py"
SIZE = 8 << 20


def _load_script():
    spec = importlib.util.spec_from_file_location("nullfs_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_command_is_a_null_backend_mount():
    """nullfs.py is a name for `zramfs mount --backend null`: its options map onto zramfs's."""
    ns = _load_script()
    args = ns.make_parser().parse_args(["/m", "--size", "1GiB", "-f", "--mlock", "--image-cache"])
    assert ns.zramfs_argv(args) == [
        "mount",
        "/m",
        "--backend",
        "null",
        "--size",
        str(1 << 30),
        "--foreground",
        "--image-cache",
        "--mlock",
        "--no-io-flusher",
    ]
    assert ns.make_parser().parse_args(["/m"]).size == 1 << 30  # the default
    for bad in ("", "x", "1Q", "-1"):
        with pytest.raises(SystemExit):
            ns.make_parser().parse_args(["/m", "--size", bad])


@pytest.fixture
def need_fuse() -> None:
    require_fuse()


@pytest.fixture
def nullfs_mount(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A foreground nullfs.py mount (tests/support/mountutil.py's `start_mount`, unmounted
    after); ``@pytest.mark.parametrize("nullfs_mount", [binding], indirect=True)`` picks the
    FUSE binding."""
    binding = getattr(request, "param", None)
    extra = ["--binding", binding] if binding else []
    m = start_mount(tmp_path, "--size", str(SIZE), *extra, program=(str(SCRIPT),))
    try:
        yield m.path
    finally:
        m.close()
    assert not is_mounted(m.path), "nullfs left mounted"


def _fstype(mnt: Path) -> str:
    target = os.fsencode(str(mnt))
    with open("/proc/mounts", "rb") as f:
        return next(line.split()[2].decode() for line in f if line.split()[1] == target)


@pytest.mark.fuse
def test_tree_and_size(nullfs_mount):
    mnt = nullfs_mount
    assert sorted(os.listdir(mnt)) == ["dev"]
    assert os.listdir(mnt / "dev") == ["zram0"]
    assert os.stat(mnt / "dev" / "zram0").st_size == SIZE
    assert _fstype(mnt) == "fuse.zramfs"  # zramfs's own front end serves it
    assert not (mnt / "sys").exists()  # no zram device: no sysfs files


def _fusepy_importable() -> bool:
    return importlib.util.find_spec("fuse") is not None


@pytest.mark.fuse
@pytest.mark.parametrize(
    "nullfs_mount",
    [
        "mfusepy",
        pytest.param(
            "fusepy",
            marks=pytest.mark.skipif(
                not _fusepy_importable(), reason="fusepy (the zramfs[fusepy] extra) not installed"
            ),
        ),
    ],
    indirect=True,
)
def test_pwrite_pread_round_trip(nullfs_mount):
    path = nullfs_mount / "dev" / "zram0"
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pread(fd, 4096, 0) == bytes(4096)  # a fresh image reads zeros
        data = os.urandom(300_000)  # > max_write: split requests
        assert os.pwrite(fd, data, 12_345) == len(data)  # unaligned offset
        assert os.pread(fd, len(data), 12_345) == data
        assert os.pread(fd, 10, 12_340) == bytes(5) + data[:5]
        last = b"end!" * 1024
        assert os.pwrite(fd, last, SIZE - 4096) == 4096  # the last block
        assert os.pread(fd, 8192, SIZE - 4096) == last  # short read at the end
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", SIZE)  # past the end
        assert exc.value.errno in (errno.ENOSPC, errno.EFBIG)
    finally:
        os.close(fd)
    # a second open sees the same bytes (the image lives in the daemon, not a page cache)
    with open(path, "rb") as f:
        f.seek(12_345)
        assert f.read(len(data)) == data


@pytest.mark.fuse
def test_o_direct_and_punch_hole(nullfs_mount):
    path = nullfs_mount / "dev" / "zram0"
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)  # direct_io: O_DIRECT must work
    try:
        import mmap

        buf = mmap.mmap(-1, 8192)  # page-aligned buffer
        buf.write(b"\xab" * 8192)
        assert os.pwritev(fd, [buf], 0) == 8192
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, what a loop device sends for discard
        if libc.fallocate(fd, 0x03, 4096, 4096) != 0:
            pytest.fail(f"fallocate: {os.strerror(ctypes.get_errno())}")
        got = os.pread(fd, 8192, 0)
        assert got == b"\xab" * 4096 + bytes(4096)
    finally:
        os.close(fd)


# ---- the ops scripts, end to end (each mounts its own device and must leave nothing behind) ------
def _system_state() -> tuple[str, str, str]:
    with open("/proc/mounts") as f:
        mounts = "".join(sorted(line for line in f if "zramfs-mnt." in line or "fs_demo." in line))
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    loops = "".join(sorted(line for line in loops.splitlines(True) if "zramfs-mnt." in line))
    with open("/proc/swaps") as f:
        swaps = "".join(line for line in f if "zramfs-mnt." in line or "/dev/loop" in line)
    return mounts, loops, swaps


def _need_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        if os.environ.get("ZRAMFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"missing tools in CI: {missing}")
        pytest.skip(f"missing: {missing}")


def _run_script(name: str, backend: str, env_extra: dict, record_dir: Path, timeout: int = 300):
    if backend == "zramfs":
        try:
            import zramfs.fs  # noqa: F401  (the mount needs the whole stack)
        except Exception as exc:
            pytest.skip(f"zramfs.fs not importable: {exc}")
    # the record and its plots go where pytest cleans up, not to a new /tmp/zramfs-record.*
    env = dict(os.environ, BACKEND=backend, RECORD_DIR=str(record_dir), **env_extra)
    before = _system_state()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"{name} (BACKEND={backend}) exited {proc.returncode}:\n{out[-4000:]}"
    )
    assert _system_state() == before, f"{name} left mounts/loops/swap behind:\n{_system_state()}"
    return out


@pytest.mark.fuse
@pytest.mark.parametrize("backend", ["nullfs", "zramfs"])
def test_fs_demo_script(need_fuse, backend, tmp_path):
    _need_tools("losetup", "mkfs.ext4", "sha256sum", "mountpoint")
    out = _run_script(
        "fs_demo.sh",
        backend,
        {"SIZE": "64M", "SRC": f"{REPO / 'allocator'} {REPO / 'zramfs'} {REPO / 'tests'}"},
        tmp_path / "record",
    )
    assert "match their sha256" in out
    if backend == "zramfs":
        assert "orig_data_size" in out


@pytest.mark.fuse
@pytest.mark.parametrize("backend", ["nullfs", "zramfs"])
def test_swap_experiment_script(need_fuse, backend, tmp_path):
    _need_tools("losetup", "mkswap", "swapon", "swapoff", "mountpoint", "numfmt")
    if not (
        os.path.isdir("/sys/fs/cgroup/memory")
        or os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        or os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers")
    ):
        pytest.skip("no cgroup filesystem")
    out = _run_script(
        "swap_experiment.sh",
        backend,
        {"SIZE": "128M", "LIMIT": "16M", "ALLOC": "48M"},
        tmp_path / "record",
    )
    assert "PASS:" in out and "0 bad" in out
