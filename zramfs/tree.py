"""The mirrored kernel tree of one mount: path → node, listing, file contents (docs/design.md,
"What the tree mirrors").

Owns the shape of the tree and what each non-image file reads and writes:

```
/dev/zram<N>                                image (data path: zramfs.device via zramfs.fs)
/sys/block/zram<N>/<attr>                   zramfs.attrs.DEVICE_ATTRS (+ block-layer `size`)
/sys/class/zram-control/hot_add             0400: reading creates a device, prints its id
/sys/class/zram-control/hot_remove          0200: write an id
/sys/kernel/debug/zsmalloc/zram<N>/classes  0444: the pool's class table (initialised devices)
/sys/kernel/debug/zram/zram<N>/block_state   0400: per-slot state (CONFIG_ZRAM_MEMORY_TRACKING)
/sys/module/zramfs/parameters/<name>        emulator knobs (zramfs.daemon.ModuleParameter)
/proc/sys/vm/compact_memory                 0200: write 1 → memory compaction
/proc/vmstat                                0444: migration/compaction counters
/proc/lock_stat                             0600: lock statistics; writing 0 clears them
```

The tree is fixed: nothing can be created, removed or renamed; devices come and go only
through hot_add / hot_remove (and `num_devices` at mount).  Permission rules follow sysfs with
``KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK`` and procfs sysctls: even root cannot open a 0200 file for
reading or a 0444 file for writing (EACCES).  A plain procfs file (``/proc/vmstat``) follows the
VFS instead: root's DAC override opens it for writing, and the write fails with EIO
(``pde_write`` without ``->proc_write``).  Errors are OSErrors carrying the kernel errno; zram
logic (parsing, validation, formats) stays in zramfs.attrs / zramfs.device, the kernel's text
parsers in zramfs.kparse.

`ImageTree` is the part every mount has: ``/``, ``/dev`` and the images (any `BlockImage`),
with no control file at all.  It is the whole tree of ``zramfs mount --backend null`` (one
`zramfs.image.MemoryImage` at ``/dev/zram0``: there is no zram device whose attributes,
pool or parameters could be shown), and the base of `Tree`, the full zram tree above.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import stat as statmod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from zramfs.daemon import ModuleParameter
from zramfs.image import BlockImage
from zramfs.kparse import proc_dointvec

if TYPE_CHECKING:
    from zramfs.device import Registry, ZramDevice

PAGE_SIZE = 4096
SECTOR_SHIFT = 9


class Kind(enum.Enum):
    DIR = "dir"
    IMAGE = "image"
    ATTR = "attr"  # a zram device attribute (zramfs.attrs)
    BLOCK_SIZE = "block_size"  # generic block-layer `size` (sectors), when attrs lacks it
    HOT_ADD = "hot_add"
    HOT_REMOVE = "hot_remove"
    CLASSES = "classes"
    BLOCK_STATE = "block_state"
    PARAM = "param"
    COMPACT_MEMORY = "compact_memory"
    VMSTAT = "vmstat"
    LOCK_STAT = "lock_stat"


@dataclass(frozen=True)
class Node:
    kind: Kind
    mode: int  # permission bits only (0o755, 0o444, ...)
    path: str
    dev_id: int | None = None
    name: str = ""  # attribute / parameter name

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def st_mode(self) -> int:
        return (statmod.S_IFDIR if self.is_dir else statmod.S_IFREG) | self.mode


def _enoent(path: str) -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)


_DEV_RE = re.compile(r"zram(0|[1-9][0-9]*)\Z")

# Fixed directories and the children that do not depend on devices.
_FIXED_DIRS: dict[str, tuple[str, ...]] = {
    "/": ("dev", "sys", "proc"),
    "/dev": (),
    "/sys": ("block", "class", "kernel", "module"),
    "/sys/block": (),
    "/sys/class": ("zram-control",),
    "/sys/class/zram-control": ("hot_add", "hot_remove"),
    "/sys/kernel": ("debug",),
    "/sys/kernel/debug": ("zram", "zsmalloc"),
    "/sys/kernel/debug/zram": (),
    "/sys/kernel/debug/zsmalloc": (),
    "/sys/module": ("zramfs",),
    "/sys/module/zramfs": ("parameters",),
    "/sys/module/zramfs/parameters": (),
    "/proc": ("sys", "vmstat", "lock_stat"),
    "/proc/sys": ("vm",),
    "/proc/sys/vm": ("compact_memory",),
}

_FIXED_FILES: dict[str, tuple[Kind, int]] = {
    "/sys/class/zram-control/hot_add": (Kind.HOT_ADD, 0o400),
    "/sys/class/zram-control/hot_remove": (Kind.HOT_REMOVE, 0o200),
    "/proc/sys/vm/compact_memory": (Kind.COMPACT_MEMORY, 0o200),
    "/proc/vmstat": (Kind.VMSTAT, 0o444),
    "/proc/lock_stat": (Kind.LOCK_STAT, 0o600),
}


#: procfs files without sysctl semantics: DAC rules (root may open them for writing), and a
#: write fails with EIO because they have no ->proc_write.
_PLAIN_PROCFS = frozenset({Kind.VMSTAT})
#: files whose writes go to a sysfs ->store (kernfs)
_SYSFS_STORES = frozenset({Kind.ATTR, Kind.HOT_REMOVE, Kind.PARAM})


#: The directories of an `ImageTree` and their children that do not depend on the images.
_IMAGE_DIRS: dict[str, tuple[str, ...]] = {"/": ("dev",), "/dev": ()}


class ImageTree:
    """The images of one mount at ``/dev/zram<N>``, and no control file (module docstring).

    Every method `zramfs.fs` calls on a tree is defined here; `Tree` adds the control files
    by overriding `lookup`, `_children`, `read_file` and `write_file`.
    """

    #: directory path → its children that do not depend on the images
    _dirs: ClassVar[Mapping[str, tuple[str, ...]]] = _IMAGE_DIRS

    def __init__(self, images: Mapping[int, BlockImage]) -> None:
        self._images: Mapping[int, BlockImage] = dict(images)

    # ---- images ----------------------------------------------------------------------------
    def images(self) -> Mapping[int, BlockImage]:
        """dev_id → image, as it is now (read anew on each call: `Tree`'s registry replaces
        its dict on hot_add / hot_remove)."""
        return self._images

    def image_ids(self) -> list[int]:
        return sorted(self.images())

    def device(self, dev_id: int) -> BlockImage:
        try:
            return self.images()[dev_id]
        except KeyError:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), f"zram{dev_id}") from None

    def _dev_from_name(self, name: str, path: str) -> int:
        m = _DEV_RE.match(name)
        if not m or int(m.group(1)) not in self.images():
            raise _enoent(path)
        return int(m.group(1))

    # ---- lookup ----------------------------------------------------------------------------
    @staticmethod
    def normalise(path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        path = re.sub("/+", "/", path)
        return path.rstrip("/") or "/"

    def lookup(self, path: str) -> Node:
        path = self.normalise(path)
        if path in self._dirs:
            return Node(Kind.DIR, 0o755, path)
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        if parent == "/dev":
            return self._image_node(path, name)
        raise self._missing(path, parent)

    def _image_node(self, path: str, name: str) -> Node:
        return Node(Kind.IMAGE, 0o660, path, self._dev_from_name(name, path))

    def _missing(self, path: str, parent: str) -> OSError:
        """The error for a path that names nothing: ENOTDIR for a path through a file
        ("/proc/vmstat/x"), as the VFS says; ENOENT otherwise."""
        if parent != "/" and not self.lookup(parent).is_dir:
            return OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return _enoent(path)

    def listdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return self._children(node.path)

    def _children(self, path: str) -> list[str]:
        """The entries of directory ``path`` (an existing one, normalised)."""
        if path == "/dev":
            return [f"zram{i}" for i in self.image_ids()]
        return list(self._dirs[path])

    # ---- permissions -----------------------------------------------------------------------
    @staticmethod
    def check_open(node: Node, *, read: bool, write: bool, privileged: bool = False) -> None:
        """The open rule of the file's kernel filesystem.

        sysfs (KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK) and sysctls (test_perm): the owner bits must
        allow the access, even for root.  A plain procfs file: generic_permission(), where
        ``privileged`` (the caller is root: CAP_DAC_OVERRIDE) opens it whatever its mode.
        """
        if node.is_dir:
            if write:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), node.path)
            return
        if privileged and node.kind in _PLAIN_PROCFS:
            return
        if (read and not node.mode & 0o400) or (write and not node.mode & 0o200):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), node.path)

    # ---- control files: an image tree has none ---------------------------------------------
    def read_file(self, node: Node) -> bytes:
        """The whole content of a non-image file, fresh (`zramfs.fs` calls it per read at
        offset 0).  Only a directory opened for reading gets here: EINVAL, as read(2) of one
        answers EISDIR in the VFS before any filesystem is asked."""
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), node.path)

    def write_file(self, node: Node, data: bytes, offset: int = 0) -> int:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), node.path)

    # ---- image metadata --------------------------------------------------------------------
    def image_size(self, dev_id: int) -> int:
        return int(self.device(dev_id).disksize)

    def image_bytes_used(self, dev_id: int) -> int:
        """Memory behind the image, for st_blocks and statfs.  A plain RAM image does not
        track its resident pages: it counts as wholly used, what it may come to."""
        return self.image_size(dev_id)


class Tree(ImageTree):
    """Resolve paths of one mount and produce/consume the contents of its control files."""

    _dirs = _FIXED_DIRS

    def __init__(self, registry: Registry, parameters: Iterable[ModuleParameter] = ()) -> None:
        # Imported here so that importing zramfs.tree (e.g. for the CLI's status) does not
        # need the whole device stack.
        from zramfs import attrs

        self.registry = registry
        self._attrs = attrs
        self.parameters: dict[str, ModuleParameter] = {p.name: p for p in parameters}

    # ---- devices ---------------------------------------------------------------------------
    def images(self) -> Mapping[int, ZramDevice]:
        return self.registry.devices

    def device(self, dev_id: int) -> ZramDevice:
        return cast("ZramDevice", super().device(dev_id))

    def _attr_table(self) -> Mapping[str, Any]:
        return self._attrs.DEVICE_ATTRS

    def _device_files(self) -> list[str]:
        names = list(self._attr_table())
        if "size" not in names:
            names.append("size")
        return names

    # ---- lookup ----------------------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        path = self.normalise(path)
        if path in self._dirs:
            return Node(Kind.DIR, 0o755, path)
        fixed = _FIXED_FILES.get(path)
        if fixed is not None:
            return Node(fixed[0], fixed[1], path)
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        if parent == "/dev":
            return self._image_node(path, name)
        if parent == "/sys/block":
            return Node(Kind.DIR, 0o755, path, self._dev_from_name(name, path))
        if parent == "/sys/kernel/debug/zram":  # zram_debugfs_register: every device
            return Node(Kind.DIR, 0o755, path, self._dev_from_name(name, path))
        if parent == "/sys/kernel/debug/zsmalloc":
            dev_id = self._dev_from_name(name, path)
            if not self._initialised(dev_id):  # the pool (and its debugfs dir) exists only
                raise _enoent(path)  # while the device is initialised
            return Node(Kind.DIR, 0o755, path, dev_id)
        if parent == "/sys/module/zramfs/parameters":
            param = self.parameters.get(name)
            if param is None:
                raise _enoent(path)
            return Node(Kind.PARAM, param.mode, path, name=name)
        grand, _, dev_name = parent.rpartition("/")
        if grand == "/sys/block":
            dev_id = self._dev_from_name(dev_name, path)
            attr = self._attr_table().get(name)
            if attr is not None:
                return Node(Kind.ATTR, int(attr.mode), path, dev_id, name)
            if name == "size":
                return Node(Kind.BLOCK_SIZE, 0o444, path, dev_id, name)
            raise _enoent(path)
        if grand == "/sys/kernel/debug/zsmalloc" and name == "classes":
            dev_id = self._dev_from_name(dev_name, path)
            if not self._initialised(dev_id):
                raise _enoent(path)
            return Node(Kind.CLASSES, 0o444, path, dev_id, name)
        if grand == "/sys/kernel/debug/zram" and name == "block_state":
            return Node(Kind.BLOCK_STATE, 0o400, path, self._dev_from_name(dev_name, path), name)
        raise self._missing(path, parent)

    def _initialised(self, dev_id: int) -> bool:
        dev = self.registry.devices.get(dev_id)
        return dev is not None and dev.pool is not None and dev.disksize > 0

    def _children(self, path: str) -> list[str]:
        if path in ("/sys/block", "/sys/kernel/debug/zram"):
            return [f"zram{i}" for i in self.image_ids()]
        if path == "/sys/kernel/debug/zsmalloc":
            return [f"zram{i}" for i in self.image_ids() if self._initialised(i)]
        if path == "/sys/module/zramfs/parameters":
            return list(self.parameters)
        if path.startswith("/sys/block/zram"):
            return self._device_files()
        if path.startswith("/sys/kernel/debug/zsmalloc/zram"):
            return ["classes"]
        if path.startswith("/sys/kernel/debug/zram/zram"):
            return ["block_state"]
        return super()._children(path)

    # ---- control-file contents -------------------------------------------------------------
    def read_file(self, node: Node) -> bytes:
        """Generate the whole content of a non-image file, fresh (called per read at offset 0)."""
        k = node.kind
        if k is Kind.ATTR:
            assert node.dev_id is not None
            return self._attrs.show(self.device(node.dev_id), node.name).encode()
        if k is Kind.BLOCK_SIZE:
            assert node.dev_id is not None
            return f"{self.device(node.dev_id).disksize >> SECTOR_SHIFT}\n".encode()
        if k is Kind.HOT_ADD:
            return self._attrs.hot_add_show(self.registry).encode()
        if k is Kind.CLASSES:
            assert node.dev_id is not None
            pool = self.device(node.dev_id).pool
            if pool is None:
                raise _enoent(node.path)
            return pool.classes_table().encode()
        if k is Kind.BLOCK_STATE:
            assert node.dev_id is not None
            return self._attrs.format_block_state(self.device(node.dev_id)).encode()
        if k is Kind.PARAM:
            return (self.parameters[node.name].get() + "\n").encode()
        if k is Kind.VMSTAT:
            return self.registry.memory.vmstat_text().encode()
        if k is Kind.LOCK_STAT:
            from allocator.locks import lock_stat_text

            return lock_stat_text().encode()
        return super().read_file(node)

    def write_file(self, node: Node, data: bytes, offset: int = 0) -> int:
        """One write(2) of ``data`` at file position ``offset`` to a control file; returns the
        bytes consumed.  sysfs stores the whole buffer on each call whatever the position."""
        k = node.kind
        if k is Kind.COMPACT_MEMORY:
            return self._write_compact_memory(data, offset)
        if k in _SYSFS_STORES:
            # kernfs_fop_write_iter() hands a sysfs store at most PAGE_SIZE bytes and returns
            # what the store consumed: a longer write(2) is a short write of PAGE_SIZE
            # (measured on 6.18: 5000 bytes to a module parameter -> 4096).
            data = data[:PAGE_SIZE]
        text = data.decode("utf-8", "surrogateescape")
        if k is Kind.ATTR:
            assert node.dev_id is not None
            self._attrs.store(self.device(node.dev_id), node.name, text)
        elif k is Kind.HOT_REMOVE:
            self._attrs.hot_remove_store(self.registry, text)
        elif k is Kind.PARAM:
            param = self.parameters[node.name]
            if param.set is None:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), node.path)
            param.set(text)
        elif k is Kind.LOCK_STAT:
            # lock_stat_write(): only a leading '0' clears; any other byte is accepted and ignored.
            if data[:1] == b"0":
                from allocator.locks import lock_stat_reset

                lock_stat_reset()
        elif k in _PLAIN_PROCFS:
            raise OSError(errno.EIO, os.strerror(errno.EIO), node.path)  # no ->proc_write
        else:
            return super().write_file(node, data, offset)
        return len(data)

    def _write_compact_memory(self, data: bytes, offset: int) -> int:
        """vm.compact_memory: sysctl_compaction_handler() = proc_dointvec, then only 1 is
        accepted (EINVAL otherwise) and compacts.

        With the default kernel.sysctl_writes_strict=1 a write at a non-zero position is
        ignored and reported as done (proc_first_pos_non_zero_ignore), which is also what
        the rest of a short write ("1 junk": 2 bytes consumed) meets when echo retries it.
        """
        if offset != 0:
            return len(data)
        value, consumed = proc_dointvec(data)
        if value != 1:
            raise OSError(errno.EINVAL, "compact_memory: only 1 is accepted")
        self.registry.memory.compact()
        return consumed

    # ---- image metadata --------------------------------------------------------------------
    def image_bytes_used(self, dev_id: int) -> int:
        """Memory the device really uses (its pool's pages), for st_blocks."""
        pool = self.device(dev_id).pool
        if pool is None:
            return 0
        try:
            return int(pool.total_pages) * PAGE_SIZE
        except Exception:  # noqa: BLE001 - pool being torn down by a concurrent reset
            return 0
