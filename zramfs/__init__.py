"""zramfs: zram devices on the allocator, served as a FUSE tree that mirrors the kernel paths.

The device's data path (``slots``, ``device_core``, ``device_io``, ``device_stats``) and the
classes ``ZramDevice`` is put together from (``device_writeback``, ``device_recompress``,
``device``) are compiled by mypyc at install time where a C compiler exists (setup.py);
``build_mode()`` says which build this process runs, and ``ZRAMFS_PURE_PYTHON=1`` selects the
pure sources (``allocator.buildmode``, which chooses for this package as for the allocator).
"""

from allocator import buildmode as _buildmode

# Before any submodule is imported: compiled or pure, for the whole package.
_BUILD_MODE = _buildmode.select(__name__, __path__)


def build_mode() -> str:
    """``"compiled"`` when this process runs the package's mypyc-compiled modules, else
    ``"pure"`` (``allocator.buildmode.why_pure("zramfs")`` says why, when a compiled build is
    there)."""
    from . import device_io  # the data path: compiled exactly when the package is

    return _buildmode.loaded_mode(device_io)


def build_modes() -> dict[str, str]:
    """The build each package runs in this process: ``{"allocator": ..., "zramfs": ...}``."""
    import allocator

    return {"allocator": allocator.build_mode(), "zramfs": build_mode()}


def build_mode_text() -> str:
    """What the module parameter ``build_mode`` shows: ``compiled`` or ``pure`` when both
    packages run the same build (the usual case), else each package's, e.g.
    ``allocator=compiled zramfs=pure`` (a device source edited since the build; the device
    runs its sources whenever the allocator does, since it calls the compiled one natively)."""
    modes = build_modes()
    if len(set(modes.values())) == 1:
        return modes["allocator"]
    return " ".join(f"{pkg}={mode}" for pkg, mode in modes.items())
