"""zramfs.codecs: every backend round-trips pages, honours levels and dictionaries, keeps
per-thread contexts, and reports corrupt input as CodecError (EIO)."""

from __future__ import annotations

import errno
import random
import threading
import zlib

import pytest
import zstandard

from support.zram_data import PAGE, corpus, half_page, random_page, same_page, text_page
from zramfs import codecs
from zramfs.errors import CodecError, ZramError

ALGS = codecs.AVAILABLE


def test_available_lists_only_real_backends_in_kernel_order():
    assert ALGS == ("lzo-rle", "lzo", "lz4", "lz4hc", "zstd", "deflate")
    assert codecs.DEFAULT_ALGORITHM in ALGS
    for name in ALGS:
        assert codecs.get_codec(name).name == name


@pytest.mark.parametrize("name", ALGS)
def test_roundtrip_mixed_pages(name):
    rng = random.Random(1)
    c = codecs.get_codec(name)
    for page in [text_page(rng) for _ in range(20)] + [
        random_page(rng),
        half_page(rng),
        same_page(0),
        same_page(0xDEADBEEF),
    ]:
        data = c.compress(page)
        assert isinstance(data, bytes)
        assert c.decompress(data) == page


@pytest.mark.parametrize("name", ALGS)
def test_text_compresses_random_does_not(name):
    rng = random.Random(2)
    c = codecs.get_codec(name)
    assert len(c.compress(text_page(rng))) < PAGE * 0.7
    # incompressible input may come out larger than the page (the kernel gives 2*PAGE_SIZE)
    assert len(c.compress(random_page(rng))) >= PAGE - 64


def test_default_levels_match_kernel_backends():
    assert codecs.get_codec("lz4").level == 1  # LZ4_ACCELERATION_DEFAULT
    assert codecs.get_codec("lz4hc").level == 9  # LZ4HC_DEFAULT_CLEVEL
    assert codecs.get_codec("zstd").level == 3  # ZSTD_CLEVEL_DEFAULT
    assert codecs.get_codec("deflate").level == zlib.Z_DEFAULT_COMPRESSION
    deflate = codecs.get_codec("deflate")
    assert isinstance(deflate, codecs.DeflateCodec) and deflate.winbits == 11  # DEFLATE_DEF_WINBITS


def test_levels_change_output():
    rng = random.Random(3)
    pages = [text_page(rng) for _ in range(30)]

    def total(name, level):
        c = codecs.get_codec(name, level=level)
        out = [c.compress(p) for p in pages]
        assert [c.decompress(o) for o in out] == pages
        return sum(map(len, out))

    assert total("zstd", 19) < total("zstd", 1)
    assert total("lz4", 32) > total("lz4", 1)  # acceleration trades ratio for speed
    assert total("lz4hc", 12) <= total("lz4hc", 3)
    assert total("deflate", 9) <= total("deflate", 1)


def test_deflate_is_raw_with_window_bits():
    page = text_page(random.Random(4))
    c = codecs.get_codec("deflate", winbits=15)
    data = c.compress(page)
    assert zlib.decompress(data, -15) == page  # raw stream, no zlib header
    with pytest.raises(ZramError) as ei:
        codecs.get_codec("deflate", winbits=20)
    assert ei.value.errno == errno.EINVAL


# The kernel's lzo backends ignore a dictionary (backend_lzo.c / backend_lzorle.c, 6.12+).
@pytest.mark.parametrize("name", [a for a in ALGS if not a.startswith("lzo")])
def test_dictionary_improves_ratio_and_is_required(name):
    rng = random.Random(5)
    text = corpus()
    samples = [text_page(rng) for _ in range(300)]
    if name == "zstd":
        # the stub wants an invariant list[bytes | bytearray | memoryview]
        dictionary = zstandard.train_dictionary(16384, samples).as_bytes()  # type: ignore[arg-type]
    else:
        dictionary = text[:32768]
    plain = codecs.get_codec(name)
    with_dict = codecs.get_codec(name, dictionary=dictionary)
    pages = [text_page(rng) for _ in range(40)]
    plain_total = sum(len(plain.compress(p)) for p in pages)
    dict_out = [with_dict.compress(p) for p in pages]
    assert [with_dict.decompress(d) for d in dict_out] == pages
    assert sum(map(len, dict_out)) < plain_total
    # the same objects cannot be decoded without the dictionary
    failures = 0
    for d, p in zip(dict_out, pages):
        try:
            failures += plain.decompress(d) != p
        except CodecError:
            failures += 1
    assert failures > 0


@pytest.mark.parametrize("name", ALGS)
def test_corrupt_and_short_input_is_codec_error(name):
    rng = random.Random(6)
    c = codecs.get_codec(name)
    page = text_page(rng)
    data = c.compress(page)
    for bad in (data[: len(data) // 2], b"\xff" * 40, b""):
        with pytest.raises(CodecError) as ei:
            out = c.decompress(bad)
            # some truncations decode "successfully" to fewer bytes: that is an error too
            assert len(out) == PAGE
            raise AssertionError("decoded corrupt input")
        assert ei.value.errno == errno.EIO
    # a valid object of a shorter page is not a full page
    short = c.compress(page[:100])
    with pytest.raises(CodecError):
        c.decompress(short)


def test_unknown_algorithm_is_einval():
    for name in ("lzo-rle-x", "", "LZ4", "842"):
        with pytest.raises(ZramError) as ei:
            codecs.get_codec(name)
        assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", ALGS)
def test_one_codec_shared_by_threads(name):
    """Per-thread contexts: concurrent use of one codec object never mixes streams."""
    c = codecs.get_codec(name, level=None)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                p = text_page(rng) if rng.random() < 0.8 else random_page(rng)
                if c.decompress(c.compress(p)) != p:
                    raise AssertionError("round trip mismatch")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_zstd_contexts_are_pooled_and_reused():
    """Contexts come from a pool shared by every thread (a FUSE callback may run on a fresh
    thread state, where a threading.local would be empty): reused across calls and threads,
    never lent to two calls at once, and a read builds no compressor."""
    c = codecs.get_codec("zstd")
    assert isinstance(c, codecs.ZstdCodec)
    page = text_page(random.Random(7))
    assert c._cctxs.qsize() == 1 and c._dctxs.qsize() == 1  # built (and checked) up front
    for _ in range(3):
        assert c.decompress(c.compress(page)) == page
    assert c._cctxs.qsize() == 1 and c._dctxs.qsize() == 1  # reused, not rebuilt
    t = threading.Thread(target=lambda: c.decompress(c.compress(page)))
    t.start()
    t.join()
    assert c._cctxs.qsize() == 1 and c._dctxs.qsize() == 1  # another thread borrows them
    held = c._cctxs.get_nowait()  # "in use" by someone else
    assert c.decompress(c.compress(page)) == page
    assert c._cctxs.qsize() == 1 and c._cctxs.get_nowait() is not held  # a second one
    blob = c.compress(page)
    d = codecs.get_codec("zstd")
    assert isinstance(d, codecs.ZstdCodec)
    d._cctxs.get_nowait()
    assert d.decompress(blob) == page and d._cctxs.qsize() == 0  # a read builds no compressor


def test_parameters_are_checked_when_the_codec_is_created():
    assert codecs.get_codec("zstd", level=100).level == zstandard.MAX_COMPRESSION_LEVEL  # clamped
    for level in (10, -2):
        with pytest.raises(ZramError) as ei:
            codecs.get_codec("deflate", level=level)
        assert ei.value.errno == errno.EINVAL
    c = codecs.get_codec("lz4", level=-3)  # acceleration < 1 means the default
    page = text_page(random.Random(8))
    assert c.decompress(c.compress(page)) == page


def test_lz4_uses_lz4_compress_fast_like_the_kernel():
    """backend_lz4 calls LZ4_compress_fast (byU16 table under 64 KiB), not the stream API:
    the lengths must be those of LZ4_compress_fast, which differ from lz4.block.compress."""
    import lz4.block

    c = codecs.get_codec("lz4")
    assert isinstance(c, codecs.Lz4Codec)
    assert codecs._LZ4_COMPRESS_FAST is not None and c._fast is not None
    rng = random.Random(9)
    pages = [text_page(rng) for _ in range(50)]
    ours = [c.compress(p) for p in pages]
    assert [c.decompress(o) for o in ours] == pages
    # bytes-like pages work at run time (the annotation says bytes)
    from_bytearray = c.compress(bytearray(pages[0]))  # type: ignore[arg-type]
    from_memoryview = c.compress(memoryview(pages[0]))  # type: ignore[arg-type]
    assert from_bytearray == from_memoryview == ours[0]
    stream = [len(lz4.block.compress(p, store_size=False)) for p in pages]
    assert sum(len(o) != s for o, s in zip(ours, stream)) > 25
    # acceleration is the level, as the kernel passes params->level
    fast8 = codecs.get_codec("lz4", level=8)
    assert sum(len(fast8.compress(p)) for p in pages) > sum(map(len, ours))
    # with a dictionary the stream API is the kernel's path too (LZ4_loadDict + _continue)
    with_dict = codecs.get_codec("lz4", dictionary=corpus()[:4096])
    assert isinstance(with_dict, codecs.Lz4Codec) and with_dict._fast is None


def test_lz4_exact_path_is_the_one_installed():
    """CI's guard on the kernel comparisons: python-lz4 as installed lets us bind
    LZ4_compress_fast.  This fails when an upgrade of python-lz4 (or a missing liblz4) leaves
    only lz4.block, whose compressed lengths are not the kernel's."""
    import lz4

    assert codecs.lz4_path() == codecs.LZ4_PATH_EXACT, (
        f"lz4 has fallen back to lz4.block (python-lz4 {lz4.__version__}): {codecs._LZ4_BINDING}"
    )
    assert codecs.lz4_path_warning() is None
    assert ".so" in codecs._LZ4_BINDING  # the library it came from
    c = codecs.get_codec("lz4")
    assert isinstance(c, codecs.Lz4Codec) and c._fast is codecs._LZ4_COMPRESS_FAST


def test_lz4_binding_failure_is_reported_with_the_reason(monkeypatch):
    """Neither python-lz4's _block module nor a system liblz4 exports LZ4_compress_fast: the
    loader says why, for each place it looked."""
    import ctypes
    import ctypes.util

    def no_library(path, *args, **kwargs):
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "liblz4.so.1")
    fn, why = codecs._load_lz4_compress_fast()
    assert fn is None
    assert "_block" in why and "liblz4.so.1" in why
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    fn, why = codecs._load_lz4_compress_fast()
    assert fn is None and "_block" in why


def simulate_lz4_binding_lost(monkeypatch) -> None:
    monkeypatch.setattr(codecs, "_LZ4_COMPRESS_FAST", None)
    monkeypatch.setattr(codecs, "_LZ4_BINDING", "simulated: no LZ4_compress_fast")


def test_lz4_fallback_is_visible(monkeypatch):
    """Without the binding the codec falls back to lz4.block, and everything that reports the
    path says so: lz4_path() and the start-up warning (with the reason)."""
    import lz4.block

    simulate_lz4_binding_lost(monkeypatch)
    assert codecs.lz4_path() == codecs.LZ4_PATH_INEXACT
    warning = codecs.lz4_path_warning()
    assert warning is not None and "\n" not in warning
    assert "lz4.block" in warning and "simulated: no LZ4_compress_fast" in warning
    c = codecs.get_codec("lz4")
    assert isinstance(c, codecs.Lz4Codec) and c._fast is None
    rng = random.Random(10)
    pages = [text_page(rng) for _ in range(5)]
    for p in pages:
        assert c.compress(p) == lz4.block.compress(p, store_size=False)
        assert c.decompress(c.compress(p)) == p
