"""What every part of the harness shares: the repository root, errors, the progress log, small
file helpers, and turning SIGINT/SIGTERM/SIGHUP into an exception so every ``finally`` block
tears down what it set up."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

#: the repository (the servers run from it; the git figures of the report come from it)
ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PAGE_SIZE = 4096
#: the signals that interrupt a run (each tears down whatever the run set up)
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(RuntimeError):
    """A setup or run failure worth one line to the user."""


class Interrupted(BaseException):
    """A signal arrived (SIGINT/SIGTERM/SIGHUP): unwind so every finally block tears down."""


def log(msg: str) -> None:
    print(msg, flush=True)


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and parts[1].encode().decode("unicode_escape") == target:
                return True
    return False


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def install_signal_handlers() -> dict[signal.Signals, Any]:
    """Make the interrupt signals raise `Interrupted`; returns the handlers to put back."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    return {sig: signal.signal(sig, handler) for sig in INTERRUPT_SIGNALS}


def restore_signal_handlers(saved: dict[signal.Signals, Any]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)
