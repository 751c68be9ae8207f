"""Bad arguments to any zramfs command: one line on stderr and exit code 2 (zramfs.cmdline),
no usage dump; ``-h`` still prints the usage."""

from __future__ import annotations

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
