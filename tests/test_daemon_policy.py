"""The compaction daemon's policies (zramfs.daemon): the policy string, each policy with a
simulated pressure source and a fake clock (``scan_once`` directly: no sleeps), the PSI
reader, the module parameters that set and show them, pages_compacted, and a real mount
(the ``compact_policy`` parameter, ``--compact-policy``, EINVAL and exit code 2).

The claim under test: with the default policy (``shrinker``) and no memory pressure the
daemon never compacts, so mm_stat is exactly what it is with compaction ``off`` (and, in
tests/test_kernel_diff.py, what the kernel reports); under pressure or near mem_limit it
compacts like the kernel's zsmalloc shrinker.
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.mountutil import expect_errno, opened, zramfs_cli
from support.polling import wait_for
from zramfs import attrs
from zramfs.daemon import (
    DEFAULT_POLICY,
    MEM_LIMIT_MARGIN_MIN_PAGES,
    POLICY_SYNTAX,
    PSI_SOME_AVG10_THRESHOLD,
    BadPolicy,
    CompactionDaemon,
    CompactionPolicy,
    PolicyKind,
    PolicySpec,
    PressureReading,
    PsiPressure,
    Reason,
    SimulatedPressure,
    format_policy,
    mem_limit_margin,
    near_mem_limit,
    own_cgroup_pressure_file,
    parse_policy,
    parse_psi_some_avg10,
)
from zramfs.device import Registry

PAGE = 4096
MiB = 1 << 20
U32_MAX = (1 << 32) - 1


# ---- workloads -------------------------------------------------------------------------------
def mixed_page(rng: random.Random) -> bytes:
    """Random bytes then zeros: compresses to about the random part (a mid size class)."""
    n = rng.randrange(300, 3000)
    return rng.randbytes(n) + bytes(PAGE - n)


def new_registry(devices: int = 1, pages: int = 512) -> Registry:
    reg = Registry(num_devices=devices)
    for dev in reg.devices.values():
        attrs.store(dev, "disksize", str(pages * PAGE))
    return reg


def churn(
    reg: Registry,
    daemon: CompactionDaemon | None,
    *,
    dev_id: int = 0,
    pages: int = 512,
    seed: int = 5,
) -> None:
    """Fill, discard a random 60 %, rewrite a random 30 %, discard some more; the daemon
    (when given) scans after every 32 operations, as its timer would between requests."""
    dev = reg.devices[dev_id]
    rng = random.Random(seed)
    ops: list[tuple[str, int]] = [("w", i) for i in range(pages)]
    ops += [("d", i) for i in rng.sample(range(pages), pages * 6 // 10)]
    ops += [("w", i) for i in rng.sample(range(pages), pages * 3 // 10)]
    ops += [("d", i) for i in rng.sample(range(pages), pages // 5)]
    for n, (op, index) in enumerate(ops):
        if op == "w":
            dev.write(index * PAGE, mixed_page(rng))
        else:
            dev.discard(index * PAGE, PAGE)
        if daemon is not None and n % 32 == 31:
            daemon.scan_once()
    if daemon is not None:
        daemon.scan_once()


def mm_stat(reg: Registry, dev_id: int = 0) -> list[int]:
    return [int(v) for v in attrs.show(reg.devices[dev_id], "mm_stat").split()]


def freeable(reg: Registry, dev_id: int = 0) -> int:
    pool = reg.devices[dev_id].pool
    assert pool is not None
    return pool.freeable_pages()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class BrokenPressure:
    def read(self) -> PressureReading:
        raise RuntimeError("no sensor")


# ---- the policy string -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, kind, value, shown",
    [
        ("off", PolicyKind.OFF, None, "off"),
        ("shrinker", PolicyKind.SHRINKER, None, "shrinker"),
        ("shrinker\n", PolicyKind.SHRINKER, None, "shrinker"),  # echo's newline
        ("threshold:64", PolicyKind.THRESHOLD, 64, "threshold:64"),
        ("threshold:0x40", PolicyKind.THRESHOLD, 64, "threshold:64"),  # kstrtouint base 0
        ("threshold:010", PolicyKind.THRESHOLD, 8, "threshold:8"),
        ("threshold:0", PolicyKind.THRESHOLD, 0, "threshold:0"),
        ("interval:0", PolicyKind.INTERVAL, 0, "interval:0"),
        ("interval:250\n", PolicyKind.INTERVAL, 250, "interval:250"),
        (f"interval:{U32_MAX}", PolicyKind.INTERVAL, U32_MAX, f"interval:{U32_MAX}"),
    ],
)
def test_parse_policy_accepts(text: str, kind: PolicyKind, value: int | None, shown: str) -> None:
    spec = parse_policy(text)
    assert spec == PolicySpec(kind, value)
    assert format_policy(spec) == str(spec) == shown
    assert parse_policy(shown) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "Shrinker",
        "SHRINKER",
        " shrinker",
        "shrinker ",
        "shrinker\n\n",
        "shrinker:",
        "shrinker:1",
        "off:0",
        "on",
        "threshold",
        "threshold:",
        "threshold:-1",
        "threshold:abc",
        "threshold: 1",
        "threshold:1 ",
        "threshold:1\n\n",
        "threshold:1:2",
        "threshold:1_0",
        "threshold:0b1",
        f"threshold:{U32_MAX + 1}",
        "interval",
        "interval:",
        "interval:1.5",
        "interval:99999999999999999999",
        "x" * 200,
        "\x00",
        "shrinker\x00",
        "\udcff",
    ],
)
def test_parse_policy_refuses_with_einval(text: str) -> None:
    with pytest.raises(BadPolicy) as info:
        parse_policy(text)
    assert info.value.errno == errno.EINVAL
    assert POLICY_SYNTAX in str(info.value) and repr(text) in str(info.value)


@given(kind=st.sampled_from(list(PolicyKind)), value=st.integers(0, U32_MAX))
def test_format_then_parse_is_the_identity(kind: PolicyKind, value: int) -> None:
    spec = PolicySpec(kind, value if kind.takes_value else None)
    assert parse_policy(format_policy(spec)) == spec
    assert parse_policy(format_policy(spec) + "\n") == spec


def test_policy_spec_must_match_its_kind() -> None:
    with pytest.raises(ValueError):
        PolicySpec(PolicyKind.THRESHOLD)
    with pytest.raises(ValueError):
        PolicySpec(PolicyKind.OFF, 3)


def test_compaction_policy_takes_a_spec() -> None:
    base = CompactionPolicy()
    assert base.kind is PolicyKind.SHRINKER and str(base) == "shrinker" == str(DEFAULT_POLICY)
    t = base.with_spec("threshold:7")
    assert (t.kind, t.threshold_pages, t.interval_ms) == (PolicyKind.THRESHOLD, 7, 1000)
    i = t.with_spec(PolicySpec(PolicyKind.INTERVAL, 50))
    assert (i.kind, i.threshold_pages, i.interval_ms) == (PolicyKind.INTERVAL, 7, 50)
    assert str(i) == "interval:50" and i.enabled
    off = i.with_spec("off")
    assert not off.enabled and off.interval_ms == 50 and str(off) == "off"
    with pytest.raises(BadPolicy):
        base.with_spec("sometimes")


# ---- shrinker ------------------------------------------------------------------------------------
def test_shrinker_without_pressure_keeps_the_mm_stat_of_off() -> None:
    """The default policy, no pressure, the daemon scanning throughout (its thread at a 5 ms
    timer, and synchronous scans between requests): mm_stat stays exactly that of a device
    whose compaction is off, although the pool has pages a compaction would free."""
    quiet, off = new_registry(), new_registry()
    default = CompactionDaemon(quiet)
    assert default.policy.kind is PolicyKind.SHRINKER and isinstance(default.pressure, PsiPressure)
    daemon = CompactionDaemon(
        quiet, CompactionPolicy(interval_ms=5), pressure=SimulatedPressure(0.0)
    )
    idle = CompactionDaemon(off, CompactionPolicy(PolicyKind.OFF))
    daemon.start()
    assert daemon.stats.last_pressure is not None  # read once before the thread ran
    try:
        churn(quiet, daemon)
    finally:
        daemon.stop()
    churn(off, idle)
    assert mm_stat(quiet) == mm_stat(off)
    assert mm_stat(quiet)[6] == 0  # pages_compacted
    assert freeable(quiet) > 0  # there was something to take
    assert daemon.stats.scans > 0 and daemon.stats.runs == 0
    assert daemon.stats.last_pressure == PressureReading(0.0, "simulated")
    assert idle.stats.scans == 0


def test_shrinker_compacts_under_pressure() -> None:
    reg = new_registry()
    pressure = SimulatedPressure(0.0)
    daemon = CompactionDaemon(reg, pressure=pressure)
    churn(reg, daemon)
    before = freeable(reg)
    assert before > 0 and daemon.stats.runs == 0
    pressure.some_avg10 = PSI_SOME_AVG10_THRESHOLD - 0.01  # below: nothing
    assert daemon.scan_once() == 0
    pressure.some_avg10 = PSI_SOME_AVG10_THRESHOLD  # at the threshold: acts
    freed = daemon.scan_once()
    assert freed > 0 and freeable(reg) < before
    assert daemon.stats.runs == daemon.stats.runs_by_reason[Reason.PRESSURE] == 1
    assert daemon.stats.pages_freed == freed == mm_stat(reg)[6]
    # zs_shrinker_count is now 0: still under pressure, the pool is not compacted again
    assert freeable(reg) == 0
    assert daemon.scan_once() == 0 and daemon.stats.runs == 1


def test_shrinker_compacts_only_pools_with_freeable_pages() -> None:
    """Like shrink_slab: a pool whose zs_shrinker_count is 0 is not scanned.  Device 0 is
    fragmented, device 1 only written sequentially (no freeable page), device 2 is not
    initialised."""
    reg = new_registry(devices=2)
    reg.hot_add()
    rng = random.Random(1)
    for i in range(256):
        reg.devices[1].write(i * PAGE, mixed_page(rng))
    daemon = CompactionDaemon(reg, pressure=SimulatedPressure(50.0))
    churn(reg, None)
    assert freeable(reg, 0) > 0 and freeable(reg, 1) == 0
    before1 = mm_stat(reg, 1)
    assert daemon.scan_once() > 0
    assert daemon.stats.runs == 1
    assert mm_stat(reg, 1) == before1


def test_shrinker_compacts_a_device_near_its_mem_limit() -> None:
    reg = new_registry()
    dev = reg.devices[0]
    daemon = CompactionDaemon(reg, pressure=SimulatedPressure(0.0))
    churn(reg, None)
    assert dev.pool is not None
    used = dev.pool.total_pages
    attrs.store(dev, "mem_limit", str(2 * used * PAGE))  # far from it: nothing
    assert daemon.scan_once() == 0 and daemon.stats.runs == 0
    attrs.store(dev, "mem_limit", str((used + 4) * PAGE))  # within the margin
    freed = daemon.scan_once()
    assert freed > 0 and dev.pool.total_pages < used
    assert daemon.stats.runs_by_reason[Reason.MEM_LIMIT] == 1
    assert daemon.stats.runs_by_reason[Reason.PRESSURE] == 0
    assert mm_stat(reg)[6] == freed


def test_mem_limit_margin() -> None:
    assert not near_mem_limit(10**6, 0)  # no limit
    assert mem_limit_margin(100) == MEM_LIMIT_MARGIN_MIN_PAGES
    assert near_mem_limit(84, 100) and not near_mem_limit(83, 100)
    assert mem_limit_margin(1600) == 100  # 1/16
    assert near_mem_limit(1500, 1600) and not near_mem_limit(1499, 1600)
    assert near_mem_limit(2000, 1600)  # already over it


def test_a_failing_pressure_source_is_no_pressure() -> None:
    reg = new_registry()
    churn(reg, None)
    daemon = CompactionDaemon(reg, pressure=BrokenPressure())
    assert daemon.scan_once() == 0 and daemon.stats.runs == 0
    params = {p.name: p for p in daemon.parameters()}
    assert params["compact_pressure"].get() == "unavailable: RuntimeError: no sensor"


# ---- threshold and interval ----------------------------------------------------------------------
def test_threshold_compacts_at_and_above_pages() -> None:
    reg = new_registry()
    churn(reg, None)
    n = freeable(reg)
    assert n > 1
    daemon = CompactionDaemon(
        reg, CompactionPolicy().with_spec(f"threshold:{n + 1}"), pressure=SimulatedPressure(99.0)
    )  # pressure plays no part
    assert daemon.scan_once() == 0
    daemon.set_policy(f"threshold:{n}")
    assert daemon.scan_once() > 0
    assert daemon.stats.runs_by_reason == {
        Reason.PRESSURE: 0,
        Reason.MEM_LIMIT: 0,
        Reason.THRESHOLD: 1,
        Reason.INTERVAL: 0,
    }
    assert daemon.stats.last_pressure is None  # not consulted
    # threshold:0 is threshold:1: a pool with nothing freeable is left alone
    assert freeable(reg) == 0
    daemon.set_policy("threshold:0")
    assert daemon.scan_once() == 0 and daemon.stats.runs == 1


def test_interval_compacts_every_device_when_due() -> None:
    """interval:MS compacts every initialised device, freeable pages or not, at the first
    scan and then once MS have passed (a fake clock: no sleeping)."""
    reg = new_registry(devices=2)
    churn(reg, None)
    clock = FakeClock()
    daemon = CompactionDaemon(reg, CompactionPolicy().with_spec("interval:100"), clock=clock)
    assert daemon.scan_once() > 0
    assert daemon.stats.runs_by_reason[Reason.INTERVAL] == 2  # both devices, dev 1 is empty
    clock.advance(0.099)
    assert daemon.scan_once() == 0 and daemon.stats.runs == 2  # not due yet
    clock.advance(0.001)
    daemon.scan_once()
    assert daemon.stats.runs == 4
    # switching to interval again starts a new round at once
    daemon.set_policy("off")
    daemon.set_policy("interval:100")
    daemon.scan_once()
    assert daemon.stats.runs == 6
    assert mm_stat(reg)[6] == daemon.stats.pages_freed


def test_off_never_scans_and_explicit_compaction_still_works() -> None:
    reg = new_registry()
    daemon = CompactionDaemon(
        reg, CompactionPolicy(PolicyKind.OFF), pressure=SimulatedPressure(99.0)
    )
    churn(reg, daemon)
    assert daemon.stats.scans == 0 and daemon.stats.runs == 0
    attrs.store(reg.devices[0], "compact", "1")
    assert mm_stat(reg)[6] > 0


# ---- pages_compacted ----------------------------------------------------------------------------
def test_pages_compacted_counts_background_and_explicit_compactions() -> None:
    """mm_stat column 7 is zs_pool_stats.pages_compacted: zs_compact adds every pass to it,
    whoever asked (compact_store or the shrinker)."""
    reg = new_registry(pages=1024)
    dev = reg.devices[0]
    pressure = SimulatedPressure(0.0)
    daemon = CompactionDaemon(reg, pressure=pressure)
    churn(reg, daemon, pages=1024)
    assert mm_stat(reg)[6] == 0
    pressure.some_avg10 = 25.0
    background = daemon.scan_once()
    assert background > 0 and mm_stat(reg)[6] == background
    pressure.some_avg10 = 0.0
    for i in range(0, 1024, 3):  # fragment again
        dev.discard(i * PAGE, PAGE)
    daemon.scan_once()
    assert daemon.stats.runs == 1
    assert freeable(reg) > 0
    attrs.store(dev, "compact", "1")
    explicit = mm_stat(reg)[6] - background
    assert explicit > 0
    assert mm_stat(reg)[6] == daemon.stats.pages_freed + explicit
    assert dev.pool is not None and dev.pool.stats.pages_compacted == mm_stat(reg)[6]


# ---- the pressure sources ------------------------------------------------------------------------
PSI_TEXT = (
    "some avg10=2.50 avg60=0.80 avg300=0.10 total=123456\n"
    "full avg10=1.00 avg60=0.20 avg300=0.00 total=654\n"
)


def test_parse_psi() -> None:
    assert parse_psi_some_avg10(PSI_TEXT) == 2.5
    assert parse_psi_some_avg10("full avg10=9.00\nsome avg60=1 avg10=0.25\n") == 0.25
    for bad in ("", "full avg10=1.00\n", "some avg60=1.00\n", "some avg10=x\n"):
        with pytest.raises(ValueError):
            parse_psi_some_avg10(bad)


def test_psi_pressure_takes_the_highest_readable_source(tmp_path: Path) -> None:
    system, cgroup = tmp_path / "memory", tmp_path / "memory.pressure"
    system.write_text(PSI_TEXT)
    cgroup.write_text(PSI_TEXT.replace("2.50", "7.25"))
    got = PsiPressure([str(system), str(cgroup)]).read()
    assert got == PressureReading(7.25, str(cgroup)) and got.exceeds()
    assert got.describe() == f"some avg10=7.25 {cgroup}"
    missing = tmp_path / "absent"
    got = PsiPressure([str(missing), str(system)]).read()
    assert got == PressureReading(2.5, str(system))
    got = PsiPressure([str(missing)]).read()
    assert got.some_avg10 is None and not got.exceeds() and str(missing) in got.error
    assert got.describe().startswith("unavailable: ")


def test_own_cgroup_pressure_file(tmp_path: Path) -> None:
    proc_cgroup, mounts = tmp_path / "cgroup", tmp_path / "mounts"
    root = tmp_path / "unified"
    (root / "app" / "svc").mkdir(parents=True)
    (root / "app" / "svc" / "memory.pressure").write_text(PSI_TEXT)
    mounts.write_text(f"tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 {root} cgroup2 rw 0 0\n")
    proc_cgroup.write_text("4:memory:/other\n0::/app/svc\n")
    find = lambda: own_cgroup_pressure_file(str(proc_cgroup), str(mounts))  # noqa: E731
    assert find() == str(root / "app" / "svc" / "memory.pressure")
    proc_cgroup.write_text("0::/\n")  # the root: /proc/pressure
    assert find() is None
    proc_cgroup.write_text("0::/app\n")  # no memory.pressure there
    assert find() is None
    proc_cgroup.write_text("0::/app/svc\n")
    mounts.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n")  # no unified hierarchy
    assert find() is None
    assert own_cgroup_pressure_file(str(tmp_path / "nope"), str(mounts)) is None


def test_psi_pressure_on_this_host() -> None:
    """Whatever the host offers, a reading comes back (a value or why there is none)."""
    got = PsiPressure().read()
    assert isinstance(got, PressureReading)
    assert got.some_avg10 is not None or got.error


# ---- module parameters ---------------------------------------------------------------------------
def test_module_parameters_set_and_show_the_policy() -> None:
    reg = new_registry()
    pressure = SimulatedPressure(0.0)
    daemon = CompactionDaemon(reg, pressure=pressure)
    params: dict[str, Any] = {p.name: p for p in daemon.parameters()}  # .set: None if 0444
    writable = {n for n, p in params.items() if p.set is not None}
    assert writable == {
        "compact_policy",
        "compact_enabled",
        "compact_threshold_pages",
        "compact_interval_ms",
    }
    assert all(params[n].mode == 0o644 for n in writable)
    assert {n for n in params if n not in writable} == {
        "compact_runs",
        "compact_pages_freed",
        "compact_runs_pressure",
        "compact_runs_mem_limit",
        "compact_runs_threshold",
        "compact_runs_interval",
        "compact_cpu_us",
        "compact_pressure",
    }
    assert params["compact_policy"].get() == "shrinker"
    assert params["compact_pressure"].get() == "not read"
    for text, shown in (
        ("interval:0x20\n", "interval:32"),
        ("threshold:9", "threshold:9"),
        ("off", "off"),
        ("shrinker\n", "shrinker"),
    ):
        params["compact_policy"].set(text)
        assert params["compact_policy"].get() == shown
    assert params["compact_interval_ms"].get() == "32"  # interval:MS set the timer
    assert params["compact_threshold_pages"].get() == "9"
    for bad in ("bogus", "threshold:", "interval:-1", " off", "off\n\n"):
        with pytest.raises(OSError) as info:
            params["compact_policy"].set(bad)
        assert info.value.errno == errno.EINVAL
        assert params["compact_policy"].get() == "shrinker"
    # the deprecated knobs keep working: enabled N/Y, the threshold selects threshold:PAGES
    params["compact_enabled"].set("N")
    assert params["compact_policy"].get() == "off"
    params["compact_enabled"].set("Y")
    assert params["compact_policy"].get() == "shrinker"
    params["compact_threshold_pages"].set("0x10")
    assert params["compact_policy"].get() == "threshold:16"
    params["compact_interval_ms"].set("75")
    params["compact_policy"].set("interval:75")
    assert params["compact_policy"].get() == "interval:75"
    # the record: runs per reason and the last pressure reading
    params["compact_policy"].set("shrinker")
    churn(reg, None)
    pressure.some_avg10 = 3.0
    daemon.scan_once()
    assert params["compact_runs"].get() == params["compact_runs_pressure"].get() == "1"
    assert params["compact_runs_mem_limit"].get() == "0"
    assert params["compact_pages_freed"].get() == str(mm_stat(reg)[6])
    assert params["compact_pressure"].get() == "some avg10=3.00 simulated"
    # the CPU of the scans: grows with a scan that compacts, not under off
    used = int(params["compact_cpu_us"].get())
    assert used > 0 and used == daemon.stats.cpu_ns // 1000
    params["compact_policy"].set("off")
    daemon.scan_once()
    assert int(params["compact_cpu_us"].get()) == used


# ---- the thread ----------------------------------------------------------------------------------


def test_thread_follows_policy_changes() -> None:
    """Under off the thread exists but sleeps (no scan); a policy change wakes it; under
    pressure it compacts; stop() returns promptly."""
    reg = new_registry()
    churn(reg, None)
    pressure = SimulatedPressure(0.0)
    daemon = CompactionDaemon(
        reg, CompactionPolicy(PolicyKind.OFF, interval_ms=10), pressure=pressure
    )
    daemon.start()
    try:
        assert daemon.running and daemon.stats.last_pressure is None  # off: not consulted
        daemon.kick()
        daemon.set_policy("off")
        assert daemon.stats.scans == 0
        daemon.set_policy("shrinker")
        assert wait_for(lambda: daemon.stats.scans >= 3)
        assert daemon.stats.runs == 0
        pressure.some_avg10 = 10.0
        assert wait_for(lambda: daemon.stats.runs_by_reason[Reason.PRESSURE] >= 1)
    finally:
        t0 = time.monotonic()
        daemon.stop()
    assert not daemon.running and time.monotonic() - t0 < 2
    assert mm_stat(reg)[6] == daemon.stats.pages_freed > 0


# ---- a real mount --------------------------------------------------------------------------------
def fragment_image(m, pages: int, dev: int = 0) -> None:
    """Write mixed pages, then zero every other one (a zero page frees its object)."""
    rng = random.Random(3)
    with opened(m.image(dev)) as fd:
        for i in range(pages):
            os.pwrite(fd, mixed_page(rng), i * PAGE)
        for i in range(0, pages, 2):
            os.pwrite(fd, bytes(PAGE), i * PAGE)


@pytest.mark.fuse
def test_mount_policy_through_the_module_parameter(zmount) -> None:
    # Two devices: zram1 is fragmented only once the policy is threshold:1, so it has freeable
    # pages then even if host memory pressure made the shrinker policy compact zram0.
    m = zmount("--size", "8M", "--devices", "2", "--compact-interval", "20")
    assert m.param("compact_policy") == "shrinker"
    assert m.param("compact_enabled") == "Y" and m.param("compact_interval_ms") == "20"
    # the daemon has read the host's PSI once before serving, and reads it at every tick ...
    reading = m.param("compact_pressure")
    assert reading != "not read"
    assert reading.startswith(("some avg10=", "unavailable")), reading
    fragment_image(m, 2048)
    time.sleep(0.2)  # ~10 ticks at 20 ms
    # ... and, unless the host is under memory pressure, compacts nothing
    for reason in ("mem_limit", "threshold", "interval"):
        assert m.param(f"compact_runs_{reason}") == "0"
    compacted, runs = m.mm_stat()[6], m.param("compact_runs")
    if m.param("compact_runs_pressure") == "0":  # read last: no pressure pass ended before
        assert compacted == 0 and runs == "0", reading
    for bad in ("bogus", "threshold:", "interval:-1", "Shrinker"):
        expect_errno(errno.EINVAL, m.set_param, "compact_policy", bad)
        assert m.param("compact_policy") == "shrinker"
    m.set_param("compact_policy", "threshold:1\n")
    assert m.param("compact_policy") == "threshold:1"
    assert m.param("compact_threshold_pages") == "1"
    fragment_image(m, 2048, dev=1)
    # zram0, fragmented earlier, is compacted at the first tick, so a threshold run alone does
    # not show that zram1 was: wait for zram1's own pages_compacted
    assert wait_for(lambda: m.mm_stat(1)[6] > 0)
    assert m.param("compact_runs_threshold") != "0"
    m.set_param("compact_policy", "off")
    assert m.param("compact_enabled") == "N"

    # once a pass in flight has finished, mm_stat's pages_compacted is what the daemon freed
    def pages_compacted() -> int:
        return m.mm_stat(0)[6] + m.mm_stat(1)[6]

    assert wait_for(lambda: pages_compacted() == int(m.param("compact_pages_freed")))


@pytest.mark.fuse
def test_mount_policy_through_the_command_line(zmount, tmp_path: Path) -> None:
    m = zmount("--size", "4M", "--compact-policy", "interval:0x32")
    assert m.param("compact_policy") == "interval:50"
    assert m.param("compact_interval_ms") == "50"
    assert wait_for(lambda: m.param("compact_runs_interval") != "0")
    m = zmount("--compact-policy", "threshold:5", "--no-compact")  # the last one wins
    assert m.param("compact_policy") == "off"
    m = zmount("--compact-interval", "0", "--compact-threshold", "1")  # the former options
    assert m.param("compact_policy") == "threshold:1"
    assert m.param("compact_interval_ms") == "0"
    mnt = tmp_path / "bad"
    mnt.mkdir()
    for bad in (
        ("--compact-policy", "nope"),
        ("--compact-policy", "threshold:"),
        ("--compact-threshold", "-1"),
    ):
        res = zramfs_cli("mount", str(mnt), *bad, check=False)
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and bad[0] in lines[0] and POLICY_SYNTAX in lines[0], lines
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        assert not any(line.split()[1] == str(mnt) for line in mounts)
