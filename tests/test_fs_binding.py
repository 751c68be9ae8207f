"""zramfs.fs's FUSE binding: mfusepy (the dependency), fusepy (the ``zramfs[fusepy]`` extra) as
the fallback, and a clear ImportError — which ``zramfs mount`` prints as one line — when neither
loads.  Each case runs in a fresh interpreter: the binding is chosen when zramfs.fs is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: run before the code under test: make both bindings unimportable
BLOCK_BOTH = "import sys; sys.modules['mfusepy'] = None; sys.modules['fuse'] = None\n"


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def test_no_binding_is_a_clear_import_error() -> None:
    p = _python(BLOCK_BOTH + "import zramfs.fs")
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: no usable FUSE binding (mfusepy: "), last
    assert "fusepy: " in last and "pip install mfusepy" in last and "zramfs[fusepy]" in last


def test_mount_without_a_binding_says_why(tmp_path: Path) -> None:
    p = _python(
        BLOCK_BOTH + "from zramfs.cli import main\n"
        f"sys.exit(main(['mount', {str(tmp_path)!r}, '--foreground']))"
    )
    assert p.returncode == 1
    assert p.stderr.startswith("zramfs: no usable FUSE binding"), p.stderr
    assert "Traceback" not in p.stderr


def test_a_fuse_module_that_is_not_fusepy_is_refused(tmp_path: Path) -> None:
    """python-fuse is imported as ``fuse`` too: it must not pass for fusepy."""
    (tmp_path / "fuse.py").write_text('"""not fusepy"""\n')
    p = _python(
        "import sys; sys.modules['mfusepy'] = None\nimport zramfs.fs",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert p.returncode != 0
    assert "fusepy: module 'fuse'" in p.stderr and "is not it (no FUSE, Operations" in p.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("fuse") is None,
    reason="fusepy (the zramfs[fusepy] extra) not installed",
)
def test_fallback_binding_loads() -> None:
    p = _python(
        "import zramfs.fs as f; print(f.BINDING, f.SUPPORTS_FALLOCATE)",
        env={"ZRAMFS_FUSE_BINDING": "fusepy"},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["fusepy", "False"]
