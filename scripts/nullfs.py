#!/usr/bin/env python3
"""nullfs: the ceiling of a Python FUSE block image on this machine.

    python3 scripts/nullfs.py MNT --size 1G [--foreground] [--mlock] [--image-cache]
                              [--binding mfusepy|fusepy]
    ...                          # MNT/dev/zram0 is a plain RAM image: no compression, no allocator
    zramfs umount MNT            # (or: fusermount -u MNT, umount MNT)

A short name for ``zramfs mount MNT --backend null --size SIZE``: zramfs's own FUSE front end
(binding, mount options, operations, thread-state pinning) over `zramfs.image.MemoryImage`, an
anonymous mmap, instead of a zram device.  Any benchmark (fio, dd, mkfs over losetup) pointed at
this mount and at a zramfs mount measures, in the difference, what zram's work costs — not what
FUSE and Python cost.  The tree holds MNT/dev/zram0 only (no sysfs or procfs files: there is no
zram device behind it).  The scripts that take ``BACKEND=nullfs`` (demo.sh, fs_demo.sh,
swap_experiment.sh) mount through here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zramfs.units import parse_size


def zramfs_argv(args: argparse.Namespace) -> list[str]:
    """The ``zramfs`` command line these options mean."""
    argv = ["mount", args.mountpoint, "--backend", "null", "--size", str(args.size)]
    if args.foreground:
        argv.append("--foreground")
    if args.image_cache:
        argv.append("--image-cache")
    if args.mlock:
        # mlockall only, as nullfs always did: PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE, which
        # root in a container may lack, and the baseline must mount wherever zramfs does.
        argv += ["--mlock", "--no-io-flusher"]
    return argv


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nullfs.py", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("mountpoint")
    ap.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("1G"),
        help="image size (K/M/G/T suffixes; default 1G)",
    )
    ap.add_argument("--foreground", "-f", action="store_true", help="do not daemonise")
    ap.add_argument(
        "--mlock",
        action="store_true",
        help="pin the daemon in RAM (zramfs mount --mlock --no-io-flusher; for swap on the image)",
    )
    ap.add_argument(
        "--image-cache",
        action="store_true",
        help="serve the image through the page cache (no direct_io), as zramfs's",
    )
    ap.add_argument(
        "--binding", choices=["mfusepy", "fusepy"], help="default: mfusepy, else fusepy"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # zramfs.fs reads the choice when it is imported (zramfs.cli imports it at mount time).
    if args.binding == "fusepy":
        os.environ["ZRAMFS_FUSE_BINDING"] = "fusepy"
    elif args.binding == "mfusepy":
        os.environ.pop("ZRAMFS_FUSE_BINDING", None)
    from zramfs.cli import main as zramfs_main

    return zramfs_main(zramfs_argv(args))


if __name__ == "__main__":
    sys.exit(main())
