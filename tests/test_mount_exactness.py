"""A mount says when it cannot vouch for something: its lz4 lengths (module parameter
``lz4_path``, ``zramfs status``, a start-up warning) and its loop devices (``unclamped_loops``,
``zramfs status``, an ERROR line in the log).

In process: `build_mount`'s parameter, the start-up warning and the status output on a fake
mount directory.  On real mounts: the exact path is the one a default mount uses, and a
daemon started with the lz4 binding (or the loop clamp) made to fail shows it everywhere.
The failures are simulated inside the daemon process by a few lines it runs at start-up (a
``sitecustomize`` module), as a monkeypatch would in process.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.mountutil import Mount, loop_unusable, zramfs_cli
from support.zram_data import text_page
from zramfs import cli, codecs, loopdev

PAGE = 4096

SIMULATE_LZ4_LOST = (
    "import zramfs.codecs as c\n"
    "c._LZ4_COMPRESS_FAST = None\n"
    "c._LZ4_BINDING = 'simulated: no LZ4_compress_fast'\n"
)
SIMULATE_SYSFS_REFUSES = (
    "import zramfs.loopdev as l\n"
    "def refuse(loop, limit_kb):\n"
    "    raise PermissionError(13, 'Permission denied (simulated)')\n"
    "l.clamp_requests = refuse\n"
)


def simulate_lz4_binding_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "_LZ4_COMPRESS_FAST", None)
    monkeypatch.setattr(codecs, "_LZ4_BINDING", "simulated: no LZ4_compress_fast")


def a_page_where_the_paths_differ() -> tuple[bytes, int, int]:
    """(page, its LZ4_compress_fast length, its lz4.block length), lengths different."""
    import lz4.block

    exact = codecs.Lz4Codec()
    assert exact._fast is not None, "the lz4 binding is missing (test_codecs says why)"
    rng = random.Random(20)
    for _ in range(200):
        page = text_page(rng)
        fast, stream = len(exact.compress(page)), len(lz4.block.compress(page, store_size=False))
        if fast != stream:
            return page, fast, stream
    raise AssertionError("no page where LZ4_compress_fast and lz4.block differ")


# ---- in process ----------------------------------------------------------------------------
def param_of(tree, name: str) -> str:
    return tree.read_file(tree.lookup(f"/sys/module/zramfs/parameters/{name}")).decode()


@pytest.mark.parametrize("lost", [False, True], ids=["exact", "binding-lost"])
def test_lz4_path_module_parameter(monkeypatch: pytest.MonkeyPatch, lost: bool) -> None:
    page, fast, stream = a_page_where_the_paths_differ()
    if lost:
        simulate_lz4_binding_lost(monkeypatch)
    args = cli.make_parser().parse_args(["mount", "/nonexistent", "--size", "1M"])
    tree, _daemon, _ops, _registry = cli.build_mount(args)
    node = tree.lookup("/sys/module/zramfs/parameters/lz4_path")
    assert node.mode == 0o444
    expected = codecs.LZ4_PATH_INEXACT if lost else codecs.LZ4_PATH_EXACT
    assert param_of(tree, "lz4_path") == expected + "\n"
    # The parameter tells the truth: the device's compressed length follows the path.
    dev = tree.device(0)
    dev.write(0, page)
    assert dev.stats().compr_data_size == (stream if lost else fast)


@pytest.mark.parametrize("lost", [False, True], ids=["exact", "binding-lost"])
def test_mount_warns_at_start_up_only_when_lz4_is_inexact(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, lost: bool
) -> None:
    if lost:
        simulate_lz4_binding_lost(monkeypatch)
    # A mount point that does not exist: the mount fails right after the start-up checks.
    assert cli.main(["mount", str(tmp_path / "missing")]) == 1
    lines = capsys.readouterr().err.splitlines()
    warnings = [ln for ln in lines if ln.startswith("zramfs: warning:")]
    if lost:
        assert len(warnings) == 1 and codecs.LZ4_PATH_INEXACT in warnings[0]
        assert "simulated: no LZ4_compress_fast" in warnings[0]
    else:
        assert warnings == []
    assert "is not a directory" in lines[-1]


def fake_mount(base: Path, params: dict[str, str]) -> Path:
    """The files ``zramfs status`` reads, as a mount with one 8 MiB lz4 device serves them."""
    dev = base / "sys/block/zram0"
    dev.mkdir(parents=True)
    (dev / "disksize").write_text(f"{8 << 20}\n")
    (dev / "mm_stat").write_text("12288 4000 8192 0 8192 0 0 0 0\n")
    (dev / "comp_algorithm").write_text("lzo-rle lzo [lz4] lz4hc zstd deflate\n")
    (dev / "max_comp_streams").write_text("2\n")
    (base / "dev").mkdir()
    parameters = base / "sys/module/zramfs/parameters"
    parameters.mkdir(parents=True)
    for name, value in params.items():
        (parameters / name).write_text(value + "\n")
    return base


@pytest.fixture
def status_of(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[str, str]]:
    """``status_of(mnt, *options)``: (stdout, stderr) of ``zramfs status MNT`` in process."""

    def status(mnt: Path, *options: str) -> tuple[str, str]:
        monkeypatch.setattr(cli, "zramfs_mounts", lambda: [str(mnt)])
        assert cli.main(["status", str(mnt), *options]) == 0
        out = capsys.readouterr()
        return out.out, out.err

    return status


def test_status_is_quiet_when_all_is_exact(tmp_path: Path, status_of) -> None:
    mnt = fake_mount(tmp_path, {"lz4_path": codecs.LZ4_PATH_EXACT, "unclamped_loops": ""})
    out, err = status_of(mnt)
    assert out.splitlines()[0].split() == list(cli.STATUS_COLUMNS) and len(out.splitlines()) == 2
    assert err == ""
    data = json.loads(status_of(mnt, "--json")[0])["mounts"][0]
    assert data["lz4_path"] == codecs.LZ4_PATH_EXACT and data["unclamped_loops"] == []
    assert [d["algorithm"] for d in data["devices"]] == ["lz4"]


def test_status_reports_inexact_lz4_and_unclamped_loops(tmp_path: Path, status_of) -> None:
    mnt = fake_mount(
        tmp_path, {"lz4_path": codecs.LZ4_PATH_INEXACT, "unclamped_loops": "/dev/loop3 /dev/loop5"}
    )
    out, err = status_of(mnt)
    # The table is unchanged: the columns of zramctl, one row per device.
    assert out.splitlines()[0].split() == list(cli.STATUS_COLUMNS) and len(out.splitlines()) == 2
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"zramfs: {mnt}: warning: ") for ln in lines)
    assert codecs.LZ4_PATH_INEXACT in lines[0]
    assert "unclamped_loops: /dev/loop3 /dev/loop5" in lines[1]
    data = json.loads(status_of(mnt, "--json")[0])["mounts"][0]
    assert data["lz4_path"] == codecs.LZ4_PATH_INEXACT
    assert data["unclamped_loops"] == ["/dev/loop3", "/dev/loop5"]


def test_status_of_a_mount_without_the_parameters(tmp_path: Path, status_of) -> None:
    """``--backend null`` serves no module parameters: null in JSON, no warning."""
    mnt = fake_mount(tmp_path, {})
    assert status_of(mnt)[1] == ""
    data = json.loads(status_of(mnt, "--json")[0])["mounts"][0]
    assert data["lz4_path"] is None and data["unclamped_loops"] is None


# ---- real mounts -----------------------------------------------------------------------------
@pytest.fixture
def patched_zmount(zmount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Mount]:
    """``patched_zmount(patch, *cli_args)``: a ``zmount`` whose daemon runs ``patch`` first.
    The patch is a ``sitecustomize`` module on the PYTHONPATH the mount (and the test's
    ``zramfs status``, harmlessly) inherit; it shadows any other sitecustomize there."""

    def factory(patch: str, *args: str) -> Mount:
        site = tmp_path / "sitecustomize"
        site.mkdir()
        (site / "sitecustomize.py").write_text(patch)
        paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
        return zmount(*args)

    return factory


def write_page_and_compr_size(m: Mount, page: bytes) -> int:
    fd = os.open(m.image(0), os.O_RDWR)
    try:
        assert os.pwrite(fd, page, 0) == PAGE
    finally:
        os.close(fd)
    return m.mm_stat()[1]


def status_json(m: Mount) -> dict:
    return json.loads(zramfs_cli("status", str(m.path), "--json").stdout)["mounts"][0]


@pytest.mark.fuse
def test_a_default_mount_uses_the_kernels_lz4_call(zmount) -> None:
    m = zmount("--size", "4M", "--algorithm", "lz4")
    assert m.param("lz4_path") == codecs.LZ4_PATH_EXACT
    page, fast, _stream = a_page_where_the_paths_differ()
    assert write_page_and_compr_size(m, page) == fast
    assert "warning" not in m.log.read_text()
    res = zramfs_cli("status", str(m.path))
    assert res.stderr == ""
    assert status_json(m)["lz4_path"] == codecs.LZ4_PATH_EXACT


@pytest.mark.fuse
def test_a_mount_without_the_lz4_binding_says_so(patched_zmount) -> None:
    m = patched_zmount(SIMULATE_LZ4_LOST, "--size", "4M", "--algorithm", "lz4")
    warnings = [ln for ln in m.log.read_text().splitlines() if "warning" in ln]
    assert len(warnings) == 1 and codecs.LZ4_PATH_INEXACT in warnings[0], warnings
    assert m.param("lz4_path") == codecs.LZ4_PATH_INEXACT
    page, _fast, stream = a_page_where_the_paths_differ()
    assert write_page_and_compr_size(m, page) == stream  # the parameter is right
    res = zramfs_cli("status", str(m.path))
    assert res.stdout.splitlines()[0].split() == list(cli.STATUS_COLUMNS)
    assert f"{m.path}: warning: lz4_path is {codecs.LZ4_PATH_INEXACT}" in res.stderr
    assert status_json(m)["lz4_path"] == codecs.LZ4_PATH_INEXACT


@pytest.mark.fuse
def test_a_loop_device_the_daemon_cannot_clamp_is_reported(patched_zmount) -> None:
    """sysfs refusing the clamp (simulated in the daemon): an ERROR line in the mount's log
    with the command that fixes it, the device in ``unclamped_loops`` and in ``zramfs
    status`` while it is attached, and gone from both once it is clamped by hand."""
    if (why := loop_unusable()) is not None:
        pytest.skip(why)
    m = patched_zmount(SIMULATE_SYSFS_REFUSES, "--size", "4M")
    assert m.param("unclamped_loops") == ""
    loop = m.losetup()  # detached by the fixture, even on failure
    queue = loopdev.SYS_BLOCK / Path(loop).name / "queue" / "max_sectors_kb"
    original = queue.read_text()
    try:
        from zramfs.fs import MAX_IO

        limit_kb = loopdev.whole_request_kb(MAX_IO // 1024)
        if int(original) <= limit_kb:
            queue.write_text("128\n")  # the kernel's default is larger; make it so
        deadline = time.monotonic() + 10
        while "ERROR" not in m.log.read_text():
            assert time.monotonic() < deadline, "no ERROR line for the unclamped loop device"
            time.sleep(0.05)
        errors = [ln for ln in m.log.read_text().splitlines() if " ERROR " in ln]
        assert len(errors) == 1 and loop in errors[0]
        assert f"echo {limit_kb} > /sys/block/{Path(loop).name}/queue/max_sectors_kb" in errors[0]
        assert m.param("unclamped_loops") == loop
        assert status_json(m)["unclamped_loops"] == [loop]
        res = zramfs_cli("status", str(m.path))
        assert f"{m.path}: warning: unclamped_loops: {loop}" in res.stderr
        # Set by hand, as the message says: no longer reported.
        queue.write_text(f"{limit_kb}\n")
        assert m.param("unclamped_loops") == ""
        assert status_json(m)["unclamped_loops"] == []
    finally:
        queue.write_text(original)
