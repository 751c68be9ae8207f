"""zramfs.attrs: names, modes and order; the kernel's parsers; every attribute's format and
every documented errno — with the device's data and statistics checked unchanged after
each rejected write."""

from __future__ import annotations

import errno
import hashlib
import os
import random

import pytest
import zstandard

from support.zram_data import PAGE, mixed_page, random_page, text_page
from zramfs import attrs, codecs, kparse
from zramfs.errors import ZramError

MiB = 1 << 20
STATE_ATTRS = (
    "disksize",
    "initstate",
    "comp_algorithm",
    "recomp_algorithm",
    "mm_stat",
    "io_stat",
    "bd_stat",
    "debug_stat",
    "backing_dev",
    "writeback_limit",
    "writeback_limit_enable",
    "writeback_batch_size",
    "compressed_writeback",
    "size",
)


@pytest.fixture
def dev(reg):
    return reg.devices[0]


@pytest.fixture
def live(reg, tmp_path):
    """An initialised device with mixed data and a backing file."""
    d = reg.devices[0]
    bf = tmp_path / "bd.img"
    bf.write_bytes(bytes(32 * PAGE))
    attrs.store(d, "backing_dev", str(bf))
    attrs.store(d, "recomp_algorithm", "algo=zstd")
    attrs.store(d, "disksize", "1M")
    rng = random.Random(1)
    for i in range(64):
        d.write(i * PAGE, mixed_page(rng))
    return d


def snapshot(d) -> tuple:
    """Everything a rejected store must leave alone: data, counters, configuration."""
    h = hashlib.sha256()
    if d.initialized:
        from zramfs.slots import ZRAM_WB

        for i in range(d.nr_pages):
            hd, f, _ = d.slot_state(i)
            if f & ZRAM_WB:  # read the file directly: a device read would count in bd_stat
                h.update(os.pread(d.backing.fd, PAGE, hd * PAGE))
            else:
                h.update(d._load_page(d._meta, i, False)[0])
        table = (bytes(d._meta.table.np_flags), bytes(d._meta.table.np_handle))
    else:
        table = None
    return (
        h.hexdigest(),
        table,
        tuple(attrs.show(d, n) for n in STATE_ATTRS),
        tuple(d.comp_algs),
        repr(d.comp_params),
        d.limit_pages,
        d.open_count,
    )


def rejected(d, name: str, text, err: int) -> None:
    before = snapshot(d)
    with pytest.raises(ZramError) as ei:
        attrs.store(d, name, text)
    assert ei.value.errno == err, (name, text, ei.value)
    assert snapshot(d) == before, f"{name}={text!r} changed the device"


# ---------------------------------------------------------------------------- the table
def test_names_modes_and_order():
    expected = [
        ("disksize", 0o644),
        ("initstate", 0o444),
        ("reset", 0o200),
        ("compact", 0o200),
        ("mem_limit", 0o200),
        ("mem_used_max", 0o200),
        ("idle", 0o200),
        ("max_comp_streams", 0o644),
        ("comp_algorithm", 0o644),
        ("bd_stat", 0o444),
        ("backing_dev", 0o644),
        ("writeback", 0o200),
        ("writeback_limit", 0o644),
        ("writeback_limit_enable", 0o644),
        ("writeback_batch_size", 0o644),
        ("compressed_writeback", 0o644),
        ("io_stat", 0o444),
        ("mm_stat", 0o444),
        ("debug_stat", 0o444),
        ("recomp_algorithm", 0o644),
        ("recompress", 0o200),
        ("algorithm_params", 0o200),
        ("size", 0o444),
        ("stat", 0o444),
    ]
    assert [(a.name, a.mode) for a in attrs.DEVICE_ATTRS.values()] == expected
    for a in attrs.DEVICE_ATTRS.values():
        assert (a.show is not None) == bool(a.mode & 0o444)
        assert (a.store is not None) == bool(a.mode & 0o200)
    assert "num_reads" not in attrs.DEVICE_ATTRS  # LTP zram03 picks the mm_stat path
    assert attrs.CONTROL_ATTRS == {"hot_add": 0o400, "hot_remove": 0o200}


def test_fresh_device_formats_byte_exact(dev):
    assert attrs.show(dev, "mm_stat") == "       0" + "        0" * 8 + "\n"
    assert attrs.show(dev, "io_stat") == "       0        0 0        0\n"
    assert attrs.show(dev, "debug_stat") == "version: 1\n0        0\n"
    assert attrs.show(dev, "bd_stat") == "       0        0        0\n"
    assert attrs.show(dev, "disksize") == "0\n"
    assert attrs.show(dev, "initstate") == "0\n"
    assert attrs.show(dev, "backing_dev") == "none\n"
    assert attrs.show(dev, "writeback_limit") == "0\n"
    assert attrs.show(dev, "writeback_limit_enable") == "0\n"
    assert attrs.show(dev, "writeback_batch_size") == "32\n"
    assert attrs.show(dev, "compressed_writeback") == "0\n"
    assert attrs.show(dev, "recomp_algorithm") == ""
    assert attrs.show(dev, "comp_algorithm") == "lzo-rle lzo [lz4] lz4hc zstd deflate \n"
    assert attrs.show(dev, "size") == "0\n"
    assert attrs.show(dev, "stat") == " ".join(["       0"] * 17) + "\n"
    assert attrs.show(dev, "max_comp_streams") == "%d\n" % (os.cpu_count() or 1)


def test_write_only_and_unknown(dev):
    with pytest.raises(PermissionError):
        attrs.show(dev, "reset")
    with pytest.raises(PermissionError):
        attrs.store(dev, "mm_stat", "1")
    with pytest.raises(ZramError):
        attrs.show(dev, "num_reads")


# ---------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    "text,value,consumed",
    [
        ("4096", 4096, 4),
        ("1k", 1024, 2),
        ("1K", 1024, 2),
        ("2m", 2 << 20, 2),
        ("2M\n", 2 << 20, 2),
        ("3g", 3 << 30, 2),
        ("1T", 1 << 40, 2),
        ("1p", 1 << 50, 2),
        ("1E", 1 << 60, 2),
        ("0x10", 16, 4),
        ("010", 8, 3),
        ("0", 0, 1),
        ("junk", 0, 0),
        ("", 0, 0),
        ("-1", 0, 0),
        ("16E", 0, 3),
        ("12 34", 12, 2),
        ("1Kb", 1024, 2),
        ("0x", 0, 1),
    ],
)
def test_memparse(text, value, consumed):
    assert attrs.memparse(text) == (value, consumed)


def test_kstrto():
    assert attrs.kstrtoull("42\n") == 42 and attrs.kstrtoull("+7") == 7
    assert attrs.kstrtoull("0x1f", 0) == 31 and attrs.kstrtoull("017", 0) == 15
    assert attrs.kstrtoull("0x1f", 16) == 31
    for bad in ("", "\n", "4 2", "42\n\n", "x", "-1", " 1", "1_0"):
        with pytest.raises(ZramError) as ei:
            attrs.kstrtoull(bad)
        assert ei.value.errno == errno.EINVAL, bad
    with pytest.raises(ZramError) as ei:
        attrs.kstrtoull(str(1 << 64))
    assert ei.value.errno == errno.ERANGE
    assert attrs.kstrtoint("-5") == -5
    with pytest.raises(ZramError) as ei:
        attrs.kstrtoint(str(1 << 31))
    assert ei.value.errno == errno.ERANGE
    with pytest.raises(ZramError) as ei:
        attrs.kstrtou16("65536")
    assert ei.value.errno == errno.ERANGE
    assert attrs.kstrtobool("on") and not attrs.kstrtobool("off") and attrs.kstrtobool("Yes")
    with pytest.raises(ZramError):
        attrs.kstrtobool("maybe")
    assert attrs.next_args(' a=1  b "c=x y" d=\n') == [
        ("a", "1"),
        ("b", None),
        ("c", "x y"),
        ("d", ""),
    ]
    assert attrs.sysfs_streq("all\n", "all") and not attrs.sysfs_streq("all\n\n", "all")


def test_kstrto_details():
    """lib/kstrtox.c: '+' only in front of the digits, base prefixes only with base 0,
    kstrtoll's '-' is followed by digits (no second sign); 6.18's kstrtobool also knows
    t/f and e(nable)/d(isable) by their first character."""
    for bad, base in (("0b1", 0), ("0o7", 0), ("0x10", 10), ("++1", 10), ("+-1", 10)):
        with pytest.raises(ZramError) as ei:
            attrs.kstrtoull(bad, base)
        assert ei.value.errno == errno.EINVAL, bad
    with pytest.raises(ZramError) as ei:
        attrs.kstrtoll("-+1")
    assert ei.value.errno == errno.EINVAL
    assert attrs.kstrtoint("-2147483648") == -(1 << 31) and attrs.kstrtouint("0x0", 0) == 0
    assert [attrs.kstrtobool(t) for t in ("t", "True", "enable", "1junk", "f", "disable", "0")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    for bad in (" 1", "", "\n", "o", "x"):
        with pytest.raises(ZramError):
            attrs.kstrtobool(bad)


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"1", (1, 1)),
        (b"1\n", (1, 2)),
        (b" \t1\n\n", (1, 5)),
        (b"0x1", (1, 3)),
        (b"010", (8, 3)),
        (b"-1", (-1, 2)),
        (b"1 junk", (1, 2)),
        (b"-2147483648", (-(1 << 31), 11)),
        (b"0" * 20 + b"\n", (0, 21)),
    ],
)
def test_proc_dointvec(data, expected):
    assert kparse.proc_dointvec(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"+1",
        b"0b1",
        b"1_0",
        b"1\x00",
        b"x",
        b"- 1",
        b"2147483648",
        b"-2147483649",
        b"99999999999999999999",
        str(1 << 64).encode(),
        b"0" * 21,
    ],
)
def test_proc_dointvec_rejects(data):
    with pytest.raises(ZramError) as ei:
        kparse.proc_dointvec(data)
    assert ei.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------- disksize / reset
@pytest.mark.parametrize(
    "text,expected",
    [
        ("1M", MiB),
        ("1m\n", MiB),
        ("10000", 12288),
        ("0x1000", 4096),
        ("1g", 1 << 30),
        ("1048576 trailing", MiB),
        ("1K", 4096),
    ],
)
def test_disksize_store(reg, text, expected):
    d = reg.devices[0]
    attrs.store(d, "disksize", text)
    assert attrs.show(d, "disksize") == f"{expected}\n"
    assert attrs.show(d, "initstate") == "1\n"
    assert attrs.show(d, "size") == f"{expected >> 9}\n"


def test_disksize_errors(dev):
    for bad in ("0", "", "junk", "-1M", "\n", "0x"):
        rejected(dev, "disksize", bad, errno.EINVAL)
    attrs.store(dev, "disksize", "1M")
    rejected(dev, "disksize", "2M", errno.EBUSY)
    rejected(dev, "disksize", "0", errno.EINVAL)


def test_reset_store(live):
    for bad, err in (
        ("0", errno.EINVAL),
        ("abc", errno.EINVAL),
        ("70000", errno.ERANGE),
        ("-1", errno.EINVAL),
        ("", errno.EINVAL),
    ):
        rejected(live, "reset", bad, err)
    live.open()
    rejected(live, "reset", "1", errno.EBUSY)
    live.close()
    attrs.store(live, "reset", "1\n")
    assert attrs.show(live, "initstate") == "0\n"
    assert attrs.show(live, "mm_stat") == "       0" + "        0" * 8 + "\n"
    assert attrs.show(live, "backing_dev") == "none\n"
    assert attrs.show(live, "recomp_algorithm") == ""
    # an uninitialised reset is allowed and reverts the algorithm (current kernels)
    attrs.store(live, "comp_algorithm", "zstd")
    attrs.store(live, "reset", "1")
    assert attrs.show(live, "comp_algorithm") == "lzo-rle lzo [lz4] lz4hc zstd deflate \n"


# ---------------------------------------------------------------------------- algorithms
def test_comp_algorithm(dev):
    algs = attrs.show(dev, "comp_algorithm").replace("[", "").replace("]", "").split()
    assert tuple(algs) == codecs.AVAILABLE
    for a in algs:  # LTP zram_compress_alg writes every one
        attrs.store(dev, "comp_algorithm", a + "\n")
        assert f"[{a}]" in attrs.show(dev, "comp_algorithm")
    assert attrs.show(dev, "comp_algorithm").endswith(" \n")
    rejected(dev, "comp_algorithm", "lzo-rle-bogus", errno.EINVAL)
    rejected(dev, "comp_algorithm", "x" * 127, errno.EINVAL)
    rejected(dev, "comp_algorithm", "x" * 128, errno.E2BIG)
    rejected(dev, "comp_algorithm", "zstd\n\n", errno.EINVAL)
    attrs.store(dev, "disksize", "1M")
    rejected(dev, "comp_algorithm", "zstd", errno.EBUSY)
    rejected(dev, "comp_algorithm", "nope", errno.EINVAL)  # unknown is checked before init


def test_recomp_algorithm(dev):
    attrs.store(dev, "recomp_algorithm", "algo=zstd")
    attrs.store(dev, "recomp_algorithm", "algo=deflate priority=3\n")
    assert attrs.show(dev, "recomp_algorithm") == (
        "#1: lzo-rle lzo lz4 lz4hc [zstd] deflate \n#3: lzo-rle lzo lz4 lz4hc zstd [deflate] \n"
    )
    for bad in (
        "algo",
        "priority=1",
        "algo=zstd priority=0",
        "algo=zstd priority=4",
        "algo=foo",
        "algo= priority=1",
        "",
        "algo=zstd priority=x",
    ):
        rejected(dev, "recomp_algorithm", bad, errno.EINVAL)
    rejected(dev, "recomp_algorithm", "algo=" + "z" * 130, errno.E2BIG)
    attrs.store(dev, "disksize", "1M")
    rejected(dev, "recomp_algorithm", "algo=lz4hc priority=2", errno.EBUSY)


def test_algorithm_params(dev, tmp_path):
    rng = random.Random(2)
    samples = [text_page(rng) for _ in range(200)]
    dict_path = tmp_path / "dict"
    # the stub wants an invariant list[bytes | bytearray | memoryview]
    dict_path.write_bytes(zstandard.train_dictionary(8192, samples).as_bytes())  # type: ignore[arg-type]
    attrs.store(dev, "comp_algorithm", "zstd")
    attrs.store(dev, "recomp_algorithm", "algo=deflate")
    attrs.store(dev, "algorithm_params", f"algo=zstd level=8 dict={dict_path}")
    assert dev.comp_params[0].level == 8 and dev.comp_params[0].dictionary
    attrs.store(dev, "algorithm_params", "priority=1 level=9 deflate.winbits=15 unknown=3")
    assert dev.comp_params[1].level == 9 and dev.comp_params[1].winbits == 15
    before = repr(dev.comp_params)
    for bad, err in (
        ("level", errno.EINVAL),
        ("level=", errno.EINVAL),
        ("algo=lz4hc", errno.EINVAL),
        ("priority=4 level=1", errno.EINVAL),
        ("priority=-1", errno.EINVAL),
        ("priority=x", errno.EINVAL),
        ("level=1x", errno.EINVAL),
        (f"dict={tmp_path / 'missing'}", errno.EINVAL),
        ("level=99999999999", errno.ERANGE),
    ):
        rejected(dev, "algorithm_params", bad, err)
    assert repr(dev.comp_params) == before
    # a write replaces every parameter of that priority
    attrs.store(dev, "algorithm_params", "priority=1 level=3")
    assert dev.comp_params[1].winbits is None
    attrs.store(dev, "disksize", "1M")
    comp = dev._meta.comps[0]
    assert comp.name == "zstd" and comp.level == 8 and comp.dictionary
    for i in range(32):
        dev.write(i * PAGE, samples[i])
    assert all(dev.read(i * PAGE, PAGE) == samples[i] for i in range(32))
    rejected(dev, "algorithm_params", "priority=0 level=1", errno.EBUSY)


def test_bad_params_fail_disksize_and_change_nothing(dev):
    attrs.store(dev, "comp_algorithm", "deflate")
    attrs.store(dev, "algorithm_params", "deflate.winbits=30")
    rejected(dev, "disksize", "1M", errno.EINVAL)
    assert not dev.initialized
    attrs.store(dev, "algorithm_params", "level=1")
    attrs.store(dev, "disksize", "1M")


def test_max_comp_streams_accepts_anything(dev):
    for text in ("4", "junk", "", "-1"):
        attrs.store(dev, "max_comp_streams", text)
    assert attrs.show(dev, "max_comp_streams") == "%d\n" % (os.cpu_count() or 1)


# ---------------------------------------------------------------------------- limits
def test_mem_limit_and_mem_used_max(live):
    attrs.store(live, "mem_limit", "1000")
    assert attrs.show(live, "mm_stat").split()[3] == "4096"
    attrs.store(live, "mem_limit", "2M\n")
    assert int(attrs.show(live, "mm_stat").split()[3]) == 2 * MiB
    attrs.store(live, "mem_limit", "0")
    assert attrs.show(live, "mm_stat").split()[3] == "0"
    for bad in ("junk", "", "-5", "M"):
        rejected(live, "mem_limit", bad, errno.EINVAL)
    for bad in ("1", "junk", "", "-0", "0x0 "):
        rejected(live, "mem_used_max", bad, errno.EINVAL)
    attrs.store(live, "mem_used_max", "0\n")
    f = attrs.show(live, "mm_stat").split()
    assert f[4] == f[2]


def test_mem_limit_uninitialised_is_fine(dev):
    attrs.store(dev, "mem_limit", "1M")
    attrs.store(dev, "mem_used_max", "0")
    assert attrs.show(dev, "mm_stat").split()[3] == str(MiB)


# ---------------------------------------------------------------------------- maintenance
def test_compact_and_idle(dev):
    rejected(dev, "compact", "1", errno.EINVAL)
    rejected(dev, "idle", "all", errno.EINVAL)
    attrs.store(dev, "disksize", "1M")
    attrs.store(dev, "compact", "anything")
    for ok in ("all", "all\n", "60", "0x10", "010", "0"):
        attrs.store(dev, "idle", ok)
    for bad in ("al", "abc", "-1", "", str(1 << 32), "1.5"):
        rejected(dev, "idle", bad, errno.EINVAL)


def test_backing_dev_attr(dev, tmp_path):
    f = tmp_path / "bd"
    f.write_bytes(bytes(8 * PAGE))
    rejected(dev, "backing_dev", str(tmp_path / "nope"), errno.ENOENT)
    rejected(dev, "backing_dev", "", errno.ENOENT)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    rejected(dev, "backing_dev", str(empty), errno.EINVAL)
    attrs.store(dev, "backing_dev", f"{f}\n")
    assert attrs.show(dev, "backing_dev") == f"{f}\n"
    attrs.store(dev, "disksize", "1M")
    rejected(dev, "backing_dev", str(f), errno.EBUSY)


def test_writeback_attr(reg, dev, live, tmp_path):
    new_id = reg.hot_add()
    other = reg.devices[new_id]
    rejected(other, "writeback", "huge", errno.EINVAL)  # uninitialised
    attrs.store(other, "disksize", "1M")
    rejected(other, "writeback", "huge", errno.ENODEV)  # no backing device
    n = live.nr_pages
    for bad, err in (
        ("foo", errno.EINVAL),
        ("type=foo", errno.EINVAL),
        ("type=", errno.EINVAL),
        (f"page_index={n}", errno.ERANGE),
        ("page_index=abc", errno.EINVAL),
        ("page_index=", errno.EINVAL),
        ("page_indexes=5", errno.EINVAL),
        ("page_indexes=3-1", errno.ERANGE),
        (f"page_indexes=0-{n}", errno.ERANGE),
        ("page_indexes=a-3", errno.EINVAL),
        ("page_index=1 bogus", errno.EINVAL),
    ):
        rejected(live, "writeback", bad, err)
    before = snapshot(live)
    attrs.store(live, "writeback", "")  # nothing to do
    attrs.store(live, "writeback", "unknown=1")  # unknown keys ignored
    assert snapshot(live) == before
    attrs.store(live, "writeback", "type=huge")
    bd = [int(x) for x in attrs.show(live, "bd_stat").split()]
    assert bd[0] == bd[2] > 0
    assert attrs.show(live, "mm_stat").split()[7] == "0"  # no huge pages left in RAM
    # a mode word ends parsing: the page_index after it is ignored
    attrs.store(live, "idle", "all")
    attrs.store(live, "writeback", "page_index=1 page_indexes=2-3")
    with pytest.raises(ZramError) as ei:  # not EINVAL: parsing stopped at "idle"
        attrs.store(live, "writeback", "idle page_index=abc")
    assert ei.value.errno == errno.ENOSPC  # more idle blocks than the 32-block file holds
    assert int(attrs.show(live, "bd_stat").split()[0]) == 32


def test_writeback_limit_attrs(live):
    rejected(live, "writeback_limit", "x", errno.EINVAL)
    rejected(live, "writeback_limit", "-1", errno.EINVAL)
    rejected(live, "writeback_limit_enable", "yes", errno.EINVAL)
    attrs.store(live, "writeback_limit_enable", "5")
    assert attrs.show(live, "writeback_limit_enable") == "1\n"
    rejected(live, "writeback", "huge", errno.EIO)  # budget 0
    attrs.store(live, "writeback_limit", "1\n")
    assert attrs.show(live, "writeback_limit") == "1\n"
    with pytest.raises(ZramError) as ei:
        attrs.store(live, "writeback", "huge")
    assert ei.value.errno == errno.EIO
    assert attrs.show(live, "writeback_limit") == "0\n"
    assert attrs.show(live, "bd_stat").split()[2] == "1"
    rejected(live, "writeback_batch_size", "0", errno.EINVAL)
    rejected(live, "writeback_batch_size", "x", errno.EINVAL)
    attrs.store(live, "writeback_batch_size", "8")
    assert attrs.show(live, "writeback_batch_size") == "8\n"


def test_compressed_writeback_attr(reg, tmp_path):
    d = reg.devices[0]
    rejected(d, "compressed_writeback", "maybe", errno.EINVAL)
    attrs.store(d, "compressed_writeback", "1")
    assert attrs.show(d, "compressed_writeback") == "1\n"
    attrs.store(d, "disksize", "1M")
    rejected(d, "compressed_writeback", "0", errno.EBUSY)


def test_recompress_attr(dev):
    rejected(dev, "recompress", "type=huge", errno.EINVAL)  # uninitialised
    attrs.store(dev, "recomp_algorithm", "algo=zstd")
    attrs.store(dev, "disksize", "1M")
    rng = random.Random(3)
    for i in range(16):
        dev.write(i * PAGE, random_page(rng) if i % 2 else text_page(rng))
    for bad, err in (
        ("type", errno.EINVAL),
        ("threshold=99999", errno.EINVAL),
        ("max_pages=x", errno.EINVAL),
        ("threshold=-1", errno.EINVAL),
        ("algo=lz4hc", errno.EINVAL),
        ("priority=2", errno.EINVAL),
        ("priority=-1", errno.EINVAL),
        (f"threshold={dev.pool.huge_class_size}", errno.EINVAL),
    ):
        rejected(dev, "recompress", bad, err)
    attrs.store(dev, "recompress", "type=huge")
    attrs.store(dev, "recompress", "type=idle threshold=2000")
    attrs.store(dev, "recompress", "type=huge algo=zstd max_pages=2 priority=0")


# ---------------------------------------------------------------------------- stats formats
def test_mm_stat_fields_and_widths(live):
    s = live.stats()
    line = attrs.show(live, "mm_stat")
    assert line.endswith("\n") and line.count("\n") == 1
    fields = line.split()
    assert len(fields) == 9
    assert int(fields[0]) == s.pages_stored * PAGE
    assert int(fields[1]) == s.compr_data_size
    assert int(fields[2]) == live.pool.total_pages * PAGE and int(fields[2]) % PAGE == 0
    assert int(fields[5]) == s.same_pages and int(fields[7]) == s.huge_pages
    expected = "%8d %8d %8d %8d %8d %8d %8d %8d %8d\n" % tuple(int(x) for x in fields)
    assert line == expected


def test_block_stat_counts_requests(reg):
    d = reg.devices[0]
    attrs.store(d, "disksize", "1M")
    d.write(0, b"x" * (3 * PAGE))
    d.write(5, b"y")
    d.read(0, PAGE)
    d.flush()
    f = attrs.show(d, "stat").split()
    assert len(f) == 17
    assert int(f[0]) == 1 and int(f[2]) == PAGE >> 9  # read ios, sectors
    assert int(f[4]) == 2 and int(f[6]) == (3 * PAGE >> 9) + 1
    assert int(f[15]) == 1  # flushes
    d.discard(0, PAGE)
    assert attrs.show(d, "stat").split()[11] == "0"  # zram does not account discards
    assert attrs.show(d, "io_stat") == "       0        0 0        1\n"


# ---------------------------------------------------------------------------- zram-control
def test_hot_add_hot_remove_text(reg):
    assert attrs.hot_add_show(reg) == "1\n"
    for bad, err in (
        ("abc", errno.EINVAL),
        ("-1", errno.EINVAL),
        ("", errno.EINVAL),
        ("99", errno.ENODEV),
        ("99999999999", errno.ERANGE),
        ("1.0", errno.EINVAL),
    ):
        with pytest.raises(ZramError) as ei:
            attrs.hot_remove_store(reg, bad)
        assert ei.value.errno == err, bad
    assert list(reg.devices) == [0, 1]
    reg.devices[1].open()
    with pytest.raises(ZramError) as ei:
        attrs.hot_remove_store(reg, b"1\n")
    assert ei.value.errno == errno.EBUSY
    reg.devices[1].close()
    attrs.hot_remove_store(reg, b"1\n")
    assert list(reg.devices) == [0]


def test_block_state(reg):
    d = reg.devices[0]
    assert attrs.format_block_state(d) == ""
    attrs.store(d, "disksize", "1M")
    d.clock = lambda: 75.5
    d.write(0, bytes(PAGE))
    d.write(3 * PAGE, random_page(random.Random(4)))
    attrs.store(d, "idle", "all")
    assert attrs.format_block_state(d) == (
        "           0           75.000000 s.....\n           3           75.000000 ..hi..\n"
    )
