"""What every ``zramfs`` command shares on its command line: bad arguments are one line on
stderr and exit code 2, like every other bad input of a zramfs command (no usage dump; ``-h``
still prints the usage)."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["one_line_errors"]


def one_line_errors(parser: argparse.ArgumentParser, prog: str) -> None:
    """Make `parser` report an argument error as ``PROG: MESSAGE`` and exit with code 2."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{prog}: {message}\n")

    parser.error = error  # type: ignore[method-assign]
