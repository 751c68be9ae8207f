"""Where a mount's operations reach the devices: the `--trace FILE` hook.

Owns `MountTracer`, which records into a `zramfs.trace_writer.TraceWriter` every operation that
reaches a device of one mount:

* the data path, as `zramfs.fs` calls it on a `ZramDevice`: `write` (with the data),
  `read`, `discard`, `punch_hole`, `zero_range`, `flush`;
* every write to a control file, by its path in the mount, as `zramfs.tree.Tree.write_file`
  receives it — disksize, comp_algorithm, algorithm_params, mem_limit, mem_used_max, reset,
  compact, idle, writeback*, recompress, backing_dev, hot_remove, the module parameters
  (compact_policy ...), /proc/sys/vm/compact_memory — and the reads of hot_add (a read
  creates a device); the stores `zramfs mount` makes before serving (`store`);
* the compactions the mount's daemon runs on its own (`BackgroundCompact`).

How: the tracer replaces those methods *on the instances* (the device objects, the tree, the
daemon) with wrappers that call the original and push a record.  Nothing in the device's
code tests for tracing, so a mount without `--trace` runs exactly the code it ran before
(zero cost, not a cheap check); hot_add's devices get their wrappers when they are created.

Order and concurrency (docs/trace-format.md, "Order"): a replay reproduces mm_stat exactly
only if the trace orders state-changing operations as they changed the allocator.  zram's
data path holds no device-wide lock (compression and zs_malloc run outside the slot lock,
per stripe), so no lock orders two concurrent writes' allocations; the tracer does not add
one.  Instead every state-changing operation takes a ticket when it starts and one, under
the tracer's lock, when it ends and is recorded: an operation whose two tickets are not
consecutive overlapped another one and is flagged `F_OVERLAP`.  A trace without flagged
records was made one state change at a time (e.g. fio with one job at iodepth 1, or any
QD1 swap), and its order is the allocator's order: replay is then exact.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .daemon import DEFAULT_POLICY
from .trace import (
    CTRL_READ,
    CTRL_WRITE,
    F_OVERLAP,
    NO_DEVICE,
    OP_DISCARD,
    OP_PUNCH_HOLE,
    OP_ZERO_RANGE,
    T_BGCOMPACT,
    T_CONTROL,
    T_DISCARD,
    T_FLUSH,
    T_READ,
    T_WRITE,
)
from .trace_writer import TraceWriter

if TYPE_CHECKING:
    from .daemon import CompactionDaemon
    from .device import Registry, ZramDevice
    from .tree import Node, Tree


def _errno_of(exc: BaseException) -> int:
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and 0 < code < 0xFFFF else errno.EIO


class MountTracer:
    """Record one mount's device operations into a trace file (see the module docstring)."""

    def __init__(self, writer: TraceWriter) -> None:
        self.writer = writer
        self._tick = itertools.count().__next__
        #: the writer's lock: a record's ticket and its place in the pipe are taken together
        self._lock = writer.lock
        #: per thread: inside a traced operation whose own calls are not operations
        self._inner = threading.local()

    # ---- attaching ----------------------------------------------------------------------
    def attach(
        self, registry: Registry, tree: Tree | None = None, daemon: CompactionDaemon | None = None
    ) -> None:
        """Wrap every device of `registry` (and those hot_add creates), the tree's control
        file writes and the daemon's compactions."""
        for dev in list(registry.devices.values()):
            self.attach_device(dev)
        orig_hot_add = registry.hot_add

        def hot_add() -> int:
            dev_id = orig_hot_add()
            self.attach_device(registry.devices[dev_id])
            return dev_id

        registry.hot_add = hot_add  # type: ignore[method-assign]
        if tree is not None:
            self.attach_tree(tree)
        if daemon is not None:
            self.attach_daemon(daemon)

    def _done(self, start: int, item: list[Any]) -> None:
        """Record a state-changing operation that took ticket `start`, flagging overlap."""
        with self._lock:
            if self._tick() != start + 1:
                item[3] = F_OVERLAP
            item[1] = self.writer.now()
            self.writer.push_locked(tuple(item))

    def attach_device(self, dev: ZramDevice) -> None:
        push, now, tick, done = self.writer.push, self.writer.now, self._tick, self._done
        lock, mono, t0 = self._lock, time.monotonic_ns, self.writer.t0
        push_write = self.writer.push_write_locked
        dev_id = dev.id
        orig_write, orig_read, orig_discard = dev.write, dev.read, dev.discard
        orig_punch, orig_zero, orig_flush = dev.punch_hole, dev.zero_range, dev.flush

        def write(offset: int, data: bytes | bytearray | memoryview) -> int:
            # The hot one (every swap-out, every fio write): `_done` inlined.
            if type(data) is not bytes:
                data = bytes(data)  # the caller may reuse its buffer after we return
            start = tick()
            try:
                n = orig_write(offset, data)
            except OSError as exc:
                done(start, [T_WRITE, 0, dev_id, 0, offset, data, _errno_of(exc)])
                raise
            with lock:
                push_write(
                    mono() - t0, dev_id, 0 if tick() == start + 1 else F_OVERLAP, offset, data
                )
            return n

        def read(offset: int, length: int) -> bytes:
            # A read changes no allocator state (only the slot's access time): no ticket.
            try:
                out = orig_read(offset, length)
            except OSError as exc:
                push((T_READ, now(), dev_id, 0, offset, length, _errno_of(exc)))
                raise
            push((T_READ, now(), dev_id, 0, offset, length, 0))
            return out

        inner = self._inner

        def ranged(op: int, orig: Callable[[int, int], None]) -> Callable[[int, int], None]:
            def call(offset: int, length: int) -> None:
                if getattr(inner, "busy", False):
                    return orig(offset, length)  # punch_hole's own discard: part of it
                start = tick()
                inner.busy = True
                try:
                    orig(offset, length)
                except OSError as exc:
                    done(start, [T_DISCARD, 0, dev_id, 0, op, offset, length, _errno_of(exc)])
                    raise
                finally:
                    inner.busy = False
                done(start, [T_DISCARD, 0, dev_id, 0, op, offset, length, 0])

            return call

        def flush() -> None:
            orig_flush()
            push((T_FLUSH, now(), dev_id, 0))

        dev.write = write  # type: ignore[method-assign]
        dev.read = read  # type: ignore[method-assign]
        dev.discard = ranged(OP_DISCARD, orig_discard)  # type: ignore[method-assign,assignment]
        dev.punch_hole = ranged(OP_PUNCH_HOLE, orig_punch)  # type: ignore[method-assign,assignment]
        dev.zero_range = ranged(OP_ZERO_RANGE, orig_zero)  # type: ignore[method-assign,assignment]
        dev.flush = flush  # type: ignore[method-assign]

    def attach_tree(self, tree: Tree) -> None:
        from .tree import Kind

        orig_write_file, orig_read_file = tree.write_file, tree.read_file

        def write_file(node: Node, data: bytes, offset: int = 0) -> int:
            start = self._tick()
            try:
                n = orig_write_file(node, data, offset)
            except OSError as exc:
                self._done(
                    start,
                    [
                        T_CONTROL,
                        0,
                        NO_DEVICE,
                        0,
                        CTRL_WRITE,
                        node.path,
                        bytes(data),
                        offset,
                        _errno_of(exc),
                    ],
                )
                raise
            self._done(
                start, [T_CONTROL, 0, NO_DEVICE, 0, CTRL_WRITE, node.path, bytes(data), offset, 0]
            )
            return n

        def read_file(node: Node) -> bytes:
            if node.kind is not Kind.HOT_ADD:  # only hot_add's read changes anything
                return orig_read_file(node)
            start = self._tick()
            try:
                out = orig_read_file(node)
            except OSError as exc:
                self._done(
                    start,
                    [T_CONTROL, 0, NO_DEVICE, 0, CTRL_READ, node.path, b"", 0, _errno_of(exc)],
                )
                raise
            self._done(start, [T_CONTROL, 0, NO_DEVICE, 0, CTRL_READ, node.path, out, 0, 0])
            return out

        tree.write_file = write_file  # type: ignore[method-assign]
        tree.read_file = read_file  # type: ignore[method-assign]

    def attach_daemon(self, daemon: CompactionDaemon) -> None:
        orig = daemon._compact

        def compact(dev: Any, reason: Any) -> int:
            start = self._tick()
            got = orig(dev, reason)
            self._done(
                start,
                [
                    T_BGCOMPACT,
                    0,
                    int(getattr(dev, "id", NO_DEVICE)),
                    0,
                    str(getattr(reason, "value", reason)),
                    int(got),
                ],
            )
            return got

        daemon._compact = compact  # type: ignore[method-assign]

    # ---- the mount's own stores ---------------------------------------------------------
    def store(self, dev: ZramDevice, name: str, text: str) -> None:
        """`zramfs.attrs.store`, recorded as the write to /sys/block/<dev>/<name> it stands
        for (zramfs mount's --algorithm, --size, --mem-limit)."""
        from . import attrs

        start = self._tick()
        path = f"/sys/block/{dev.name}/{name}"
        try:
            attrs.store(dev, name, text)
        except OSError as exc:
            self._done(
                start,
                [T_CONTROL, 0, NO_DEVICE, 0, CTRL_WRITE, path, text.encode(), 0, _errno_of(exc)],
            )
            raise
        self._done(start, [T_CONTROL, 0, NO_DEVICE, 0, CTRL_WRITE, path, text.encode(), 0, 0])

    def snapshot(self, dev: ZramDevice) -> None:
        """Record `dev`'s configuration as the stores that would give it (a device the trace
        finds already configured, still empty: a mount's devices when serving starts)."""
        path = f"/sys/block/{dev.name}/"
        stores = [("comp_algorithm", dev.comp_algs[0] or "")]
        if dev.disksize:
            stores.append(("disksize", str(dev.disksize)))
        if dev.limit_pages:
            stores.append(("mem_limit", str(dev.limit_pages * 4096)))
        for name, text in stores:
            self.writer.push(
                (
                    T_CONTROL,
                    self.writer.now(),
                    NO_DEVICE,
                    0,
                    CTRL_WRITE,
                    path + name,
                    text.encode(),
                    0,
                    0,
                )
            )

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- zramfs mount
def trace_path_problem(path: str) -> str | None:
    """Why `zramfs mount --trace PATH` cannot write its trace there, or None (checked in the
    caller's terminal, before the mount daemonises)."""
    if os.path.isdir(path):
        return f"--trace {path}: is a directory"
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return f"--trace {path}: no directory {parent}"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"--trace {path}: not writable"
    return None


def mount_header(args: argparse.Namespace) -> dict[str, Any]:
    """The mount-wide settings a trace header records (zramfs.replay_settings reads them)."""
    return {
        "chain_size": args.chain_size,
        "chain_rule": args.chain_rule,
        "compact_policy": str(args.compact_policy or DEFAULT_POLICY),
        "compact_interval": args.compact_interval,
        "devices": args.devices,
    }


def start_mount_trace(
    args: argparse.Namespace, registry: Registry, tree: Tree, daemon: CompactionDaemon
) -> MountTracer:
    """Open `args.trace` and attach a tracer to a mount `zramfs.cli.build_mount` built.

    The devices exist and are configured already (--algorithm, --size, --mem-limit): their
    configuration is recorded first, as the stores a script would have made (comp_algorithm,
    disksize, mem_limit per device), so a replay starts from the same devices."""
    tracer = MountTracer(TraceWriter(args.trace, mount_header(args)))
    for dev in [registry.devices[i] for i in sorted(registry.devices)]:
        tracer.snapshot(dev)
    tracer.attach(registry, tree, daemon)
    return tracer
