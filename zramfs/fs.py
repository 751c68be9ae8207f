"""The FUSE front end: fusepy-API `Operations` over `zramfs.tree` (no zram logic here).

Owns the FUSE side of a mount: which binding is used, the mount options, open-file handles
(open/release counting on the images), the image data path (read/write/fallocate/fsync
forwarded to the image, a `zramfs.image.BlockImage`: a `ZramDevice`, or the null backend's
`MemoryImage`, with block-device answers past the end), per-read generation of control-file
contents, and the errno mapping (every OSError's errno goes to the caller).

Binding: ``mfusepy`` (the dependency: maintained, libfuse 2 and 3, has ``fallocate``) is
preferred; plain ``fusepy`` 3.0.1 (the ``zramfs[fusepy]`` extra) works as a fallback but has
no ``fallocate`` callback, so loop discards and ``fallocate(PUNCH_HOLE)`` answer EOPNOTSUPP
there.  ``BINDING`` says which one was loaded; with neither usable, importing this module
raises ImportError saying what each attempt found.

FUSE choices (see `mount_options`):
- ``direct_io`` per open (``raw_fi``; ``fi.direct_io = 1``) for control files — their size is
  unknown, content is generated on each read at offset 0 — and for the image, so reads and
  writes reach the device instead of a page-cache copy (O_DIRECT works too, at any alignment).
  Loop over a direct_io FUSE file (libfuse #56 reports a hang on kernel 4.4) was tested on
  Linux 6.18 with libfuse 2.9.9 and 3.14, loop ``--direct-io=off`` and ``=on``: mkfs.ext4,
  mount, fsck, fstrim, mkswap/swapon/swapoff, fio libaio iodepth 32 with verify, and swap
  under a memory-limited cgroup all work.  What makes it safe: the server is another process,
  multithreaded, and not in the memory-pressured cgroup.  Under *global* memory pressure the
  daemon's own pages could be reclaimed to the device it serves: ``zramfs mount --mlock`` pins
  the daemon and its arena (mlockall with MCL_ONFAULT; the arena is then a memfd whose freed
  frames are hole-punched, as MADV_DONTNEED fails on locked memory) and sets PR_SET_IO_FLUSHER
  (its allocations do not recurse into I/O).  Still not guaranteed: the kernel's own
  allocations for FUSE requests and the loop device, and the daemon's new allocations under
  global pressure; the tested path remains a cgroup-confined experiment
  (scripts/swap_experiment.sh).  The cost of direct_io: no shared writable mmap (ENODEV);
  ``image_cache=True`` serves the image through the page cache instead (LTP zram03's
  MAP_SHARED fill works there).
- ``getxattr``/``setxattr``/``listxattr``/``removexattr`` are left unregistered: libfuse answers
  ENOSYS, the kernel sets ``no_getxattr`` and stops sending a GETXATTR before every WRITE.
- ``max_write``/``max_read`` 128 KiB (+ ``big_writes`` on libfuse 2, where it exists; on
  libfuse 3 ``max_write`` goes into the connection info at init).  libfuse 2 is what mfusepy
  loads by default; ``FUSE_LIBRARY_NAME=fuse3`` selects libfuse 3, which works too.
- ``attr_timeout=0``/``entry_timeout=0``/``negative_timeout=0``: disksize and hot_add change
  sizes and directory contents behind the kernel's back, so nothing may be cached.
- multithreaded loop: lz4/zstd release the GIL, and a loop device or fio issue parallel I/O.
- ``FUSE_CAP_ATOMIC_O_TRUNC``, asked for in ``init_with_config`` (libfuse 3's default; libfuse
  2 would otherwise need its ``atomic_o_trunc`` option): O_TRUNC comes in open()'s flags
  instead of as a separate truncate to 0, and open() ignores it — a block device ignores
  O_TRUNC (``dd of=MNT/dev/zram0``, ``cat x > MNT/dev/zram0``) and so does sysfs (``echo 1 >
  reset``); truncate(2) to another size stays EPERM.  (fusepy has no init conn: there an
  O_TRUNC open of an initialised image fails with EPERM.)
- exit: ``request_exit`` does what libfuse's SIGTERM handler does (fuse_exit), from any
  thread; zramfs.cli decides when (it refuses while a loop device uses the image).
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from zramfs.fusethreads import pinning_fuse
from zramfs.image import BlockImage
from zramfs.tree import ImageTree, Kind, Node

log = logging.getLogger(__name__)


#: binding name → the module it is imported as (fusepy's module is called ``fuse``)
_BINDING_MODULES = {"mfusepy": "mfusepy", "fusepy": "fuse"}
#: what this module uses of a binding: a module without them is not a fusepy-API binding
#: (python-fuse, for one, is also imported as ``fuse``)
_BINDING_API = ("FUSE", "Operations", "FuseOSError")


def _load_binding() -> tuple[ModuleType, str]:
    """mfusepy, else fusepy; ``ZRAMFS_FUSE_BINDING=fusepy`` forces the fallback (to test it).
    mfusepy raises OSError (not ImportError) when libfuse itself is missing."""
    order = ["mfusepy", "fusepy"]
    if os.environ.get("ZRAMFS_FUSE_BINDING") == "fusepy":
        order.reverse()
    errors = []
    for name in order:
        try:
            module = importlib.import_module(_BINDING_MODULES[name])
        except (ImportError, OSError) as exc:
            errors.append(f"{name}: {exc}")
            continue
        missing = [attr for attr in _BINDING_API if not hasattr(module, attr)]
        if missing:
            errors.append(
                f"{name}: module {module.__name__!r} ({module.__file__}) is not it "
                f"(no {', '.join(missing)})"
            )
            continue
        return module, name
    raise ImportError(
        "no usable FUSE binding (" + "; ".join(errors) + "); install mfusepy "
        "(pip install mfusepy) and libfuse 2 or 3 (apt-get install libfuse2 "
        "fuse3), or fusepy as the fallback (pip install 'zramfs[fusepy]')"
    )


_fuse, BINDING = _load_binding()
# fusepy 3.0.1 has no fallocate callback: loop discards and fallocate() get EOPNOTSUPP there.
SUPPORTS_FALLOCATE: bool = hasattr(_fuse.FUSE, "fallocate")

FuseOSError = _fuse.FuseOSError
FUSE_MAJOR: int = int(getattr(_fuse, "fuse_version_major", 2))

FUSE_CAP_ATOMIC_O_TRUNC = 1 << 3  # fuse_common.h (libfuse 2 and 3)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
MAX_IO = 128 * 1024


def _poke(path: str) -> None:
    """One request to the mount (a getattr: attr_timeout is 0), whatever its outcome."""
    try:
        os.stat(path)
    except OSError:
        pass


def _errno_of(exc: BaseException) -> int:
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


@dataclass
class Handle:
    """One open file.  Control files keep the content generated by the latest read at 0."""

    node: Node
    device: BlockImage | None = None  # set for an image handle (opened: counted)
    content: bytes | None = None
    lock_: threading.Lock = field(default_factory=threading.Lock)


class ZramFS(_fuse.Operations):  # type: ignore[name-defined]
    """Operations over an `ImageTree` (the full zram `Tree`, or the null backend's images only).

    Attribute names must not collide with FUSE operation names (``lock``, ``flush``…): the
    binding registers any truthy attribute of that name as a callback.
    """

    use_ns = True

    # Unregistered on purpose (see module docstring).  None also keeps these out of fusepy.
    getxattr = None
    setxattr = None
    listxattr = None
    removexattr = None
    lock = None
    flock = None
    ioctl = None
    bmap = None
    poll = None
    read_buf = None
    write_buf = None
    opendir = None
    releasedir = None
    fsyncdir = None

    def __init__(
        self,
        tree: ImageTree,
        *,
        image_cache: bool = False,
        on_init: Callable[[], None] | None = None,
        on_destroy: Callable[[], None] | None = None,
        on_image_open: Callable[[], None] | None = None,
    ) -> None:
        self.tree = tree
        self.image_cache = image_cache
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._on_image_open = on_image_open
        self._handles: dict[int, Handle] = {}
        self._handles_guard = threading.Lock()
        self._next_fh = itertools.count(1)
        self._mount_time_ns = time.time_ns()
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._session: ctypes.c_void_p | None = None
        self._exit_requested = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def init(self, path: str) -> None:
        """fusepy's hook (mfusepy calls init_with_config instead)."""
        # The session handle, for request_exit(): fuse_get_context() is only valid inside a
        # callback, and init runs inside one.
        try:
            self._session = ctypes.c_void_p(_fuse._libfuse.fuse_get_context().contents.fuse)
        except Exception:  # noqa: BLE001 - a binding without it: request_exit falls back
            self._session = None
        if self._on_init is not None:
            self._on_init()
        if self._exit_requested:
            self.request_exit(None)

    def request_exit(self, mountpoint: str | None) -> None:
        """End the FUSE loop from any thread, as libfuse's SIGTERM handler does (fuse_exit).

        libfuse looks at the exit flag between requests, so one request is sent to wake a
        worker (its answer does not matter; the loop then returns and libfuse unmounts).
        Before init there is no session yet: the exit happens as soon as init runs.
        """
        self._exit_requested = True
        session = self._session
        if session is None:
            return
        _fuse._libfuse.fuse_exit(session)
        if mountpoint is not None:
            threading.Thread(
                target=_poke, args=(mountpoint,), name="zramfs-exit", daemon=True
            ).start()

    def init_with_config(self, conn: Any, config: Any) -> None:
        """mfusepy's hook: libfuse 3 takes max_write here (it is no mount option there), and
        both libfuse versions negotiate FUSE_CAP_ATOMIC_O_TRUNC here (see module docstring)."""
        if conn is not None:
            if FUSE_MAJOR >= 3:
                conn.max_write = MAX_IO
                conn.max_read = MAX_IO  # must equal the max_read mount option (3.14 checks)
            if conn.capable & FUSE_CAP_ATOMIC_O_TRUNC:
                conn.want |= FUSE_CAP_ATOMIC_O_TRUNC
        self.init("/")

    def destroy(self, path: str) -> None:
        if self._on_destroy is not None:
            self._on_destroy()

    # ---- helpers -------------------------------------------------------------------------
    def _node(self, path: str) -> Node:
        try:
            return self.tree.lookup(path)
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None

    @staticmethod
    def _caller_is_root() -> bool:
        """Whether the process behind the current request is root (CAP_DAC_OVERRIDE for the
        procfs open rule).  Only meaningful inside a FUSE callback."""
        try:
            return _fuse.fuse_get_context()[0] == 0
        except Exception:  # noqa: BLE001 - no request context (direct calls in tests)
            return os.geteuid() == 0

    def _handle(self, fh: Any) -> Handle:
        try:
            key = fh.fh  # raw_fi: the fuse_file_info
        except AttributeError:
            key = int(fh)
        try:
            return self._handles[key]
        except KeyError:
            raise FuseOSError(errno.EBADF) from None

    # ---- metadata ------------------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        node = self._node(path)
        t = self._mount_time_ns
        st: dict[str, Any] = {
            "st_mode": node.st_mode,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": t,
            "st_mtime": t,
            "st_ctime": t,
            "st_blksize": 4096,
        }
        if node.is_dir:
            st["st_nlink"] = 2
            return st
        st["st_nlink"] = 1
        if node.kind is Kind.IMAGE:
            assert node.dev_id is not None
            try:
                st["st_size"] = self.tree.image_size(node.dev_id)
                st["st_blocks"] = self.tree.image_bytes_used(node.dev_id) // 512
            except OSError as exc:
                raise FuseOSError(_errno_of(exc)) from None
        else:
            # sysfs reports PAGE_SIZE for attributes, procfs 0; with direct_io either works.
            st["st_size"] = 4096 if node.path.startswith("/sys/") else 0
        return st

    def readdir(self, path: str, fh: Any) -> list[str]:
        try:
            return [".", "..", *self.tree.listdir(path)]
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None

    def statfs(self, path: str) -> dict[str, int]:
        total = 0
        used = 0
        for dev_id in self.tree.image_ids():
            try:
                total += self.tree.image_size(dev_id)
                used += self.tree.image_bytes_used(dev_id)
            except OSError:
                continue
        blocks = total // 4096
        free = max(blocks - used // 4096, 0)
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": free,
            "f_bavail": free,
            "f_namemax": 255,
        }

    def access(self, path: str, amode: int) -> int:
        # What access(2) gives root on sysfs: read/write pass (DAC override; open() applies
        # the sysfs rule), execute needs an x bit, which only directories have.
        node = self._node(path)
        if amode & os.X_OK and not node.is_dir:
            raise FuseOSError(errno.EACCES)
        return 0

    # The tree is fixed: answer what a sysfs/procfs user would see.
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        parent = os.path.dirname(path) or "/"
        self._node(parent)
        try:
            self.tree.lookup(path)
        except OSError:
            raise FuseOSError(errno.EACCES) from None  # vfs_create without ->create
        raise FuseOSError(errno.EEXIST)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise FuseOSError(errno.EPERM)

    def mkdir(self, path: str, mode: int) -> int:
        raise FuseOSError(errno.EPERM)  # kernfs_iop_mkdir

    def rmdir(self, path: str) -> int:
        raise FuseOSError(errno.EPERM)

    def unlink(self, path: str) -> int:
        self._node(path)
        raise FuseOSError(errno.EPERM)

    def rename(self, old: str, new: str) -> int:
        self._node(old)
        raise FuseOSError(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EPERM)

    def readlink(self, path: str) -> str:
        raise FuseOSError(errno.EINVAL)

    def chmod(self, path: str, mode: int) -> int:
        self._node(path)
        raise FuseOSError(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._node(path)
        raise FuseOSError(errno.EPERM)

    def utimens(self, path: str, times: Any = None) -> int:
        self._node(path)  # `touch` works on sysfs; times not kept
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        node = self._node(path)
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        if node.kind is Kind.IMAGE:
            assert node.dev_id is not None
            if length != self.tree.image_size(node.dev_id):
                raise FuseOSError(errno.EPERM)  # a block image has a fixed size
            return 0
        # `echo 1 > attr` opens with O_TRUNC: sysfs accepts and ignores the size change.
        return 0

    # ---- open / release ------------------------------------------------------------------
    def open(self, path: str, fi: Any) -> int:
        node = self._node(path)
        acc = fi.flags & os.O_ACCMODE
        read = acc in (os.O_RDONLY, os.O_RDWR)
        write = acc in (os.O_WRONLY, os.O_RDWR)
        try:
            self.tree.check_open(node, read=read, write=write, privileged=self._caller_is_root())
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None
        handle = Handle(node)
        if node.kind is Kind.IMAGE:
            assert node.dev_id is not None
            try:
                dev = self.tree.device(node.dev_id)
                dev.open()
            except OSError as exc:
                raise FuseOSError(_errno_of(exc)) from None
            handle.device = dev
            fi.direct_io = 0 if self.image_cache else 1
            fi.keep_cache = 0
            if self._on_image_open is not None:
                self._on_image_open()  # losetup may be about to attach it (zramfs.loopdev)
        else:
            fi.direct_io = 1
        with self._handles_guard:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        fi.fh = fh
        return 0

    def release(self, path: str, fh: Any) -> int:
        key = fh.fh if hasattr(fh, "fh") else int(fh)
        with self._handles_guard:
            handle = self._handles.pop(key, None)
        if handle is not None and handle.device is not None:
            handle.device.close()
        return 0

    def flush(self, path: str, fh: Any) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        # Data lives in the pool as soon as write() returns; the device only counts the flush
        # (the block layer's flush ios in `stat`), as zram does for REQ_PREFLUSH.
        handle = self._handle(fh)
        if handle.device is not None:
            handle.device.flush()
        return 0

    # ---- data ----------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        handle = self._handle(fh)
        dev = handle.device  # set for image handles only
        try:
            if dev is not None:
                end = dev.disksize
                if offset >= end or size <= 0:
                    return b""  # at/after the end: EOF, like a block dev
                return dev.read(offset, size if offset + size <= end else end - offset)
            node = handle.node
            with handle.lock_:
                # Fresh content per read at offset 0 (cat, re-read after lseek), cached for
                # the continuation reads of the same open file.
                if offset == 0 or handle.content is None:
                    handle.content = self.tree.read_file(node)
                return handle.content[offset : offset + size]
        except FuseOSError:
            raise
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        handle = self._handle(fh)
        dev = handle.device  # set for image handles only
        try:
            if dev is not None:
                end = dev.disksize
                if offset >= end:
                    raise FuseOSError(errno.ENOSPC)  # blkdev_write_iter past the end
                if offset + len(data) > end:
                    data = data[: end - offset]  # short write up to the end
                dev.write(offset, data)
                return len(data)
            return self.tree.write_file(handle.node, data, offset)
        except FuseOSError:
            raise
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None

    def fallocate(self, path: str, mode: int, offset: int, length: int, fh: Any) -> int:
        handle = self._handle(fh)
        if handle.node.kind is not Kind.IMAGE:
            raise FuseOSError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise FuseOSError(errno.EINVAL)
        known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        if mode & ~known or (mode & FALLOC_FL_PUNCH_HOLE and mode & FALLOC_FL_ZERO_RANGE):
            raise FuseOSError(errno.EOPNOTSUPP)
        if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise FuseOSError(errno.EOPNOTSUPP)  # the VFS rule for PUNCH_HOLE
        dev = handle.device
        assert dev is not None  # an image handle has its image
        end = dev.disksize
        if offset + length > end:
            if not mode & FALLOC_FL_KEEP_SIZE:
                raise FuseOSError(errno.EFBIG)  # the image cannot grow
            length = max(end - offset, 0)  # KEEP_SIZE: only the part inside
        if length == 0:
            return 0
        try:
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                # File semantics: whole blocks freed, partial edges read back zeros.  ZERO_RANGE
                # would keep the blocks allocated on a disk file; a RAM image has nothing to
                # keep, so zeroing is punching (zram's REQ_OP_WRITE_ZEROES is a discard too).
                dev.punch_hole(offset, length)
            # mode 0 (preallocate) inside the image: every block is already addressable.
        except OSError as exc:
            raise FuseOSError(_errno_of(exc)) from None
        return 0


def mount_options(*, allow_other: bool = False, fsname: str = "zramfs") -> dict[str, Any]:
    """Keyword options for ``FUSE(...)`` (see the module docstring for why)."""
    opts: dict[str, Any] = {
        "fsname": fsname,
        "subtype": "zramfs",
        "max_read": MAX_IO,
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
    }
    if FUSE_MAJOR == 2:
        # libfuse 3 rejects both as mount options: big_writes is always on there, and
        # max_write is set in init_with_config.
        opts["big_writes"] = True
        opts["max_write"] = MAX_IO
    if allow_other:
        opts["allow_other"] = True
        opts["default_permissions"] = True  # then the kernel enforces the modes per user
    return opts


def serve(
    ops: ZramFS, mountpoint: str, *, allow_other: bool = False, fsname: str = "zramfs"
) -> None:
    """Mount and serve until unmounted or ``ops.request_exit`` (zramfs.cli calls it on
    SIGINT/SIGTERM/SIGHUP unless a loop device uses the image; libfuse then unmounts).
    Blocks; raises RuntimeError if libfuse fails to mount."""
    # Every callback keeps its libfuse worker's Python thread state (and so its thread-locals:
    # codec buffers, the allocator's map area) instead of getting a fresh one per request.
    pinning_fuse(_fuse.FUSE)(
        ops,
        mountpoint,
        raw_fi=True,
        foreground=True,
        nothreads=False,
        **mount_options(allow_other=allow_other, fsname=fsname),
    )
