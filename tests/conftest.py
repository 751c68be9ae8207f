"""The fixtures every test module shares, each defined here once (helpers: tests/support/).

Allocator:

- ``lockdep``: the lock checker on for one test, off again even when the test fails.
- ``backing``: the arena ``mem`` is made on: ``"anon"`` unless the test parametrizes it;
  ``@pytest.mark.parametrize("backing", ["anon", "memfd"])`` runs it on both the anonymous
  mapping and the memfd of ``zramfs mount --mlock`` (allocator/memory.py).
- ``mem``: fresh simulated RAM (``MEM_PAGES`` frames of 4 KiB) on that arena, unmapped after.
- ``pool``: a zsmalloc `Pool` on ``mem`` with lockdep on; its deferred free is flushed and the
  pool destroyed after the test.

Builds: a test marked ``@pytest.mark.pure_python`` patches allocator functions or a pool's
methods to instrument them; the compiled build (setup.py) calls those natively, past the patch,
so there it is skipped, and it runs in the suite's pure pass (``ZRAMFS_PURE_PYTHON=1``,
scripts/test.sh).

Device: ``reg``, a zram `Registry` (zram0 only, uninitialised) on its own simulated RAM; every
device is reset after the test, even one the test left open.

Mounts (tests/support/mountutil.py), torn down even when the test fails — file systems and swaps
on loop devices over the images, the loop devices, the FUSE mount and the daemon — and checked
to leave no mount and no loop device behind:

- ``zmount``: a factory of real foreground mounts, ``m = zmount("--size", "16M")``; it serves
  ``--backend null`` too.
- ``daemon``: one daemonised ``zramfs mount`` (a `DaemonMount`: ``daemon.mount(*args)``).

Workers: scripts/test.sh runs each pass on two pytest-xdist workers (``-n 2 --dist
loadgroup``).  Every test that uses what the machine has one of (a mount, or the loop devices,
swap and file systems on one, benchmark servers, the kernel's zram0) is put in the xdist group
``machine``, so those run one after another in one worker, as in a serial run; the in-process
tests share out over both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import allocator
from allocator import PhysicalMemory, Pool
from allocator.locks import set_lockdep
from support.mountutil import DaemonMount, Mount, is_mounted, loops_under, require_fuse, start_mount
from zramfs.device import Registry

#: Frames of the ``mem`` fixture (64 MiB of address space; only touched frames cost memory).
MEM_PAGES = 1 << 14
#: Frames of the ``reg`` fixture's memory (256 MiB of address space, far more than any test stores).
REG_PAGES = 1 << 16


#: fixtures that mount (or need FUSE): their tests use the machine's shared resources
MOUNT_FIXTURES = frozenset({"zmount", "daemon", "nullfs_mount", "need_fuse"})
#: modules whose tests start mounts, loop devices or benchmark servers without those fixtures
MACHINE_MODULES = frozenset({"test_bench_harness.py", "test_bench_smoke.py"})


def _uses_the_machine(item: pytest.Item) -> bool:
    """Does `item` use what one machine has one of: FUSE mounts and the loop devices, swap and
    file systems on them, benchmark servers, the kernel's own zram0?"""
    return (
        item.get_closest_marker("fuse") is not None
        or item.get_closest_marker("kernel") is not None
        or not MOUNT_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        or item.path.name in MACHINE_MODULES
    )


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup) the tests that use the
    # machine run one after another in one worker, as they would without xdist; the
    # in-process tests share out over the workers.
    machine = pytest.mark.xdist_group("machine")
    for item in items:
        if _uses_the_machine(item):
            item.add_marker(machine)
    if allocator.build_mode() != "compiled":
        return
    skip = pytest.mark.skip(
        reason="patches allocator code the compiled build calls natively; "
        "runs in the pure pass (ZRAMFS_PURE_PYTHON=1)"
    )
    for item in items:
        if item.get_closest_marker("pure_python") is not None:
            item.add_marker(skip)


@pytest.fixture
def lockdep() -> Iterator[None]:
    set_lockdep(True)
    try:
        yield
    finally:
        set_lockdep(False)


@pytest.fixture
def backing() -> str:
    return "anon"


@pytest.fixture
def mem(backing: str) -> Iterator[PhysicalMemory]:
    memory = PhysicalMemory(max_pages=MEM_PAGES, backing=backing)
    yield memory
    # A view of a frame the test still holds keeps the mapping (BufferError): the garbage
    # collector unmaps it later; the memfd's descriptor is what must not pile up.
    with contextlib.suppress(BufferError):
        memory.close()


@pytest.fixture
def pool(lockdep: None, mem: PhysicalMemory) -> Iterator[Pool]:
    p = Pool("test", memory=mem)
    yield p
    p.flush_free_work()
    p.destroy()


@pytest.fixture
def reg() -> Iterator[Registry]:
    r = Registry(memory=PhysicalMemory(max_pages=REG_PAGES))
    yield r
    for d in list(r.devices.values()):
        d.open_count = 0  # reset refuses an open device (-EBUSY), as zram's does
        d.reset()


def _assert_nothing_left(mnt: Path) -> None:
    assert not is_mounted(mnt), f"mount left behind: {mnt}"
    assert not loops_under(mnt), f"loop devices left behind on {mnt}: {loops_under(mnt)}"


@pytest.fixture
def zmount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Factory: ``m = zmount("--size", "16M")`` mounts in the foreground (a child we own) and
    returns when the tree answers; every mount is torn down afterwards."""
    mounts: list[Mount] = []

    def factory(*args: str) -> Mount:
        sub = tmp_path / f"m{len(mounts)}"
        sub.mkdir()
        m = start_mount(sub, *args)
        mounts.append(m)
        return m

    try:
        yield factory
    finally:
        errors = []
        for m in reversed(mounts):
            try:
                m.close()
            except Exception as exc:  # noqa: BLE001 - keep tearing down the others
                errors.append(exc)
        for m in mounts:
            _assert_nothing_left(m.path)
        if errors:
            raise errors[0]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonMount]:
    """A daemonised ``zramfs mount`` the test starts (``daemon.mount(*args)``); unmounted and
    its daemons reaped afterwards."""
    require_fuse()
    d = DaemonMount(tmp_path)
    try:
        yield d
    finally:
        d.cleanup()
    _assert_nothing_left(d.mnt)
