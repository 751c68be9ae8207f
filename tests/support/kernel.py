"""scripts/kernel_compare.py for the tests that compare zramfs with the running kernel's zram
(test_kernel_diff, test_lzo): loaded once by path as ``kc`` (scripts/ is no package), and the
kernel figure those comparisons share.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]

#: zs_huge_class_size() with 8-page chains (first non-huge class 3632 - 7; docs/zram.md,
#: "huge_class_size")
HUGE_CLASS_SIZE = 3625


def load_kernel_compare() -> ModuleType:
    """scripts/kernel_compare.py as the module ``kernel_compare`` (one instance per process)."""
    name = "kernel_compare"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "kernel_compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the body runs
    spec.loader.exec_module(module)
    return module


kc = load_kernel_compare()
