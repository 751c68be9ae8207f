#!/usr/bin/env python3
"""nullfs: the ceiling of a Python FUSE block image on this machine.

    python3 scripts/nullfs.py MNT --size 1G [--foreground] [--mlock] [--binding mfusepy|fusepy]
    ...                          # MNT/dev/zram0 is a plain RAM image: no compression, no allocator
    fusermount -u MNT            # (or: umount MNT)

It serves one file, MNT/dev/zram0, with the same path shape, FUSE binding and mount options as
zramfs, so that any benchmark (fio, dd, mkfs over losetup) can be pointed at either mount and the
difference is what zram's work costs, not what FUSE and Python cost. The image is an anonymous
mmap (zero-filled, pages materialise on first write, like a bytearray that costs nothing until
used); reads copy a slice out, writes copy the request in: the least any fusepy-style device can do.

Options mirrored from zramfs's FUSE layer (zramfs/fs.py, `mount_options` and `ZramFS.open`;
tests/test_nullfs.py checks they stay equal): the binding (mfusepy preferred, fusepy fallback),
multithreaded loop, raw_fi with direct_io set per open (no page-cache copy, O_DIRECT works;
--image-cache turns it off, as zramfs's), max_read/max_write of 128 KiB (+ big_writes on
libfuse 2), attr/entry/negative timeouts 0, getxattr & co. unregistered (the kernel stops
asking for security.capability before every write), fallocate PUNCH_HOLE/ZERO_RANGE zeroing
(what a loop device sends for discards; fusepy 3.0.1 has no fallocate: EOPNOTSUPP there), and
one Python thread state kept per libfuse worker (zramfs.fusethreads: without it every callback
pays for a fresh thread state, and the ceiling would not be the same binding as zramfs's).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import mmap
import os
import stat
import sys
import threading
import time

try:
    from zramfs.fusethreads import pinning_fuse
except ImportError:  # run from a checkout without zramfs installed: it is one directory up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from zramfs.fusethreads import pinning_fuse

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
MAX_IO = 128 * 1024

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """memparse-like: 4096, 64K, 512M, 1G, 1GiB, 2T (binary multiples)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, suffix = (t[:-1], t[-1]) if t and t[-1] in SIZE_SUFFIXES else (t, "")
    try:
        value = int(num) * SIZE_SUFFIXES[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return (value + 4095) // 4096 * 4096  # page-aligned, as zram's disksize


def load_binding(prefer: str | None = None):
    """(module, name): mfusepy first (maintained, libfuse 2 and 3), then fusepy ("fuse")."""
    order = [prefer] if prefer else ["mfusepy", "fusepy"]
    errors = []
    for name in order:
        try:
            if name == "mfusepy":
                import mfusepy as mod
            else:
                import fuse as mod
            return mod, name
        except (ImportError, OSError) as exc:  # mfusepy raises OSError when libfuse is missing
            errors.append(f"{name}: {exc}")
    raise SystemExit("nullfs: no FUSE binding usable: " + "; ".join(errors))


def fuse_major(mod) -> int:
    return int(getattr(mod, "fuse_version_major", 2))  # fusepy only speaks libfuse 2


def make_operations(mod, size: int, image_cache: bool = False):
    FuseOSError = mod.FuseOSError

    class NullFS(mod.Operations):
        """/, /dev, /dev/zram0: an uncompressed RAM image."""

        use_ns = True
        # unregistered: libfuse answers ENOSYS and the kernel stops sending these
        getxattr = None
        listxattr = None
        setxattr = None
        removexattr = None

        def __init__(self) -> None:
            self.size = size
            self.image = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.open_count = 0
            self._count_lock = threading.Lock()  # only for open_count; data copies rely on the GIL
            now = time.time_ns()
            self.times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            self.uid, self.gid = os.getuid(), os.getgid()

        def init_with_config(self, conn, config):
            """mfusepy on libfuse 3: max_write is no mount option there, it is set here."""
            if conn is not None and fuse_major(mod) >= 3:
                conn.max_write = MAX_IO
                conn.max_read = MAX_IO  # must equal the max_read mount option (3.14 checks)

        # --- tree -------------------------------------------------------------------------
        def getattr(self, path, fh=None):
            if path in ("/", "/dev"):
                return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_uid=self.uid,
                            st_gid=self.gid, st_size=0, **self.times)
            if path == "/dev/zram0":
                return dict(st_mode=stat.S_IFREG | 0o660, st_nlink=1, st_uid=self.uid,
                            st_gid=self.gid, st_size=self.size, st_blksize=4096,
                            st_blocks=self.size // 512, **self.times)
            raise FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            if path == "/":
                return [".", "..", "dev"]
            if path == "/dev":
                return [".", "..", "zram0"]
            raise FuseOSError(errno.ENOTDIR if path == "/dev/zram0" else errno.ENOENT)

        def statfs(self, path):
            blocks = self.size // 4096
            return dict(f_bsize=4096, f_frsize=4096, f_blocks=blocks, f_bfree=0, f_bavail=0,
                        f_files=3, f_ffree=0, f_namemax=255)

        # --- the image --------------------------------------------------------------------
        def _check(self, path):
            if path != "/dev/zram0":
                raise FuseOSError(errno.EISDIR if path in ("/", "/dev") else errno.ENOENT)

        def open(self, path, fi):  # raw_fi: fi is the fuse_file_info
            self._check(path)
            with self._count_lock:
                self.open_count += 1
            fi.direct_io = 0 if image_cache else 1
            fi.keep_cache = 0
            fi.fh = 0
            return 0

        def release(self, path, fh):
            with self._count_lock:
                self.open_count -= 1
            return 0

        def read(self, path, length, offset, fh):
            if offset >= self.size:
                return b""
            return self.image[offset:min(offset + length, self.size)]

        def write(self, path, data, offset, fh):
            if offset >= self.size:
                raise FuseOSError(errno.ENOSPC)
            end = min(offset + len(data), self.size)
            self.image[offset:end] = data[:end - offset]
            return end - offset

        def truncate(self, path, length, fh=None):
            self._check(path)
            if length != self.size:  # a block image has a fixed size (O_TRUNC to the same is fine)
                raise FuseOSError(errno.EPERM)
            return 0

        def fallocate(self, path, mode, offset, length, fh):
            # loop sends PUNCH_HOLE|KEEP_SIZE for discard, ZERO_RANGE|KEEP_SIZE for write-zeroes
            if offset < 0 or length <= 0 or offset + length > self.size:
                raise FuseOSError(errno.EINVAL if offset < 0 or length <= 0 else errno.ENOSPC)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._zero(offset, offset + length)
                return 0
            if mode & ~FALLOC_FL_KEEP_SIZE:
                raise FuseOSError(errno.EOPNOTSUPP)
            return 0  # plain preallocation inside the image: nothing to do

        def _zero(self, start: int, end: int) -> None:
            """Zero [start, end): whole pages are dropped (MADV_DONTNEED: they read back as zeros
            and stop costing memory, as a discard does on zram), the partial edges are written."""
            first = (start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            last = end // mmap.PAGESIZE * mmap.PAGESIZE
            if first >= last:
                self.image[start:end] = bytes(end - start)
                return
            self.image[start:first] = bytes(first - start)
            self.image.madvise(mmap.MADV_DONTNEED, first, last - first)
            self.image[last:end] = bytes(end - last)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            return 0

        def utimens(self, path, times=None):
            return 0

        def chmod(self, path, mode):
            raise FuseOSError(errno.EPERM)

        def chown(self, path, uid, gid):
            raise FuseOSError(errno.EPERM)

        def unlink(self, path):
            raise FuseOSError(errno.EPERM)

        def rename(self, old, new):
            raise FuseOSError(errno.EPERM)

        def create(self, path, mode, fi=None):
            raise FuseOSError(errno.EPERM if path.startswith("/dev/") else errno.EACCES)

        def mkdir(self, path, mode):
            raise FuseOSError(errno.EPERM)

    return NullFS()


def mount_options(mod, fsname: str = "nullfs") -> dict:
    """The FUSE(...) keyword options, as zramfs.fs.mount_options() (fsname/subtype aside)."""
    opts = dict(
        fsname=fsname,
        subtype="nullfs",
        max_read=MAX_IO,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )
    if fuse_major(mod) == 2:
        # libfuse 3 rejects both as mount options: big_writes is always on there, and max_write
        # goes into the connection info in init_with_config (see NullFS)
        opts["big_writes"] = True
        opts["max_write"] = MAX_IO
    return opts


def mlockall() -> None:
    """Pin the daemon (swap over loop over FUSE must never need the daemon's pages swapped in)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    MCL_CURRENT, MCL_FUTURE = 1, 2
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        print(f"nullfs: mlockall failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nullfs.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"),
                    help="image size (K/M/G/T suffixes; default 1G)")
    ap.add_argument("--foreground", "-f", action="store_true", help="do not daemonize")
    ap.add_argument("--mlock", action="store_true", help="mlockall() the daemon (for swap)")
    ap.add_argument("--binding", choices=["mfusepy", "fusepy"], help="default: mfusepy, else fusepy")
    ap.add_argument("--image-cache", action="store_true",
                    help="serve the image through the page cache (no direct_io), as zramfs's")
    ap.add_argument("--debug", action="store_true", help="libfuse debug output (implies -f)")
    args = ap.parse_args(argv)

    mnt = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mnt):
        ap.error(f"{mnt}: not a directory")
    mod, name = load_binding(args.binding)
    ops = make_operations(mod, args.size, image_cache=args.image_cache)
    if args.mlock:
        mlockall()
    opts = mount_options(mod)
    if args.debug:
        opts["debug"] = True
    if args.foreground:
        print(f"nullfs: {mnt}/dev/zram0, {args.size} bytes, {name} on libfuse {fuse_major(mod)}",
              file=sys.stderr, flush=True)
    # multithreaded loop (nothreads=False), direct_io per open through raw_fi, and one thread
    # state kept per libfuse worker: as zramfs.fs.serve
    pinning_fuse(mod.FUSE)(ops, mnt, raw_fi=True, foreground=args.foreground or args.debug,
                           nothreads=False, **opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
