"""Build step of the install: compile the hot modules with mypyc, from the same .py files.

``pip install -e '.[test]'`` (the README's command, scripts/test.sh and .ci/run) and ``pip
install .`` run this through setuptools.  The metadata lives in pyproject.toml; this file only
adds the extension modules:

* the modules in ``COMPILED`` are compiled by mypyc (docs/performance.md, "Compiled build") into
  extension modules that sit next to their sources and are imported in their place;
* the package's ``_compiled.json`` records a hash of each compiled source, so that an edited
  source is never shadowed by a stale extension (``allocator.buildmode``);
* where mypyc, a C compiler or the Python headers are missing, or the compilation fails, the
  install goes on with the pure-Python modules and prints one line saying why;
  ``ZRAMFS_PURE_PYTHON=1`` at install time skips the compilation on purpose.

Not compiled, on purpose: the packages' ``__init__`` (they choose the build at import time),
``allocator.lockdep`` (the checker walks Python frames and runs only with lockdep on; the
interleaving explorer runs the interpreted ``locks.py`` and ``rwlock.py`` in either build,
tests/support/pure_locks.py), ``allocator.mm_types`` (a
runtime-checkable Protocol) and ``allocator.map_area`` (a ``threading.local`` subclass): mypyc
compiles neither of the last two correctly.

In ``zramfs`` the device is compiled: the slot table and stripes (``slots``), ``_Meta``
(``device_core``), the data path (``device_io``), the counters (``device_stats``), and with them
every class ``ZramDevice`` is put together from (``device_writeback``, ``device_recompress``,
``device``).  The mixins and ``ZramDevice`` stay Python classes (``native_class=False``): the
trace hook and the tests replace methods and fields on the instances (zramfs/trace_hook.py,
``dev.clock``), and a class of several mixins cannot be a native one.  They are compiled all
together because mypyc checks the ``self`` of a Python class's compiled method against the
subclasses it compiled, exactly: an interpreted ``ZramDevice`` would be refused by the methods
of its compiled mixins.  Nothing else in ``zramfs`` is hot (FUSE glue, control files, tools),
and the codecs stay interpreted: tests replace their bindings (tests/test_codecs.py).  Two pieces
of hand-written C are built with them (``c_extensions``), each used only by the compiled build
and only when built from the current source, its Python path the reference: ``zramfs/_lz4fast.c``,
the kernel-exact lz4 call without ctypes' glue (docs/fuse-and-codecs.md), and
``zramfs/_tracescan.c``, the trace reader's commonest records (docs/trace-format.md).
Both packages are compiled in one mypyc run, one group (shared library) each, so the device
calls the allocator natively (``Pool.malloc``, ``write_object``, ``free``, ``total_pages``:
through the allocator group's export table, with unboxed ints).  So a compiled device needs
the compiled allocator of its build: its manifest says so (``calls_natively``), and it runs its
sources whenever the allocator does (``allocator.buildmode``).  Where mypyc cannot compile the
two together, each package is compiled on its own, and a compiled device then calls the
allocator through Python calls, whichever build that runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

# package -> modules compiled by mypyc (one shared library per package)
COMPILED: dict[str, tuple[str, ...]] = {
    "allocator": (
        "lockdep_switch",
        "rwlock",
        "locks",
        "sizeclass",
        "zspage",
        "handles",
        "fullness",
        "page_lock",
        "memory",
        "page_migration",
        "zspage_ops",
        "compact",
        "migrate",
        "stats",
        "pool",
    ),
    "zramfs": (
        "slots",
        "device_core",
        "device_stats",
        "device_io",
        "device_writeback",
        "device_recompress",
        "device",
    ),
}
#: package -> packages its compiled modules call natively when all are compiled in one mypyc
#: run; its manifest names them, and it runs compiled only where they do (allocator.buildmode)
NATIVE_DEPS: dict[str, tuple[str, ...]] = {"zramfs": ("allocator",)}
#: hand-written extension modules built with the mypyc ones (c_extensions); no manifest entry
C_EXTENSIONS = {"zramfs._lz4fast", "zramfs._tracescan"}
MANIFEST = "_compiled.json"
PURE_ENV = "ZRAMFS_PURE_PYTHON"
HERE = os.path.dirname(os.path.abspath(__file__))


def notice(why: str) -> None:
    print(f"zramfs: installing the pure-Python build ({why})", file=sys.stderr)


def source_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cannot_compile() -> str | None:
    """Why this machine cannot compile the extensions, or None."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV} is set"
    try:
        import mypyc.build  # noqa: F401  (the build requirement; absent in a --no-build-isolation env)
    except ImportError:
        return "mypyc is not installed"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc).split()[0]) is None:
        return f"no C compiler ({cc})"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h; Debian: apt-get install python3-dev)"
    return None


def c_extensions() -> list[Any]:
    """The hand-written C of the compiled build, each the fast copy of a Python reference that
    stays: zramfs._lz4fast, the kernel-exact lz4 call without ctypes (zramfs/codecs.py), and
    zramfs._tracescan, the trace reader's commonest records (zramfs/trace.py).  Each carries
    its source's SHA-256, so zramfs.cmodules can tell a build of an older source (and the
    Python reference is used instead)."""
    from setuptools import Extension

    exts = []
    for name in sorted(C_EXTENSIONS):
        src = os.path.join(*name.split(".")) + ".c"
        macro = name.rpartition(".")[2].lstrip("_").upper() + "_SOURCE_SHA256"
        digest = source_hash(os.path.join(HERE, src))
        exts.append(
            Extension(
                name, [src], define_macros=[(macro, f'"{digest}"')], extra_compile_args=["-O2"]
            )
        )
    return exts


class BuildCompiled(build_ext):
    """build_ext that asks mypyc for the extensions when it runs, and falls back to pure
    Python (one line on stderr) when it cannot compile them."""

    def finalize_options(self) -> None:
        # mypyc type-checks and generates C here, only when build_ext is really used (not
        # for the metadata steps pip runs first)
        if not self.distribution.ext_modules:
            self.distribution.ext_modules = self._mypyc_extensions()
        if self.parallel is None:  # one C compiler per core: each package's group is one big file
            self.parallel = os.cpu_count() or 1
        super().finalize_options()

    def _mypyc_extensions(self) -> list[Any]:
        why = cannot_compile()
        if why is not None:
            notice(why)
            return []
        from mypyc.build import mypycify

        # One mypyc run for both packages, one group (shared library) per package: the device
        # then calls the allocator natively (through the allocator group's export table, not
        # Python method calls: ~0.3 µs of a 4 KiB write), and must run with the compiled
        # allocator of the same build (NATIVE_DEPS, checked at import by allocator.buildmode).
        paths = {
            pkg: [os.path.join(pkg, m + ".py") for m in mods] for pkg, mods in COMPILED.items()
        }
        try:
            exts: list[Any] = c_extensions() + mypycify(
                [p for pkg_paths in paths.values() for p in pkg_paths],
                opt_level="3",
                separate=[(pkg_paths, f"{pkg}._mypyc") for pkg, pkg_paths in paths.items()],
            )
        except (Exception, SystemExit) as e:  # noqa: BLE001 - mypy's errors exit
            print(
                f"zramfs: mypyc failed on the two packages together ({e!r}); compiling each on"
                " its own (the compiled device then calls the allocator through Python calls)",
                file=sys.stderr,
            )
        else:
            # on the distribution: the command object that writes the manifests may be another
            self.distribution.native_deps = NATIVE_DEPS
            return exts
        # Each package on its own: one mypyc cannot compile installs pure without taking the
        # other with it, and the compiled device calls the allocator through Python calls.
        exts = c_extensions()
        for pkg, pkg_paths in paths.items():
            try:
                exts += mypycify(pkg_paths, opt_level="3", group_name=f"{pkg}._mypyc")
            except (Exception, SystemExit) as e:  # noqa: BLE001 - mypy's errors exit
                notice(f"mypyc failed on {pkg}: {e!r}")
        return exts

    extensions: list[Any]

    def _built_packages(self) -> list[str]:
        """The packages of COMPILED that have extension modules in this build."""
        names = {e.name for e in self.extensions} - C_EXTENSIONS
        return [p for p in COMPILED if any(n.startswith(p + ".") for n in names)]

    def run(self) -> None:
        if self.extensions:
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any compiler failure means: install pure
                notice(f"compilation failed: {e}")
                self.extensions = []
        self._write_manifests()  # with nothing built, removes an earlier build's

    def _write_manifests(self) -> None:
        """Each compiled package's _compiled.json: the hash of every compiled source, in the
        build tree and, for an in-place (editable) build, next to the sources.  A package not
        compiled this time loses the manifest an earlier build left beside its sources, so
        its old extension modules (built against another build of the allocator, perhaps)
        are not selected."""
        native_deps: dict[str, tuple[str, ...]] = getattr(self.distribution, "native_deps", {})
        built = self._built_packages()
        if self.inplace or getattr(self, "editable_mode", False):
            for pkg in COMPILED:
                stale = os.path.join(HERE, pkg, MANIFEST)
                if pkg not in built and os.path.exists(stale):
                    os.remove(stale)
        for pkg in built:
            mods = COMPILED[pkg]
            text = (
                json.dumps(
                    {
                        "compiler": "mypyc",
                        "calls_natively": list(native_deps.get(pkg, ())),
                        "modules": {
                            m: source_hash(os.path.join(HERE, pkg, m + ".py")) for m in mods
                        },
                    },
                    indent=1,
                    sort_keys=True,
                )
                + "\n"
            )
            dirs = [os.path.join(self.build_lib, pkg)]
            if self.inplace or getattr(self, "editable_mode", False):
                dirs.append(os.path.join(HERE, pkg))
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, MANIFEST), "w") as f:
                    f.write(text)

    def get_outputs(self) -> list[str]:
        outs = list(super().get_outputs())
        if self.extensions:
            outs += [os.path.join(self.build_lib, pkg, MANIFEST) for pkg in self._built_packages()]
        return outs


class MaybeBinary(Distribution):
    """Always schedules build_ext (which decides, when it runs, whether there is anything to
    compile): the extension list is only known once mypyc has run."""

    def has_ext_modules(self) -> bool:
        return True


setup(distclass=MaybeBinary, cmdclass={"build_ext": BuildCompiled})
