"""The compiled and the pure-Python builds (setup.py, allocator.buildmode).

* ``allocator.build_mode()`` and ``zramfs.build_mode()`` say what this process runs, and agree
  with the modules loaded (the allocator's, and the device's: slot table, data path, mixins);
* ``ZRAMFS_PURE_PYTHON=1`` selects the sources in a fresh process even where extensions exist;
* a compiled module whose source changed since the build is never used, package by package;
* the compiled device runs under lockdep;
* the same seeded workload gives identical pools (classes table, handle -> obj, contents) and
  an identical zram device (mm_stat, io_stat, the data read back) in both builds;
* a mount says which build it runs (module parameter build_mode, ``zramfs status --json``).

The comparisons need the compiled build: they are skipped where the install fell back to pure
Python (no C compiler), with the reason.  The finder itself is tested on a package made here.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import allocator
import zramfs
from allocator import buildmode
from support.mountutil import zramfs_cli

REPO = Path(__file__).resolve().parent.parent
PKG_DIR = Path(allocator.__file__).parent
ZRAMFS_DIR = Path(zramfs.__file__).parent
HAS_COMPILED = (PKG_DIR / buildmode.MANIFEST).exists()
HAS_COMPILED_DEVICE = (ZRAMFS_DIR / buildmode.MANIFEST).exists()
needs_compiled = pytest.mark.skipif(
    not HAS_COMPILED, reason="no compiled build here (the install fell back to pure Python)"
)
needs_compiled_device = pytest.mark.skipif(
    not (HAS_COMPILED and HAS_COMPILED_DEVICE),
    reason="no compiled build of both packages here (the install fell back to pure Python)",
)


def compiled_modules() -> dict[str, tuple[str, ...]]:
    """setup.py's ``COMPILED`` table, read from its source (importing setup.py would run it)."""
    tree = ast.parse((Path(allocator.__file__).parent.parent / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in targets):
                assert node.value is not None
                return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMPILED table")


#: the zramfs modules setup.py compiles (the device); the rest of the package is never compiled
DEVICE_MODULES: tuple[str, ...] = compiled_modules()["zramfs"]


def run_py(
    code: str, *, pure: bool, cwd: Path = REPO, path: tuple[Path, ...] = (REPO,)
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``path`` first on sys.path, in the pure build
    when ``pure`` (the variable is removed otherwise, whatever this process has)."""
    env = {k: v for k, v in os.environ.items() if k != buildmode.PURE_ENV}
    if pure:
        env[buildmode.PURE_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


MODE_PROBE = """
    import json, allocator, allocator.pool, allocator.zspage_ops, allocator.locks
    import zramfs, zramfs.device, zramfs.slots
    from allocator import buildmode
    print(json.dumps({"mode": allocator.build_mode(), "pool": allocator.pool.__file__,
                      "why": buildmode.why_pure("allocator"),
                      "zspage_ops": allocator.zspage_ops.__file__,
                      "locks": allocator.locks.__file__,
                      "zmode": zramfs.build_mode(), "zwhy": buildmode.why_pure("zramfs"),
                      "device": zramfs.device.__file__, "slots": zramfs.slots.__file__,
                      "param": zramfs.build_mode_text()}))
"""


def test_build_mode_matches_the_loaded_modules() -> None:
    import allocator.pool as pool_mod
    import allocator.zspage_ops as ops_mod

    mode = allocator.build_mode()
    assert mode in ("compiled", "pure")
    # never a mix: compiled modules call their neighbours natively
    assert {buildmode.loaded_mode(pool_mod), buildmode.loaded_mode(ops_mod)} == {mode}
    if buildmode.pure_requested() or not HAS_COMPILED:
        assert mode == "pure"
    # the locks too (the explorer runs their interpreted source in either build:
    # tests/support/pure_locks.py); lockdep, the checker, stays interpreted
    assert buildmode.loaded_mode(allocator.locks) == mode
    assert buildmode.loaded_mode(allocator.lockdep) == "pure"


def test_zramfs_build_mode_matches_the_loaded_device_modules() -> None:
    import importlib

    import zramfs.codecs
    import zramfs.fs

    zmode = zramfs.build_mode()
    assert zmode in ("compiled", "pure")
    loaded = {
        m: buildmode.loaded_mode(importlib.import_module("zramfs." + m)) for m in DEVICE_MODULES
    }
    assert set(loaded.values()) == {zmode}, loaded  # the whole device, never a mix
    # the FUSE glue and the codecs stay interpreted in either build
    assert {buildmode.loaded_mode(zramfs.fs), buildmode.loaded_mode(zramfs.codecs)} == {"pure"}
    if buildmode.pure_requested() or not HAS_COMPILED_DEVICE:
        assert zmode == "pure"
    assert zramfs.build_modes() == {"allocator": allocator.build_mode(), "zramfs": zmode}


def test_pure_python_env_selects_the_sources_in_a_new_process() -> None:
    out = run_py(MODE_PROBE, pure=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mode"] == "pure"
    assert got["pool"].endswith("pool.py") and got["zspage_ops"].endswith("zspage_ops.py")
    assert out.stderr == ""
    assert got["why"] == (f"{buildmode.PURE_ENV} is set" if HAS_COMPILED else None)
    assert got["zmode"] == "pure" and got["param"] == "pure"
    assert got["device"].endswith("device.py") and got["slots"].endswith("slots.py")
    assert got["zwhy"] == (f"{buildmode.PURE_ENV} is set" if HAS_COMPILED_DEVICE else None)


@needs_compiled
def test_without_the_env_the_compiled_build_is_used() -> None:
    out = run_py(MODE_PROBE, pure=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mode"] == "compiled" and got["why"] is None, out.stderr
    assert not got["pool"].endswith(".py") and not got["locks"].endswith(".py")
    if HAS_COMPILED_DEVICE:
        assert got["zmode"] == "compiled" and got["zwhy"] is None and got["param"] == "compiled"
        assert not got["device"].endswith(".py") and not got["slots"].endswith(".py")


@needs_compiled
def test_a_stale_compiled_module_is_not_used(tmp_path: Path) -> None:
    """An edited source with its old extension beside it: the sources run, silently (every
    subprocess would print it), and why_pure names the file; an extension gone missing is
    refused the same way."""
    copy = tmp_path / "allocator"
    shutil.copytree(PKG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # (the probe imports zramfs too: this checkout's, beside the copy)
    shutil.copytree(ZRAMFS_DIR, tmp_path / "zramfs", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "handles.py", "a") as f:
        f.write("\n# edited after the build\n")
    out = run_py(MODE_PROBE, pure=False, cwd=tmp_path, path=(tmp_path,))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mode"] == "pure" and out.stderr == ""
    assert got["why"].startswith("handles.py changed since the build")

    shutil.copy(PKG_DIR / "handles.py", copy / "handles.py")
    for ext in copy.glob("zspage_ops.*.so"):
        ext.unlink()
    out = run_py(MODE_PROBE, pure=False, cwd=tmp_path, path=(tmp_path,))
    got = json.loads(out.stdout)
    assert got["mode"] == "pure" and got["why"].startswith("no extension module for zspage_ops")


ROUND_TRIP = """
    from allocator import PhysicalMemory
    from zramfs.device import Registry
    dev = Registry(memory=PhysicalMemory(max_pages=1 << 10)).devices[0]
    dev.set_disksize(64 << 12)
    data = bytes(range(256)) * 16 * 8 + bytes(4096) * 8
    dev.write(4096, data)
    assert dev.read(4096, len(data)) == data and dev.read(0, 4096) == bytes(4096)
    assert dev.stats().pages_stored == 16
"""


@needs_compiled_device
@pytest.mark.parametrize("edited", ["zramfs/slots.py", "allocator/handles.py"])
def test_each_package_falls_back_on_its_own(tmp_path: Path, edited: str) -> None:
    """An edited source of one package makes that package run its sources, silently.  An
    edited device leaves the allocator compiled (a device round trip works across the mix, and
    the module parameter names both); an edited allocator takes the device with it where the
    compiled device calls the compiled allocator natively (setup.py, NATIVE_DEPS), and leaves
    it compiled where setup.py had to compile the packages apart."""
    for pkg in (PKG_DIR, ZRAMFS_DIR):
        shutil.copytree(pkg, tmp_path / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / edited, "a") as f:
        f.write("\n# edited after the build\n")
    out = run_py(MODE_PROBE + ROUND_TRIP, pure=False, cwd=tmp_path, path=(tmp_path,))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    got = json.loads(out.stdout)
    stale = edited.split("/")[1] + " changed since the build"
    if edited.startswith("zramfs"):
        assert (got["mode"], got["zmode"]) == ("compiled", "pure")
        assert got["zwhy"].startswith(stale) and got["why"] is None
        assert got["device"].endswith("device.py")
        assert got["param"] == "allocator=compiled zramfs=pure"
    elif "allocator" in json.loads((ZRAMFS_DIR / buildmode.MANIFEST).read_text()).get(
        "calls_natively", []
    ):  # the usual build: both packages compiled in one mypyc run
        assert (got["mode"], got["zmode"]) == ("pure", "pure")
        assert got["why"].startswith(stale)
        assert (
            got["zwhy"] == "allocator runs its sources, and the compiled zramfs calls it natively"
        )
        assert got["device"].endswith("device.py")
        assert got["param"] == "pure"
    else:  # setup.py's fallback: each package compiled on its own, the mix runs
        assert (got["mode"], got["zmode"]) == ("pure", "compiled")
        assert got["why"].startswith(stale) and got["zwhy"] is None
        assert not got["device"].endswith(".py")
        assert got["param"] == "allocator=pure zramfs=compiled"

    # an extension gone missing is refused the same way
    shutil.copy(REPO / edited, tmp_path / edited)
    for ext in (tmp_path / "zramfs").glob("device_io.*.so"):
        ext.unlink()
    out = run_py(MODE_PROBE + ROUND_TRIP, pure=False, cwd=tmp_path, path=(tmp_path,))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["mode"], got["zmode"]) == ("compiled", "pure")
    assert got["zwhy"].startswith("no extension module for device_io")


def _compiled_package(root: Path, name: str, **manifest: object) -> None:
    """A package `name` under `root` as an install would leave it compiled: an ``__init__``
    that chooses its build, module m's source and an "extension" beside it (that cannot
    load), and a manifest naming m with its source's hash (plus `manifest`'s keys)."""
    import hashlib
    from importlib.machinery import EXTENSION_SUFFIXES

    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from allocator import buildmode\nMODE = buildmode.select(__name__, __path__)\n"
    )
    src = b"WHERE = 'source'\n"
    (pkg / "m.py").write_bytes(src)
    (pkg / ("m" + EXTENSION_SUFFIXES[0])).write_bytes(b"not an ELF file")
    modules = {"m": hashlib.sha256(src).hexdigest()}
    (pkg / buildmode.MANIFEST).write_text(
        json.dumps({"compiler": "test", "modules": modules, **manifest})
    )


def test_the_finder_skips_an_extension_module(tmp_path: Path) -> None:
    """On a package made here: its manifest names module m, whose "extension" cannot load;
    ZRAMFS_PURE_PYTHON=1 imports m.py instead, without it the extension is tried."""
    _compiled_package(tmp_path, "bmpkg")
    code = "import bmpkg, bmpkg.m; print(bmpkg.MODE, bmpkg.m.WHERE)"
    out = run_py(code, pure=True, cwd=tmp_path, path=(tmp_path, REPO))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pure", "source"]
    out = run_py(code, pure=False, cwd=tmp_path, path=(tmp_path, REPO))
    assert out.returncode != 0 and "ImportError" in out.stderr  # the extension was tried


def test_a_package_that_calls_another_natively_follows_its_build(tmp_path: Path) -> None:
    """A manifest's ``calls_natively`` (setup.py writes it for the device, which calls the
    allocator natively): the package runs compiled only where the packages it names do, and
    otherwise its sources, saying why.  On packages made here."""
    _compiled_package(tmp_path, "bmdep")
    _compiled_package(tmp_path, "bmuser", calls_natively=["bmdep"])
    code = (
        "import bmuser; from allocator import buildmode; "
        "print(bmuser.MODE, '|', buildmode.why_pure('bmuser'))"
    )
    for want in ("compiled", "pure"):
        if want == "pure":  # bmdep's source edited since its build: it runs its sources
            with open(tmp_path / "bmdep" / "m.py", "a") as f:
                f.write("# edited after the build\n")
        out = run_py(code, pure=False, cwd=tmp_path, path=(tmp_path, REPO))
        assert out.returncode == 0, out.stderr
        mode, why = out.stdout.strip().split(" | ")
        assert mode == want
        if want == "pure":
            assert why == "bmdep runs its sources, and the compiled bmuser calls it natively"
        else:
            assert why == "None"


WORKLOAD = """
    import hashlib, json, random
    import allocator
    from allocator import PhysicalMemory, Pool
    from zramfs import attrs
    from zramfs.device import Registry

    rnd = random.Random(20260415)
    mem = PhysicalMemory(max_pages=1 << 14)
    pool = Pool("same", memory=mem)
    live = {}
    for step in range(6000):
        if live and rnd.random() < 0.45:
            h = rnd.choice(list(live))
            assert pool.read_object(h, len(live[h])) == live[h]
            pool.free(h)
            del live[h]
        else:
            size = rnd.choice([rnd.randint(1, 200), rnd.randint(600, 2400),
                               rnd.randint(2400, 3400), 4096])
            data = rnd.randbytes(size)
            h = pool.malloc(size)
            pool.write_object(h, data)
            live[h] = data
        if step % 1500 == 1499:
            pool.compact()
    pool.flush_free_work()
    pool.check_invariants()
    objs = sorted((h, pool.handle_to_obj(h), hashlib.sha1(live[h]).hexdigest()) for h in live)

    reg = Registry(memory=PhysicalMemory(max_pages=1 << 14))
    dev = reg.devices[0]
    attrs.store(dev, "comp_algorithm", "lz4")
    dev.set_disksize(8 << 20)
    pages = 8 << 20 >> 12
    for _ in range(3000):
        i = rnd.randrange(pages)
        kind = rnd.random()
        if kind < 0.2:
            data = bytes(4096)
        elif kind < 0.6:
            data = (rnd.randbytes(64) * 64)
        else:
            data = rnd.randbytes(rnd.randint(500, 4096)).ljust(4096, b"z")
        dev.write(i * 4096, data)
    attrs.store(dev, "compact", "1")
    image = hashlib.sha1(b"".join(dev.read(i * 4096, 4096) for i in range(pages))).hexdigest()
    import zramfs
    print(json.dumps({"mode": zramfs.build_mode_text(), "classes": pool.classes_table(),
                      "total_pages": pool.total_pages, "objs": objs,
                      "mm_stat": attrs.show(dev, "mm_stat"), "io_stat": attrs.show(dev, "io_stat"),
                      "image": image}))
"""


@needs_compiled
def test_compiled_and_pure_give_identical_pools_and_devices() -> None:
    results = {}
    for pure in (False, True):
        out = run_py(WORKLOAD, pure=pure)
        assert out.returncode == 0, out.stderr
        results[pure] = json.loads(out.stdout)
    compiled, pure_ = results[False], results[True]
    assert (compiled.pop("mode"), pure_.pop("mode")) == ("compiled", "pure")
    assert compiled["total_pages"] > 0 and compiled["mm_stat"].split()[0] != "0"
    for key in compiled:
        assert compiled[key] == pure_[key], key


@pytest.mark.fuse
def test_a_mount_says_which_build_it_runs(daemon: Any) -> None:
    """The module parameter build_mode and ``zramfs status --json``: the daemon inherits this
    process's environment, so it runs the same build."""
    res = daemon.mount("--size", "4M")
    assert res.returncode == 0, res.stderr
    param = daemon.mnt / "sys/module/zramfs/parameters/build_mode"
    assert param.read_text() == zramfs.build_mode_text() + "\n"
    assert param.stat().st_mode & 0o777 == 0o444
    data = json.loads(zramfs_cli("status", str(daemon.mnt), "--json").stdout)
    assert data["mounts"][0]["build_mode"] == zramfs.build_mode_text()
    # and how lz4 is called: from C exactly when the device is compiled
    from zramfs import codecs

    binding = (daemon.mnt / "sys/module/zramfs/parameters/lz4_binding").read_text().strip()
    assert (
        binding == codecs.lz4_binding() == ("C" if zramfs.build_mode() == "compiled" else "ctypes")
    )


def test_the_pool_runs_under_lockdep_in_this_build(pool: Any) -> None:
    """Whatever the build, the pool's locks are checked: the ``pool`` fixture turns lockdep on,
    a workload with compaction takes every lock class in order without a report, and an
    inversion taken around the pool's own locks is refused before it blocks."""
    from allocator.locks import CLASS_LOCK, MIGRATE_LOCK, LockOrderViolation, lockdep_stats

    before = (CLASS_LOCK.acquisitions, MIGRATE_LOCK.acquisitions)
    handles = [pool.malloc(size) for size in range(40, 4000, 37)]
    for h in handles[::2]:
        pool.free(h)
    pool.compact()
    for h in handles[1::2]:
        pool.free(h)
    pool.flush_free_work()
    assert lockdep_stats()["lockdep"] == 1 and lockdep_stats()["violations"] == 0
    assert CLASS_LOCK.acquisitions > before[0] and MIGRATE_LOCK.acquisitions > before[1]
    cls = pool.size_class[0]
    with cls.lock, pytest.raises(LockOrderViolation):
        pool.migrate_lock.write_lock()  # migrate_lock (rank 20) under class->lock (rank 30)


def test_the_device_runs_under_lockdep_in_this_build(lockdep: None) -> None:
    """Whatever the build, the device's slot locks are checked: with lockdep on at disksize the
    stripes are checked Mutexes, a workload through the data path (4 KiB and multi-page
    writes and reads, a partial write, a discard) takes them without a report, and a stripe
    taken under the pool's migrate_lock is refused before it blocks."""
    from allocator.locks import LockOrderViolation, Mutex, lockdep_stats
    from allocator.memory import PhysicalMemory
    from zramfs.device import Registry
    from zramfs.slots import STRIPE_LOCK

    dev = Registry(memory=PhysicalMemory(max_pages=1 << 10)).devices[0]
    dev.set_disksize(64 << 12)
    assert isinstance(dev._stripes[0].lock, Mutex)
    before = STRIPE_LOCK.acquisitions
    page = bytes(range(256)) * 16
    dev.write(0, page)
    dev.write(4096, page * 8 + bytes(4096))
    dev.write(100, b"partial")
    dev.discard(8 * 4096, 4096)
    assert dev.read(4096, 4096) == page and dev.read(0, 9 * 4096)[100:107] == b"partial"
    assert STRIPE_LOCK.acquisitions > before
    assert lockdep_stats()["lockdep"] == 1 and lockdep_stats()["violations"] == 0
    pool = dev.pool
    assert pool is not None
    with pool.migrate_lock.read(), pytest.raises(LockOrderViolation):
        dev.write(0, page)  # the commit takes the stripe (rank 6) under migrate_lock (rank 20)


def _setup_namespace(here: Path) -> dict[str, Any]:
    """setup.py's definitions without its final ``setup()`` call, with ``HERE`` = ``here``."""
    source = (REPO / "setup.py").read_text()
    tree = ast.parse(source)
    body = [
        n
        for n in tree.body
        if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call))  # setup(...)
    ]
    ns: dict[str, Any] = {"__file__": str(here / "setup.py"), "__name__": "setup_under_test"}
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), ns)
    ns["HERE"] = str(here)
    return ns


def test_a_package_not_compiled_this_time_loses_its_old_manifest(tmp_path: Path) -> None:
    """An editable rebuild where mypyc compiled only the allocator (say, zramfs failed to type-
    check): the device's manifest of the earlier joint build must go, or its old extension
    modules would be selected beside an allocator built without the export table they call
    (an import error, not a fallback); the C helper alone does not make zramfs "built"."""
    from setuptools import Distribution  # type: ignore[import-untyped]
    from setuptools.extension import Extension  # type: ignore[import-untyped]

    ns = _setup_namespace(tmp_path)
    for pkg, mods in ns["COMPILED"].items():
        (tmp_path / pkg).mkdir()
        for m in mods:
            (tmp_path / pkg / f"{m}.py").write_text(f"# {m}\n")
        (tmp_path / pkg / buildmode.MANIFEST).write_text('{"modules": {"old": "0"}}\n')
    cmd = ns["BuildCompiled"](Distribution())
    cmd.inplace = True
    cmd.build_lib = str(tmp_path / "build")
    cmd.extensions = [
        Extension("allocator._mypyc", ["x.c"]),
        Extension("allocator.pool", ["x.c"]),
        Extension("zramfs._lz4fast", ["x.c"]),
    ]
    cmd._write_manifests()
    assert not (tmp_path / "zramfs" / buildmode.MANIFEST).exists()
    written = json.loads((tmp_path / "allocator" / buildmode.MANIFEST).read_text())
    assert set(written["modules"]) == set(ns["COMPILED"]["allocator"])
    cmd.extensions = []  # nothing compiled (no compiler): no manifest is left behind
    cmd._write_manifests()
    assert not (tmp_path / "allocator" / buildmode.MANIFEST).exists()
