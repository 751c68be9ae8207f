"""Shared helpers of the reliability tests (tests/test_reliability_*.py); no tests here.

- `Watchdog`: a deadline around a block of a test.  When it fires it dumps every thread's
  stack, runs an unblock action (for a mount: kill the FUSE daemon we started, so every request
  in flight fails with ENOTCONN instead of hanging) and the block then fails with "watchdog".
- `control_files` / `snapshot`: every file of a mount's control tree, and everything a bad
  request could change — each device's data hash and every statistic and setting that can be
  read — so a test can assert "nothing changed".
- `punch_hole`, `varied_data`: the image's discard call and deterministic page contents of
  varied compressibility.
- `rss_kib`: a process's resident memory (the daemon's, for the memory tests).
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from support.mountutil import (  # noqa: F401 (re-exported)
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    Mount,
    fallocate,
    mode_of,
)

PAGE = 4096
MiB = 1 << 20


def punch_hole(fd: int, offset: int, length: int) -> None:
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


_WORDS = [b"zram", b"zsmalloc", b"page", b"compress", b"slot", b"handle", b"class", b"\n"]


def varied_data(rng: random.Random, n: int) -> bytes:
    """n bytes of one of four kinds: random (stored HUGE), text (compresses well), one repeated
    byte (same-filled pages), half random / half zeros."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(n)
    if kind == 1:
        out = bytearray()
        while len(out) < n:
            out += rng.choice(_WORDS) + b" "
        return bytes(out[:n])
    if kind == 2:
        return bytes([rng.randrange(256)]) * n
    half = n // 2
    return rng.randbytes(half) + bytes(n - half)


class WatchdogFired(AssertionError):
    pass


class Watchdog:
    """``with Watchdog(60, unblock=m.proc.kill): ...`` fails the block with WatchdogFired if it
    is still running after 60 s, after dumping all stacks and calling ``unblock``."""

    def __init__(
        self, seconds: float, unblock: Callable[[], None] | None = None, what: str = "test"
    ) -> None:
        self.seconds = seconds
        self.unblock = unblock
        self.what = what
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired.set()
        sys.stderr.write(
            f"\n=== watchdog: {self.what} still running after {self.seconds}s; "
            "stacks of every thread follow ===\n"
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.unblock is not None:
            try:
                self.unblock()
            except Exception as exc:  # noqa: BLE001 - the watchdog must not die before the test fails
                sys.stderr.write(f"watchdog unblock failed: {exc!r}\n")

    def __enter__(self) -> Self:
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._timer is not None
        self._timer.cancel()
        if self.fired.is_set():
            raise WatchdogFired(
                f"watchdog: {self.what} hung for more than {self.seconds}s "
                f"(stacks on stderr); first error: {exc!r}"
            )


def daemon_killer(m: Mount) -> Callable[[], None]:
    """The unblock action for a mount: SIGKILL its daemon (our child); FUSE requests in flight
    then fail with ENOTCONN and the fixture removes the stale mount."""

    def unblock() -> None:
        if m.proc.poll() is None:
            m.proc.kill()

    return unblock


def join_all(threads: list[threading.Thread], deadline_s: float) -> list[str]:
    """Join with one overall deadline; returns the names of threads still alive."""
    import time

    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def rss_kib(pid: int) -> int:
    """VmRSS of a process (the FUSE daemon), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# ---- the control tree and "nothing changed" ------------------------------------------------
def control_files(m: Mount) -> list[Path]:
    """Every regular file of the mount except the images, sorted."""
    found: list[Path] = []
    for root, _dirs, files in os.walk(m.path):
        rel = os.path.relpath(root, m.path)
        if rel == "dev":
            continue
        found.extend(Path(root) / f for f in files)
    return sorted(found)


def image_digest(m: Mount, dev: int) -> str:
    h = hashlib.sha256()
    with open(m.image(dev), "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# block-layer `stat` fields a read of the image changes: read ios/merges/sectors/ticks,
# io_ticks and time_in_queue (they add read time).
_STAT_READ_FIELDS = {0, 1, 2, 3, 9, 10}

# Files whose content changes by being read or by unrelated activity.
# hot_add allocates on read; lock_stat and compact_pressure (the host's PSI, read live by the
# shrinker policy) move without any request.
_VOLATILE = {"hot_add", "lock_stat", "compact_pressure"}


def snapshot(m: Mount) -> dict[str, str]:
    """Everything a request could change: every readable control file (the block-layer
    ``stat`` without the fields an image read bumps) and the sha256 of every image."""
    out: dict[str, str] = {}
    for path in control_files(m):
        if path.name in _VOLATILE or not mode_of(path) & 0o400:
            continue
        text = path.read_text()
        if path.name == "stat" and path.parent.parent.name == "block":
            fields = text.split()
            text = " ".join(v for i, v in enumerate(fields) if i not in _STAT_READ_FIELDS)
        elif path.name == "block_state":
            # index, access time, flags: an image read sets the access time (and would clear
            # IDLE, which nothing here sets); keep index and flags
            text = "\n".join(f"{ln.split()[0]} {ln.split()[-1]}" for ln in text.splitlines())
        out[str(path.relative_to(m.path))] = text
    for name in sorted(os.listdir(m.path / "dev")):
        dev = int(name.removeprefix("zram"))
        out[f"sha256(dev/{name})"] = image_digest(m, dev)
    return out


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two `snapshot`s, one ``name: before -> after`` line per entry."""
    keys = sorted(set(before) | set(after))
    return [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys if before.get(k) != after.get(k)
    ]
