"""The systems under test: how each is set up, torn down, and asked for its processes and
statistics — zramfs over FUSE (zram and null backends), nbdkit behind nbdfuse, kernel zram."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    INTERRUPT_SIGNALS,
    ROOT,
    BenchError,
    log,
    mounted,
    read_text,
    restore_signal_handlers,
    write_text,
)
from .readings import LockRow, parse_lock_stat, parse_mm_stat

#: the system every other is compared with (the × column, the targets)
REFERENCE = "zramfs-lz4"
DEFAULT_SYSTEMS = (
    "zramfs-lz4",
    "zramfs-zstd",
    "zramfs-lz4-nocompact",
    "zramfs-lz4-pure",
    "nullfs",
    "nbdkit-zstd",
    "kernel-lz4",
)
# not in the default run: the compaction daemon as busy as it goes (every 10 ms, any freeable page);
# zramfs-lz4 recording every operation with --trace (the overhead docs/trace-format.md quotes);
# zstd on the pure-Python build (zramfs-lz4-pure, in the default run, is the build comparison)
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, "zramfs-lz4-aggressive", "zramfs-lz4-trace", "zramfs-zstd-pure")


class System:
    """One device under test: ``start`` sets it up (raising BenchError, or returning a reason
    to skip), ``stop`` tears down whatever was set up (safe to call at any point, twice)."""

    name = "?"
    description = "?"

    def __init__(self, size: int, workdir: Path) -> None:
        self.size = size
        self.workdir = workdir / self.name
        self.image = Path("/nonexistent")
        self.mnt: Path | None = None

    def unavailable(self) -> str | None:
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        """Processes holding the data (name → pid), for RSS."""
        return {}

    def mm_stat(self) -> dict[str, int] | None:
        return None

    def lock_stat(self) -> dict[str, LockRow]:
        return {}

    def extra(self) -> dict[str, Any]:
        return {}


class FuseProcess:
    """A foreground FUSE server as our child: started in its own session (a Ctrl-C on the
    terminal reaches us, and we unmount in order), stopped by unmounting, then signals."""

    def __init__(
        self,
        argv: list[str],
        mountpoint: Path,
        image: Path,
        logfile: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.env = env  # None: ours
        self.mountpoint = mountpoint
        self.image = image
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, expect_size: int, timeout: float = 60.0) -> None:
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.argv[0]} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if mounted(self.mountpoint):
                with contextlib.suppress(OSError):
                    if os.stat(self.image).st_size == expect_size:
                        return
            time.sleep(0.05)
        raise BenchError(
            f"{shlex.join(self.argv)}: not mounted after {timeout:.0f} s: {self.log_tail()}"
        )

    def log_tail(self) -> str:
        text = read_text(self.logfile) or ""
        return " | ".join(text.strip().splitlines()[-5:])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        if mounted(self.mountpoint):
            for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
                if shutil.which(cmd[0]) is None:
                    continue
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if (
                        subprocess.run(
                            [*cmd, str(self.mountpoint)], capture_output=True, timeout=30
                        ).returncode
                        == 0
                    ):
                        break
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((None, 15.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(wait)
                    break
        if mounted(self.mountpoint):  # server gone but the mount left behind: detach it
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        self.proc = None


class FuseServerSystem(System):
    """A system served by one ``zramfs mount --foreground`` of ours (zram or null backend):
    start, stop and pids alike; a subclass says which mount options."""

    process_name = "?"  # the label of the server's pid in the CPU and RSS tables
    env_overrides: dict[str, str] = {}  # set in the server's environment

    def __init__(self, size: int, workdir: Path) -> None:
        super().__init__(size, workdir)
        self.server: FuseProcess | None = None

    def mount_args(self) -> list[str]:
        """The options of ``zramfs mount MNT --foreground``."""
        raise NotImplementedError

    def unavailable(self) -> str | None:
        return fuse_problem()

    def start(self) -> None:
        self.mnt = self.workdir / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.image = self.mnt / "dev" / "zram0"
        argv = [
            sys.executable,
            "-m",
            "zramfs",
            "mount",
            str(self.mnt),
            "--foreground",
            *self.mount_args(),
        ]
        env = {**os.environ, **self.env_overrides} if self.env_overrides else None
        self.server = FuseProcess(argv, self.mnt, self.image, self.workdir / "server.log", env)
        self.server.start(self.size)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def pids(self) -> dict[str, int]:
        pid = self.server.pid if self.server else None
        return {self.process_name: pid} if pid else {}


class ZramfsSystem(FuseServerSystem):
    process_name = "zramfs"

    def __init__(
        self,
        size: int,
        workdir: Path,
        name: str,
        algorithm: str,
        compact: bool,
        extra_args: Sequence[str] = (),
        pure: bool = False,
    ) -> None:
        self.name = name
        self.algorithm = algorithm
        self.compact = compact
        self.extra_args = list(extra_args)
        # the pure-Python build where the compiled one is installed (docs/performance.md,
        # "Compiled build"); the server's build_mode parameter is in the report either way
        self.env_overrides = {"ZRAMFS_PURE_PYTHON": "1"} if pure else {}
        self.description = (
            ("ZRAMFS_PURE_PYTHON=1 " if pure else "")
            + f"zramfs mount --algorithm {algorithm}"
            + ("" if compact else " --no-compact")
            + "".join(f" {a}" for a in self.extra_args)
            + " (compaction daemon "
            + (("on, defaults)" if not extra_args else "on)") if compact else "off)")
        )
        super().__init__(size, workdir)

    def mount_args(self) -> list[str]:
        return [
            "--size",
            str(self.size),
            "--algorithm",
            self.algorithm,
            *([] if self.compact else ["--no-compact"]),
            *self.extra_args,
        ]

    def mm_stat(self) -> dict[str, int] | None:
        assert self.mnt is not None
        return parse_mm_stat(read_text(self.mnt / "sys/block/zram0/mm_stat"))

    def lock_stat(self) -> dict[str, LockRow]:
        assert self.mnt is not None
        return parse_lock_stat(read_text(self.mnt / "proc/lock_stat"))

    def extra(self) -> dict[str, Any]:
        assert self.mnt is not None
        params = self.mnt / "sys/module/zramfs/parameters"
        out: dict[str, Any] = {}
        for name in (
            "compact_enabled",
            "compact_threshold_pages",
            "compact_interval_ms",
            "compact_runs",
            "compact_pages_freed",
            "build_mode",
        ):
            text = read_text(params / name)
            if text is not None:
                out[name] = text.strip()
        return out


class NullfsSystem(FuseServerSystem):
    name = "nullfs"
    process_name = "nullfs"
    description = (
        "zramfs mount --backend null (the same FUSE front end over a plain RAM "
        "image, no compression: the ceiling)"
    )

    def mount_args(self) -> list[str]:
        return ["--backend", "null", "--size", str(self.size)]


class NbdkitSystem(System):
    name = "nbdkit-zstd"
    description = "nbdkit -U SOCK memory SIZE allocator=zstd + nbdfuse DIR/zram0 --unix SOCK"

    def __init__(self, size: int, workdir: Path) -> None:
        super().__init__(size, workdir)
        self.nbdkit: subprocess.Popen[bytes] | None = None
        self.server: FuseProcess | None = None

    def unavailable(self) -> str | None:
        missing = [t for t in ("nbdkit", "nbdfuse") if shutil.which(t) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (apt-get install nbdkit libnbd-bin)"
        return fuse_problem()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mnt = self.workdir / "dev"
        self.mnt.mkdir(exist_ok=True)
        self.image = self.mnt / "zram0"
        sock = self.workdir / "nbd.sock"
        with open(self.workdir / "nbdkit.log", "ab") as logf:
            self.nbdkit = subprocess.Popen(
                ["nbdkit", "-f", "-U", str(sock), "memory", str(self.size), "allocator=zstd"],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.nbdkit.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"nbdkit did not start: {read_text(self.workdir / 'nbdkit.log')}")
            time.sleep(0.05)
        self.server = FuseProcess(
            ["nbdfuse", str(self.image), "--unix", str(sock)],
            self.mnt,
            self.image,
            self.workdir / "nbdfuse.log",
        )
        self.server.start(self.size)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.nbdkit is not None:
            if self.nbdkit.poll() is None:
                self.nbdkit.terminate()
                try:
                    self.nbdkit.wait(15)
                except subprocess.TimeoutExpired:
                    self.nbdkit.kill()
                    self.nbdkit.wait(10)
            self.nbdkit = None

    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.nbdkit is not None and self.nbdkit.poll() is None:
            out["nbdkit"] = self.nbdkit.pid
        if self.server is not None and self.server.pid:
            out["nbdfuse"] = self.server.pid
        return out


class KernelZramSystem(System):
    name = "kernel-lz4"
    description = "kernel /dev/zram0, comp_algorithm lz4 (reset before and after)"
    SYS = Path("/sys/block/zram0")

    def __init__(self, size: int, workdir: Path) -> None:
        super().__init__(size, workdir)
        self.image = Path("/dev/zram0")
        self.taken = False

    def unavailable(self) -> str | None:
        if not self.SYS.is_dir() or not self.image.exists():
            return "no kernel zram0 (modprobe zram)"
        if os.geteuid() != 0 or not os.access(self.SYS / "disksize", os.W_OK):
            return "/sys/block/zram0 not writable (needs root)"
        if (read_text(self.SYS / "initstate") or "").strip() != "0":
            return "/dev/zram0 is initialised (in use by someone else): left alone"
        if (
            "lz4"
            not in (read_text(self.SYS / "comp_algorithm") or "")
            .replace("[", " ")
            .replace("]", " ")
            .split()
        ):
            return "kernel zram has no lz4"
        return None

    def start(self) -> None:
        if (read_text(self.SYS / "initstate") or "").strip() != "0":
            raise BenchError("/dev/zram0 became busy")
        self.taken = True
        try:
            write_text(self.SYS / "reset", "1")
            write_text(self.SYS / "comp_algorithm", "lz4")
            write_text(self.SYS / "disksize", str(self.size))
        except OSError as exc:
            raise BenchError(f"cannot set up /dev/zram0: {exc}") from exc

    def stop(self) -> None:
        if not self.taken:
            return
        for _ in range(20):
            try:
                write_text(self.SYS / "reset", "1")
                break
            except OSError:
                time.sleep(0.5)  # EBUSY while a reader (fio) still has it open
        else:
            log("bench: WARNING: could not reset /dev/zram0")
        self.taken = False

    def mm_stat(self) -> dict[str, int] | None:
        return parse_mm_stat(read_text(self.SYS / "mm_stat"))


def fuse_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


def make_system(name: str, size: int, workdir: Path) -> System:
    if name == "zramfs-lz4":
        return ZramfsSystem(size, workdir, name, "lz4", True)
    if name == "zramfs-zstd":
        return ZramfsSystem(size, workdir, name, "zstd", True)
    if name == "zramfs-lz4-nocompact":
        return ZramfsSystem(size, workdir, name, "lz4", False)
    if name == "zramfs-lz4-pure":
        return ZramfsSystem(size, workdir, name, "lz4", True, pure=True)
    if name == "zramfs-zstd-pure":
        return ZramfsSystem(size, workdir, name, "zstd", True, pure=True)
    if name == "zramfs-lz4-aggressive":
        return ZramfsSystem(
            size,
            workdir,
            name,
            "lz4",
            True,
            ["--compact-threshold", "1", "--compact-interval", "10"],
        )
    if name == "zramfs-lz4-trace":
        return ZramfsSystem(
            size, workdir, name, "lz4", True, ["--trace", str(workdir / name / "mount.trace")]
        )
    if name == "nullfs":
        return NullfsSystem(size, workdir)
    if name == "nbdkit-zstd":
        return NbdkitSystem(size, workdir)
    if name == "kernel-lz4":
        return KernelZramSystem(size, workdir)
    raise BenchError(f"unknown system {name!r} (known: {', '.join(ALL_SYSTEMS)})")


def teardown(systems: Sequence[System]) -> None:
    """Stop every system, signals ignored meanwhile (a second Ctrl-C must not abort cleanup)."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in INTERRUPT_SIGNALS}
    try:
        for s in reversed(systems):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing the others down
                log(f"bench: teardown of {s.name} failed: {exc}")
    finally:
        restore_signal_handlers(saved)
