"""The hand-written C modules of the compiled build: whether one may be used here.

Owns one rule for `zramfs._lz4fast` (zramfs.codecs) and `zramfs._tracescan` (zramfs.trace):
each is a fast copy of a Python reference that stays, and is used only when

* the compiled build runs (`allocator.buildmode`): the pure build runs the references;
* setup.py built it (it builds them with the mypyc modules, `c_extensions`);
* it was built from the C source beside it: setup.py defines the source's SHA-256 into the
  module as ``SOURCE_SHA256``, and a module older than an edited source is not used (an
  editable install keeps the old .so until it is rebuilt).

Each caller says why not in its own status (`codecs.lz4_binding`, `trace.scanner_status`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from types import ModuleType

from allocator import buildmode

_PACKAGE = __package__ or "zramfs"


def load(name: str) -> tuple[ModuleType | None, str]:
    """(the module ``zramfs.<name>``, "") when it may be used, or (None, why not)."""
    if buildmode.selected(_PACKAGE) != buildmode.COMPILED:
        return None, "the pure-Python build runs"
    try:  # by name: the module exists only where setup.py built it (and mypy cannot see it)
        module = importlib.import_module(f"{_PACKAGE}.{name}")
    except ImportError as exc:
        return None, f"{_PACKAGE}.{name} is not built ({exc})"
    try:
        with open(os.path.join(os.path.dirname(__file__), f"{name}.c"), "rb") as f:
            digest: str | None = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        digest = None  # an install without sources: nothing to be stale against
    if digest is not None and getattr(module, "SOURCE_SHA256", None) != digest:
        return None, f"{_PACKAGE}/{name}.c changed since the build (rebuild: pip install -e .)"
    return module, ""
