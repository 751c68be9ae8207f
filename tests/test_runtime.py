"""zramfs.runtime: a Python running without the GIL is refused, by ``zramfs mount`` (one line,
exit code 2, nothing mounted) and by `require_gil` for in-process users.  The free-threaded
build is simulated by replacing ``sys._is_gil_enabled``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.mountutil import REPO, is_mounted
from zramfs import cli, runtime


def simulate_no_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)


def test_a_build_with_the_gil_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)  # before 3.13
    assert not runtime.gil_disabled() and runtime.unsupported_runtime() is None
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)  # 3.13, GIL on
    assert not runtime.gil_disabled() and runtime.unsupported_runtime() is None
    runtime.require_gil()


def test_without_the_gil_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_no_gil(monkeypatch)
    assert runtime.gil_disabled()
    problem = runtime.unsupported_runtime()
    assert problem is not None and "\n" not in problem
    assert "without the GIL" in problem and "PYTHON_GIL=1" in problem
    with pytest.raises(runtime.UnsupportedRuntime, match="without the GIL"):
        runtime.require_gil()


def test_a_registry_is_refused_without_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process users (tests, replay, benchmarks) build devices through `Registry`: it
    checks before building anything."""
    from zramfs.device import Registry

    simulate_no_gil(monkeypatch)
    with pytest.raises(runtime.UnsupportedRuntime, match="without the GIL"):
        Registry()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert len(Registry().devices) == 1


def test_mount_refuses_without_the_gil(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Refused before anything happens at the mount point: exit code 2, one line."""
    simulate_no_gil(monkeypatch)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli.main(["mount", str(mnt), "--size", "1M"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zramfs: ") and "without the GIL" in err
    assert not is_mounted(mnt)


def test_mount_refuses_without_the_gil_in_a_real_process(tmp_path: Path) -> None:
    """The same through the interpreter's exit status, with the extension modules imported as
    they are in a real mount (the check runs after them: importing one may turn the GIL on)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = (
        "import sys; sys._is_gil_enabled = lambda: False\n"
        "from zramfs.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", code, "mount", str(mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO),
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "without the GIL" in res.stderr
    assert not is_mounted(mnt)
