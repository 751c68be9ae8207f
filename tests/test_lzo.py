"""zramfs.lzo (the kernel's LZO1X-1 / LZO-RLE, pure Python) and the lzo / lzo-rle codecs.

Three kinds of evidence that the port writes the kernel's bytes:

* known answers (`KAT`): outputs of the port that were checked byte for byte against the
  kernel's lib/lzo/lzo1x_compress.c (Linux 6.x, built for user space as a throwaway test
  harness, x86-64 with the 64-bit ctz match loop) and, for the 4 KiB ones, whose
  lengths the running 6.18 kernel's zram reports too (they are among the pages of the
  differential test); they pin the compressor so a change to it fails here;
* the kernel differential (`test_lengths_match_kernel_zram`, marked ``kernel``): real
  pages written to /sys/block/zram0 with lzo and lzo-rle, the kernel's compr_data_size
  compared with len(compress(page)) page by page; and a whole device
  (`test_real_image_mm_stat_equals_kernel`): the "real" image of scripts/kernel_compare.py
  written and half discarded, mm_stat equal to the kernel's field by field;
* round trips, and a decompressor that turns every malformed stream into ValueError.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zramfs import codecs, lzo
from zramfs.errors import CodecError

PAGE = 4096

WORDS = (
    b"the page is compressed by zram into a zsmalloc object of class size "
    b"and every write frees the old handle before the new one is stored "
    b"lzo rle run length zero bytes kernel swap device block memory"
).split()


def text(seed: int, n: int = PAGE) -> bytes:
    """Text-like bytes that depend only on the seed (not on the machine's files)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += rng.choice(WORDS) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:n])


def zero_runs(seed: int) -> bytes:
    """Text with four zero runs of 4..1500 bytes (lzo-rle's run instruction)."""
    rng = random.Random(seed)
    b = bytearray(text(seed))
    for _ in range(4):
        a = rng.randrange(PAGE)
        n = rng.randrange(4, 1500)
        b[a : a + n] = bytes(len(b[a : a + n]))
    return bytes(b)


def short_matches(seed: int) -> bytes:
    """Six symbols in random order: many 3-8 byte matches (M2 instructions)."""
    rng = random.Random(seed)
    alpha = rng.randbytes(6)
    return bytes(rng.choice(alpha) for _ in range(PAGE))


CASES: dict[str, bytes] = {
    "empty": b"",
    "one": b"\x00",
    "tiny": b"abc",
    "twenty": bytes(range(20)),
    "thirty_one_zeros": bytes(31),  # < 32 bytes: the kernel never looks for matches
    "thirty_two_zeros": bytes(32),
    "hello": b"hello, hello, hello, hello, hello world!\n",
    "zeros": bytes(PAGE),
    "byte_a5": b"\xa5" * PAGE,
    "text": text(1),
    "zero_runs": zero_runs(2),
    "short_matches": short_matches(3),
    "random": random.Random(4).randbytes(PAGE),  # grows: 4116 / 4118
    "half": random.Random(5).randbytes(PAGE // 2) + text(5, PAGE // 2),
    "big_zero_middle": random.Random(6).randbytes(100)
    + bytes(3896)
    + random.Random(7).randbytes(100),
    "sixty_four_k": b"".join(text(i) for i in range(16)),  # two chunks for lzo-rle
}

#: (case, rle) -> (length, full hex when <= 48 bytes, else the first 32 hex digits of sha256)
KAT: dict[tuple[str, bool], tuple[int, str]] = {
    ("empty", False): (3, "110000"),
    ("empty", True): (5, "1101110000"),
    ("one", False): (5, "1200110000"),
    ("one", True): (7, "11011200110000"),
    ("tiny", False): (7, "14616263110000"),
    ("tiny", True): (9, "110114616263110000"),
    ("twenty", False): (24, "25000102030405060708090a0b0c0d0e0f10111213110000"),
    ("twenty", True): (26, "110125000102030405060708090a0b0c0d0e0f10111213110000"),
    ("thirty_one_zeros", False): (35, "30" + "00" * 31 + "110000"),
    ("thirty_one_zeros", True): (37, "110130" + "00" * 31 + "110000"),
    ("thirty_two_zeros", False): (28, "0200000000002a10000c000000000000000000000000000000110000"),
    ("thirty_two_zeros", True): (
        37,
        "11010200000000001bfcff0000020000000000000000000000000000000000000000110000",
    ),
    ("hello", False): (29, "0468656c6c6f2c203218000b2068656c6c6f20776f726c64210a110000"),
    ("hello", True): (31, "11010468656c6c6f2c203218000b2068656c6c6f20776f726c64210a110000"),
    ("zeros", False): (
        44,
        "02000000000020000000000000000000000000000000da10000c000000000000000000000000000000110000",
    ),
    ("zeros", True): (
        41,
        "11010200000000001ffcffff18fcfffc00020000000000000000000000000000000000000000110000",
    ),
    ("byte_a5", False): (
        44,
        "02a5a5a5a5a520000000000000000000000000000000da10000ca5a5a5a5a5a5a5a5a5a5a5a5a5a5a5110000",
    ),
    ("byte_a5", True): (
        46,
        "110102a5a5a5a5a520000000000000000000000000000000da10000ca5a5a5a5a5a5a5a5a5a5a5a5a5a5a5110000",
    ),
    ("text", False): (1722, "57fcc48fcd0650c9c0f7f72edfd7c6b5"),
    ("text", True): (1724, "22531c8308d0df26d721b724b7231167"),
    ("zero_runs", False): (830, "ba869150b6f5d5c87e5e13e91a13fa14"),
    ("zero_runs", True): (823, "02aca7641f2f228148bb6820d712d9b1"),
    ("short_matches", False): (2706, "24f997426a5c1d7551e9ac841aec6245"),
    ("short_matches", True): (2708, "81b45af708db2878c75b8604160ebbcf"),
    ("random", False): (4116, "221f0accddfe65ec6e09d82d77474213"),
    ("random", True): (4118, "1b5f2f0448e48805c9bd19c4d34482c5"),
    ("half", False): (3509, "6c12e0ddf23e508e9dfd7f4047364296"),
    ("half", True): (3511, "5f07880245cb9891dcede503a4aa131d"),
    ("big_zero_middle", False): (231, "a17aaefd5f40355070642733a317813b"),
    ("big_zero_middle", True): (218, "d44ec8efef36b5de38cc365bf4905c1e"),
    ("sixty_four_k", False): (25440, "8a7ba3e60444e5d1d2d1c41aded36cb1"),
    ("sixty_four_k", True): (25441, "58959dc58d29cbddb41510a0f3def66d"),
}


def _digest(data: bytes) -> str:
    return data.hex() if len(data) <= 48 else hashlib.sha256(data).hexdigest()[:32]


# ------------------------------------------------------------------ known answers


@pytest.mark.parametrize(
    "case,rle", sorted(KAT), ids=[f"{c}-{'rle' if r else 'lzo'}" for c, r in sorted(KAT)]
)
def test_known_answers(case: str, rle: bool) -> None:
    src = CASES[case]
    out = lzo.compress(src, rle=rle)
    assert (len(out), _digest(out)) == KAT[case, rle]
    assert lzo.decompress(out, len(src)) == src


def test_format_landmarks() -> None:
    """The pieces of the format the known answers exercise, spelled out."""
    assert lzo.compress(b"", rle=False) == bytes((0x11, 0, 0))  # end marker only
    assert lzo.compress(b"", rle=True)[:2] == bytes((17, lzo.LZO_VERSION))  # bitstream version
    # a zero run of 4096 - 5 bytes (MAX_ZERO_RUN_LENGTH = 2051 per instruction)
    z = lzo.compress(bytes(PAGE), rle=True)
    assert z[8:12] == bytes((0x18 | (2047 & 7), 0xFC, 0xFF, 2047 >> 3))
    # inputs under 32 bytes are one literal run (17 + t first byte), never searched
    assert lzo.compress(bytes(31), rle=False)[0] == 17 + 31
    assert lzo.D_BITS == 13 and lzo.M4_MAX_OFFSET_V1 == 0xBFFE


# ------------------------------------------------------------------ round trips


def _pages() -> list[bytes]:
    rng = random.Random(11)
    pages = [CASES[k] for k in CASES]
    for i in range(12):
        pages.append(text(100 + i))
        pages.append(zero_runs(200 + i))
        pages.append(short_matches(300 + i))
        b = bytearray(rng.randbytes(PAGE))
        a = rng.randrange(PAGE)
        b[a : a + rng.randrange(4, 3000)] = bytes(min(PAGE - a, 3000))
        pages.append(bytes(b[:PAGE]))
    pages += [bytes([rng.randrange(256)]) * rng.randrange(1, 200) for _ in range(10)]
    pages += [rng.randbytes(n) for n in range(0, 70)]
    pages += [bytes(n) for n in range(0, 70)]
    pages.append(bytes(3000) + b"\x01" + bytes(1095))  # run cut at 2051
    pages.append((b"\0" * 5 + b"x") * 700)  # runs of 5 zeros
    pages.append(rng.randbytes(0xBFFF + 1000))  # several chunks
    pages.append(bytes(0xBFFE) + b"tail" * 100)
    return pages


@pytest.mark.parametrize("rle", [False, True], ids=["lzo", "lzo-rle"])
def test_round_trips(rle: bool) -> None:
    for page in _pages():
        out = lzo.compress(page, rle=rle)
        assert isinstance(out, bytes)
        assert lzo.decompress(out, len(page)) == page
        # the kernel's bound: lzo1x_worst_compress(x) = x + x/16 + 64 + 3 (+2 for rle)
        assert len(out) <= len(page) + len(page) // 16 + 64 + 3 + 2


def test_both_formats_decode_with_one_decompressor_and_rle_wins_on_zero_runs() -> None:
    page = zero_runs(7)
    plain, rle = lzo.compress(page, rle=False), lzo.compress(page, rle=True)
    assert rle[:2] == b"\x11\x01" and plain[:1] != b"\x11"
    assert lzo.decompress(plain, PAGE) == lzo.decompress(rle, PAGE) == page
    assert len(rle) < len(plain)


def test_incompressible_page_grows() -> None:
    page = random.Random(12).randbytes(PAGE)
    assert len(lzo.compress(page, rle=False)) > PAGE
    assert len(lzo.compress(page, rle=True)) > PAGE


def test_accepts_bytes_like() -> None:
    page = text(13)
    ref = lzo.compress(page, rle=True)
    # what this checks: bytes-like input works at run time (the annotations say bytes)
    from_bytearray = lzo.compress(bytearray(page), rle=True)  # type: ignore[arg-type]
    from_memoryview = lzo.compress(memoryview(page), rle=True)  # type: ignore[arg-type]
    assert from_bytearray == from_memoryview == ref
    from_bytearray = lzo.decompress(bytearray(ref), PAGE)  # type: ignore[arg-type]
    from_memoryview = lzo.decompress(memoryview(ref), PAGE)  # type: ignore[arg-type]
    assert from_bytearray == from_memoryview == page


# ------------------------------------------------------------------ malformed input


def _rejects(data: bytes, out_len: int = PAGE) -> None:
    with pytest.raises(ValueError):
        lzo.decompress(data, out_len)


@pytest.mark.parametrize("rle", [False, True], ids=["lzo", "lzo-rle"])
def test_truncated_and_overlong_streams_are_rejected(rle: bool) -> None:
    page = zero_runs(21)
    data = lzo.compress(page, rle=rle)
    for n in range(len(data)):  # every truncation
        _rejects(data[:n])
    _rejects(data + b"\0")  # input not consumed
    _rejects(data, PAGE - 1)  # output overrun
    _rejects(data, PAGE + 1)  # stream ends short of out_len
    _rejects(lzo.compress(page[:100], rle=rle))  # a valid stream of a shorter page
    assert lzo.decompress(data, PAGE) == page


def test_checks_the_decompressor_defers_still_reject() -> None:
    # "abcd", M2 (length 3, distance 1, 2 trailing literals) "xy", end marker: 9 bytes.
    # The kernel's NEED_IP(2 + 3) after the M2 and NEED_OP of the short copies are
    # decided later here (IndexError, the end marker, the final length): same rejects.
    data = bytes((17 + 4,)) + b"abcd" + bytes((64 | 2, 0)) + b"xy" + bytes((0x11, 0, 0))
    assert lzo.decompress(data, 9) == b"abcddddxy"
    for n in range(len(data)):
        _rejects(data[:n], 9)
    for out_len in range(9):
        _rejects(data, out_len)
    _rejects(data[:-3] + bytes((0x11, 0)), 9)  # end marker cut after the literals
    _rejects(data[:-5] + bytes((0x11, 0, 0)), 7)  # trailing literals missing


def test_garbage_is_rejected() -> None:
    for bad in (
        b"",
        b"\x11",
        b"\x11\x00",
        b"\xff" * 40,
        b"\x00" * 64,
        b"\x11\x01\xff\xff\xff",
        bytes((0x20, 0, 0, 0, 0x11, 0, 0)),  # lookbehind
        bytes((0x12, 0x61, 0x11, 0x00, 0x01)),  # eof length != 3
        bytes((0x12, 0x61, 0x10, 0x00, 0x00, 0x00, 0x00)),
    ):  # bad M4 distance
        _rejects(bad)
    _rejects(b"\x11\x00\x00", -1)


def test_corrupted_streams_never_hang_or_crash() -> None:
    rng = random.Random(22)
    for page in (text(23), zero_runs(24), short_matches(25)):
        for rle in (False, True):
            data = lzo.compress(page, rle=rle)
            for _ in range(150):
                bad = bytearray(data)
                for _ in range(rng.randrange(1, 4)):
                    bad[rng.randrange(len(bad))] = rng.randrange(256)
                try:
                    out = lzo.decompress(bytes(bad), PAGE)
                except ValueError:
                    continue
                assert len(out) == PAGE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), out_len=st.integers(min_value=0, max_value=5000))
def test_random_bytes_only_raise_value_error(data: bytes, out_len: int) -> None:
    try:
        out = lzo.decompress(data, out_len)
    except ValueError:
        return
    assert len(out) == out_len


_VALID = [
    lzo.compress(p, rle=r) for p in (text(31), zero_runs(32), CASES["zeros"]) for r in (False, True)
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_VALID) - 1),
    cut=st.integers(0, 5000),
    flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=3),
    out_len=st.sampled_from([PAGE, PAGE - 1, PAGE + 1, 0, 100]),
)
def test_mutated_streams_only_raise_value_error(
    which: int, cut: int, flips: list[tuple[int, int]], out_len: int
) -> None:
    data = bytearray(_VALID[which][:cut])
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    try:
        out = lzo.decompress(bytes(data), out_len)
    except ValueError:
        return
    assert len(out) == out_len


# ------------------------------------------------------------------ the codecs


def test_codecs_are_registered_in_kernel_order() -> None:
    assert codecs.AVAILABLE[:2] == ("lzo-rle", "lzo")  # zcomp.c backends[]
    assert codecs.DEFAULT_ALGORITHM == "lz4"
    assert isinstance(codecs.get_codec("lzo"), codecs.LzoCodec)
    assert isinstance(codecs.get_codec("lzo-rle"), codecs.LzoRleCodec)


@pytest.mark.parametrize("name,rle", [("lzo", False), ("lzo-rle", True)])
def test_codec_round_trip_and_errors(name: str, rle: bool) -> None:
    c = codecs.get_codec(name)
    assert c.name == name and c.level is None
    page = text(41)
    data = c.compress(page)
    assert data == lzo.compress(page, rle=rle)
    assert c.decompress(data) == page
    assert c.decompress(c.compress(page[:100]), 100) == page[:100]
    for bad in (data[: len(data) // 2], b"\xff" * 40, b"", data + b"\0"):
        with pytest.raises(CodecError) as ei:
            c.decompress(bad)
        assert ei.value.errno == errno.EIO


@pytest.mark.parametrize("name", ["lzo", "lzo-rle"])
def test_codec_ignores_level_and_dictionary_like_kernel(name: str) -> None:
    """6.12-6.18 backend_lzo/backend_lzorle setup_params accept and ignore both."""
    plain = codecs.get_codec(name)
    tuned = codecs.get_codec(name, level=9, dictionary=text(42))
    assert tuned.level is None and tuned.dictionary is None
    page = text(43)
    assert tuned.compress(page) == plain.compress(page)
    assert plain.decompress(tuned.compress(page)) == page


# ------------------------------------------------------------------ the kernel


def _machine_pages() -> list[bytes]:
    """Chunks of real files of this machine (an ELF binary, documentation text)."""
    pages: list[bytes] = []
    python = os.path.realpath("/usr/bin/python3")
    try:
        with open(python, "rb") as fh:
            blob = fh.read(64 * PAGE)
        pages += [blob[o : o + PAGE] for o in range(0, len(blob) - PAGE + 1, 4 * PAGE)]
    except OSError:
        pass
    docs = sorted(glob.glob("/usr/share/doc/*/copyright"))[:200]
    text_blob = b""
    for path in docs:
        try:
            with open(path, "rb") as fh:
                text_blob += fh.read()
        except OSError:
            continue
        if len(text_blob) >= 24 * PAGE:
            break
    pages += [text_blob[o : o + PAGE] for o in range(0, len(text_blob) - PAGE + 1, 2 * PAGE)]
    return pages


def _kernel_pages() -> list[bytes]:
    rng = random.Random(51)
    pages = [CASES[k] for k in CASES if len(CASES[k]) == PAGE]
    pages += _machine_pages()
    for i in range(8):
        pages.append(text(500 + i))
        pages.append(zero_runs(600 + i))
        pages.append(short_matches(700 + i))
    for n in (1, 50, 700, 2000, 3000, 3400, 3500, 3600, 4000):  # literal run + zero tail
        pages.append(rng.randbytes(n) + bytes(PAGE - n))
    for _ in range(6):  # long zero runs inside
        b = bytearray(rng.randbytes(PAGE))
        a = rng.randrange(PAGE - 2100)
        b[a : a + rng.randrange(100, 2100)] = bytes(len(b[a : a + 2100]))
        pages.append(bytes(b[:PAGE]))
    return pages


@pytest.mark.kernel
@pytest.mark.parametrize("alg,rle", [("lzo", False), ("lzo-rle", True)])
def test_lengths_match_kernel_zram(alg: str, rle: bool) -> None:
    """Each page written alone to the kernel's zram0 (block 0, O_DIRECT, overwritten):
    compr_data_size equals len(compress(page)) — or PAGE when that length reaches the
    huge class (zram stores such pages raw); same-filled pages (0 bytes) are skipped."""
    from support.kernel import HUGE_CLASS_SIZE, kc

    try:
        kc.KernelZram(algorithm=alg).check()
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")
    pages = _kernel_pages()
    ours = [len(lzo.compress(p, rle=rle)) for p in pages]
    kernel: list[int] = []
    try:
        with kc.KernelZram(algorithm=alg, disksize=1 << 20) as kz:
            for page in pages:
                kz.write_page(0, page)
                kernel.append(kz.mm_stat()["compr_data_size"])
    except kc.KernelUnavailable as exc:  # taken by someone else since the check
        pytest.skip(f"kernel zram not usable: {exc}")
    compared = huge = 0
    mismatches = []
    for i, (k, m) in enumerate(zip(kernel, ours)):
        if k == 0:  # same-filled: no object stored
            continue
        if m >= HUGE_CLASS_SIZE:
            huge += 1
            expected = PAGE
        else:
            compared += 1
            expected = m
        if k != expected:
            mismatches.append((i, k, m))
    assert not mismatches, f"{alg}: (page, kernel, ours): {mismatches[:10]}"
    assert compared >= 40 and huge >= 1, (compared, huge)


@pytest.mark.kernel
@pytest.mark.parametrize("alg", ["lzo-rle", "lzo"])
def test_real_image_mm_stat_equals_kernel(alg: str) -> None:
    """With the kernel's own codec, a whole device agrees: scripts/kernel_compare.py's
    "real" image (files of this machine, zero/same-filled/random pages in between) written,
    every odd block discarded — mm_stat EQUAL to the kernel's field by field (the lz4
    comparison of test_kernel_diff needs tolerances only because liblz4 differs)."""
    from support.kernel import kc

    try:
        kc.KernelZram(algorithm=alg).check()
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")
    pages = kc.real_pages(2048, kc.DEFAULT_SEEDS["real"])
    try:
        c = kc.run("real", pages, algorithm=alg)
    except kc.KernelUnavailable as exc:
        pytest.skip(f"kernel zram not usable: {exc}")
    if c.kernel["discarded"]["pages_compacted"]:
        pytest.skip("the kernel compacted zram0 by itself (memory pressure)")
    for phase in ("written", "discarded"):
        assert c.model[phase] == c.kernel[phase], phase + "\n" + kc.format_table(c)
