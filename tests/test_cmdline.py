"""Bad arguments to any zramfs command: one line on stderr and exit code 2 (zramfs.cmdline),
no usage dump; ``-h`` still prints the usage.  And what `cli.main` sets up for every command."""

from __future__ import annotations

import os

import pytest

from zramfs import cli

BAD = [
    ([], "zramfs: "),
    (["bogus"], "zramfs: "),
    (["mount"], "zramfs mount: "),
    (["mount", "/nonexistent", "--size", "1Q"], "zramfs mount: "),
    (["mount", "/nonexistent", "--chain-size", "5"], "zramfs mount: "),
    (["umount"], "zramfs umount: "),
    (["status", "--bogus"], "zramfs"),
    (["record", "/nonexistent"], "zramfs record: "),
    (["plot"], "zramfs plot: "),
    (["replay"], "zramfs replay: "),
]


@pytest.mark.parametrize(
    ("argv", "prefix"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_arguments_are_one_line_and_exit_code_2(
    argv: list[str], prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "usage:" not in err


def test_help_still_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["mount", "-h"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: zramfs mount")


@pytest.mark.parametrize("chosen", [None, "4"])
def test_commands_keep_numpys_blas_to_one_thread_unless_chosen(
    chosen: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zramfs calls no BLAS routine: a command's process (and its children) does not start
    OpenBLAS's spinning thread pool, unless the user set the variable."""
    if chosen is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", chosen)
    with pytest.raises(SystemExit):
        cli.main(["mount", "-h"])
    assert os.environ["OPENBLAS_NUM_THREADS"] == (chosen or "1")
