"""Block-device users of the image through a loop device (the project's primary usage):
mkfs.ext4 + mount + files + remount + verify + fsck, discard reaching the device, an
LTP/kselftest zram01-style fill with the mm_stat compression-ratio check, zram02-style swap on a
huge sparse device with a tiny mem_limit, and fio verify with the compaction daemon aggressive.

The loop device sits on a file served by another process (the zramfs daemon), with the image
opened FOPEN_DIRECT_IO; this works on current kernels (see zramfs/fs.py).  Everything is
unmounted / swapped off / detached by the fixture even when a test fails; every command has
a timeout so a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from support.mountutil import run

pytestmark = pytest.mark.fuse

MiB = 1 << 20


def need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def text_block(rng: random.Random, n: int) -> bytes:
    words = [b"compressed", b"memory", b"page", b"swap", b"zram", b"ext4", b"inode", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def make_files(root: Path, rng: random.Random) -> dict[str, str]:
    """A mix of compressible, incompressible and zero files; returns name → sha256."""
    sums = {}
    for i in range(12):
        kind = i % 3
        n = rng.randrange(1, 400_000)
        data = text_block(rng, n) if kind == 0 else rng.randbytes(n) if kind == 1 else bytes(n)
        (root / f"f{i}").write_bytes(data)
        sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
    return sums


def check_files(root: Path, sums: dict[str, str]) -> None:
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("loop_dio", ["off", "on"])
def test_ext4_on_loop_fsck_clean(zmount, tmp_path, loop_dio):
    need("losetup", "mkfs.ext4", "fsck.ext4")
    m = zmount("--size", "64M", "--algorithm", "lz4")
    loop = m.losetup(0, f"--direct-io={loop_dio}")
    run("mkfs.ext4", "-q", "-F", loop, timeout=120)
    fsdir = tmp_path / "fs"
    fsdir.mkdir()
    run("mount", loop, str(fsdir))
    rng = random.Random(loop_dio)
    try:
        sums = make_files(fsdir, rng)
        run("sync", timeout=60)
        # Drop the page cache of the loop device so the re-read really goes to zramfs.
        run("umount", str(fsdir))
        if shutil.which("blockdev"):
            run("blockdev", "--flushbufs", loop, check=False)
        run("mount", loop, str(fsdir))
        check_files(fsdir, sums)
        before = m.mm_stat()[0]
        for name in list(sums)[:6]:
            (fsdir / name).unlink()
        run("sync")
        if shutil.which("fstrim"):
            run("fstrim", str(fsdir), timeout=60, check=False)  # discard → punch hole
    finally:
        run("umount", str(fsdir))
    from zramfs.fs import SUPPORTS_FALLOCATE

    if shutil.which("fstrim") and SUPPORTS_FALLOCATE:
        assert m.mm_stat()[0] < before, "discard did not reach the device"
    res = run("fsck.ext4", "-fn", loop, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_fill_fs_compression_ratio(zmount, tmp_path):
    """zram01's check: fill a filesystem until ENOSPC (zeros, plus 1 KiB of random data at the
    start of every page as the 2023 kselftest variant does), then
    100 * written / mem_used_total must be >= 100."""
    need("losetup", "mkfs.ext4")
    m = zmount("--size", "24M", "--mem-limit", "24M", "--algorithm", "lz4")
    loop = m.losetup()
    run("mkfs.ext4", "-q", "-F", loop, timeout=120)
    fsdir = tmp_path / "fs"
    fsdir.mkdir()
    run("mount", loop, str(fsdir))
    written = 0
    rng = random.Random(5)
    try:
        page = bytearray(4096)
        with open(fsdir / "file", "wb", buffering=0) as f:
            while True:
                page[:1024] = rng.randbytes(1024)
                try:
                    f.write(bytes(page) * 16)
                except OSError:
                    break
                written += len(page) * 16
        run("sync", timeout=60)
    finally:
        run("umount", str(fsdir))
    assert written > 8 * MiB
    mem_used_total = m.mm_stat()[2]
    assert mem_used_total > 0
    ratio = 100 * written // mem_used_total
    assert ratio >= 100, f"compression ratio {ratio / 100:.2f}:1"


def test_devices_with_different_algorithms(zmount, tmp_path):
    """zram01's layout: one device per algorithm, configured through the attribute files in
    the kernel's order (comp_algorithm → disksize → mem_limit), each with its own ext4; files
    verified after a remount; every filesystem fsck-clean; every device compresses."""
    need("losetup", "mkfs.ext4", "fsck.ext4")
    from zramfs import codecs

    algorithms = [a for a in ("lz4", "zstd", "deflate", "lz4hc") if a in codecs.AVAILABLE][:3]
    m = zmount("--devices", str(len(algorithms)))
    loops = []
    for i, algorithm in enumerate(algorithms):
        m.write_attr("comp_algorithm", algorithm, dev=i)
        m.write_attr("disksize", "16M", dev=i)
        m.write_attr("mem_limit", "16M", dev=i)
        loops.append(m.losetup(i))
        run("mkfs.ext4", "-q", "-F", loops[i], timeout=120)
    rng = random.Random(11)
    sums = []
    for i, loop in enumerate(loops):
        d = tmp_path / f"fs{i}"
        d.mkdir()
        run("mount", loop, str(d))
        try:
            files = {}
            for j in range(6):
                data = text_block(rng, rng.randrange(50_000, 600_000))
                (d / f"t{j}").write_bytes(data)
                files[f"t{j}"] = hashlib.sha256(data).hexdigest()
            sums.append(files)
        finally:
            run("umount", str(d))
    for i, loop in enumerate(loops):
        d = tmp_path / f"fs{i}"
        run("mount", "-o", "ro", loop, str(d))
        try:
            check_files(d, sums[i])
        finally:
            run("umount", str(d))
        res = run("fsck.ext4", "-fn", loop, timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"[{algorithms[i]}]" in m.read_attr("comp_algorithm", dev=i)
        orig, compr, mem_used = m.mm_stat(i)[:3]
        assert orig > MiB and compr < orig / 2 and 0 < mem_used < orig, (algorithms[i], orig, compr)


def test_whole_device_through_loop_random_verify(zmount):
    """Write the whole device through a loop device (mixed compressible/random 256 KiB
    blocks), drop the loop's cache, read every byte back."""
    need("losetup", "blockdev")
    size = 24 * MiB
    m = zmount("--size", str(size), "--algorithm", "lz4")
    loop = m.losetup()
    rng = random.Random(13)
    step = 256 * 1024
    digests = []
    with open(loop, "r+b", buffering=0) as f:
        for _ in range(0, size, step):
            block = text_block(rng, step // 2) + rng.randbytes(step // 2)
            f.write(block)
            digests.append(hashlib.sha256(block).digest())
        os.fsync(f.fileno())
    run("blockdev", "--flushbufs", loop)
    with open(loop, "rb", buffering=0) as f:
        for i in range(size // step):
            assert hashlib.sha256(f.read(step)).digest() == digests[i], i
    assert m.mm_stat()[0] == size


KERNEL_STYLE_SCRIPT = r"""
set -eu
M=$1; FS=$2
ctl=$M/sys/class/zram-control
id=$(cat $ctl/hot_add)                       # lowest free id, as zram_load expects
sys=$M/sys/block/zram$id
[ "$(cat $sys/initstate)" = 0 ]
echo lz4 > $sys/comp_algorithm
echo 12M > $sys/disksize
echo 12M > $sys/mem_limit
if echo 1M > $sys/disksize 2>/dev/null; then echo "disksize changed twice"; exit 1; fi
grep -q '\[lz4\]' $sys/comp_algorithm
loop=$(losetup -f --show $M/dev/zram$id)
mkfs.ext4 -q -F $loop
mount $loop $FS
b=0
dd if=/dev/zero of=$FS/file bs=1024 oflag=append conv=notrunc status=none 2>/dev/null || true
b=$(( $(stat -c %s $FS/file) / 1024 ))
sync
umount $FS
mem_used_total=$(awk '{print $3}' $sys/mm_stat)
v=$((100 * 1024 * b / mem_used_total))
echo "filled=${b}K mem_used_total=$mem_used_total ratio=$v"
[ $b -gt 4096 ] && [ $v -ge 100 ]
losetup -d $loop
for i in $(seq 50); do echo 1 > $sys/reset 2>/dev/null && break; sleep 0.1; done
[ "$(cat $sys/initstate)" = 0 ]
echo $id > $ctl/hot_remove
[ ! -e $M/dev/zram$id ]
"""


def test_kernel_style_shell_script(zmount, tmp_path):
    """The zram_lib.sh sequence as a shell script with every path prefixed by MNT: hot_add,
    comp_algorithm, disksize (second write refused), mem_limit, mkfs, mount, fill with dd until
    ENOSPC, the mm_stat ratio, reset, hot_remove."""
    need("losetup", "mkfs.ext4", "dd", "awk")
    m = zmount()
    fsdir = tmp_path / "fs"
    fsdir.mkdir()
    res = run(
        "bash",
        "-c",
        KERNEL_STYLE_SCRIPT,
        "script",
        str(m.path),
        str(fsdir),
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ratio=" in res.stdout


def test_swap_on_sparse_device(zmount):
    """zram02's check: a huge device with a 1 MiB mem_limit can be made swap and activated
    (mkswap writes only the header page)."""
    need("losetup", "mkswap", "swapon", "swapoff")
    m = zmount("--size", "8G", "--mem-limit", "1M")
    loop = m.losetup()
    run("mkswap", loop)
    run("swapon", loop)
    try:
        swaps = Path("/proc/swaps").read_text()
        assert loop in swaps
    finally:
        run("swapoff", loop, timeout=120)
    mm = m.mm_stat()
    assert 0 < mm[0] <= 64 * 1024  # only the header was stored
    assert mm[3] == 1 * MiB  # mem_limit
    # The loop device holds the image open: reset and hot_remove are refused until detached.
    with pytest.raises(OSError) as info:
        m.write_attr("reset", "1")
    assert info.value.errno == errno.EBUSY
    run("losetup", "-d", loop)
    # A detach is deferred while someone (udev probing after swapoff) still has the loop
    # open, so the image may stay open for a moment.
    deadline = time.monotonic() + 10
    while True:
        try:
            m.write_attr("reset", "1")
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert m.read_attr("initstate") == "0\n"


def _fio(m, *extra: str, size: str = "24M", runtime_s: int = 0):
    need("fio")
    args = [
        "fio",
        "--name=verify",
        f"--filename={m.image()}",
        f"--size={size}",
        "--ioengine=psync",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--fallocate=none",
        "--output-format=json",
        "--buffer_compress_percentage=50",
        "--refill_buffers",
        "--randrepeat=0",
        *extra,
    ]
    if runtime_s:
        args += [f"--runtime={runtime_s}", "--time_based"]
    res = run(*args, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout[res.stdout.index("{") :])
    return report["jobs"][0]


def test_fio_verify_with_aggressive_compaction(zmount):
    m = zmount("--size", "32M", "--compact-interval", "10", "--compact-threshold", "1")
    job = _fio(m, "--rw=randwrite", "--bs=4k", "--direct=1")
    assert job["error"] == 0 and job["write"]["io_bytes"] == 24 * MiB
    assert job["read"]["io_bytes"] == 24 * MiB  # the verify pass
    # Overwrite with other sizes and compressibility: objects move between classes, leaving
    # sparse zspages for the daemon, which compacts while fio writes and verifies.
    job = _fio(
        m,
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--direct=1",
        "--buffer_compress_percentage=20",
        size="16M",
    )
    assert job["error"] == 0 and job["read"]["io_bytes"] == 16 * MiB
    # Quiesce the daemon (a scan in flight finishes within its interval) before comparing.
    m.set_param("compact_enabled", "N")
    time.sleep(0.3)
    runs = int(m.param("compact_runs"))
    freed = int(m.param("compact_pages_freed"))
    assert runs > 0, "the daemon never compacted"
    # What the daemon freed is what mm_stat reports as pages_compacted (nothing else compacts).
    assert m.mm_stat()[6] == freed


@pytest.mark.soak
def test_fio_verify_soak(zmount):
    m = zmount(
        "--size",
        "256M",
        "--compact-interval",
        "10",
        "--compact-threshold",
        "1",
        "--algorithm",
        "zstd",
    )
    for rw in ("write", "randwrite", "randrw"):
        job = _fio(m, f"--rw={rw}", "--bsrange=512-128k", "--direct=1", "--numjobs=1", size="200M")
        assert job["error"] == 0


@pytest.mark.soak
def test_whole_device_through_loop_verify_every_byte(zmount):
    need("losetup")
    size = 128 * MiB
    m = zmount("--size", str(size))
    loop = m.losetup()
    rng = random.Random(9)
    digests = []
    with open(loop, "r+b", buffering=0) as f:
        for _ in range(0, size, MiB):
            block = text_block(rng, MiB // 2) + rng.randbytes(MiB // 2)
            f.write(block)
            digests.append(hashlib.sha256(block).digest())
        os.fsync(f.fileno())
    if shutil.which("blockdev"):
        run("blockdev", "--flushbufs", loop, check=False)
    with open(loop, "rb", buffering=0) as f:
        for i in range(size // MiB):
            assert hashlib.sha256(f.read(MiB)).digest() == digests[i], i
