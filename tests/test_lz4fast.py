"""zramfs._lz4fast: LZ4_compress_fast and LZ4_decompress_safe in one C call each, against the
Python paths in codecs (ctypes for compression, python-lz4 for decompression).

The compiled build must use them (so a build that silently lost them fails here); `Compressor`
must give exactly the bytes of `Lz4Codec.compress` (the kernel's lz4 lengths rest on them) and
`Decompressor` the bytes and the failures of `Lz4Codec.decompress`.  The pure build and a build
older than its C source use the Python paths.
"""

from __future__ import annotations

import random
import threading
from typing import Any, cast

import lz4.block as lz4_block
import pytest

from allocator import buildmode
from support.zram_data import PAGE, half_page, random_page, same_page, text_page
from zramfs import codecs
from zramfs.errors import CodecError

COMPILED = buildmode.selected("zramfs") == buildmode.COMPILED
needs_c = pytest.mark.skipif(
    codecs.lz4_binding() != "C", reason="zramfs._lz4fast is not in use (pure build)"
)


def lz4(**params: Any) -> codecs.Lz4Codec:
    c = codecs.get_codec("lz4", **params)
    assert isinstance(c, codecs.Lz4Codec)
    return c


def compressor(c: codecs.Codec) -> Any:
    """The codec's `compress`, typed loosely: the C object takes any buffer."""
    return c.compress


def pages(seed: int, n: int = 200) -> list[bytes]:
    rng = random.Random(seed)
    makers = [text_page, random_page, half_page]
    out = [makers[i % 3](rng) for i in range(n)]
    out += [same_page(0), same_page(0x0123456789ABCDEF), bytes(PAGE)]
    # short and odd lengths: partial pages never reach a codec, but the call must not care
    out += [text_page(rng)[: rng.randrange(1, PAGE)] for _ in range(20)]
    return out


def test_the_compiled_build_compresses_through_the_c_binding():
    """The binding in use follows the build: C in the compiled one, ctypes in the pure one."""
    if COMPILED:
        assert codecs.lz4_binding() == "C", codecs._LZ4_C_WHY_NOT
        assert type(codecs.get_codec("lz4").compress).__name__ == "Compressor"
        assert type(codecs.get_codec("lz4").decompress).__name__ == "Decompressor"
    else:
        assert codecs.lz4_binding() == "ctypes"
        assert "pure" in codecs._LZ4_C_WHY_NOT
        c = codecs.get_codec("lz4")
        assert c.compress.__func__ is codecs.Lz4Codec.compress  # type: ignore[attr-defined]
        assert c.decompress.__func__ is codecs.Lz4Codec.decompress  # type: ignore[attr-defined]


@needs_c
@pytest.mark.parametrize("level", [None, 1, 3, 65537])
def test_c_binding_gives_the_reference_bytes(level):
    c = lz4(level=level)
    assert type(c.compress).__name__ == "Compressor" and compressor(c).acceleration == c.level
    for page in pages(level or 0):
        ours = c.compress(page)
        assert ours == codecs.Lz4Codec.compress(c, page)  # the ctypes reference
        assert c.decompress(ours, len(page)) == page


@needs_c
def test_codecs_the_c_binding_does_not_serve():
    """lz4 with a dictionary (LZ4_loadDict + _continue) and lz4hc keep their own paths."""
    assert codecs.get_codec("lz4", dictionary=b"abc" * 100).compress.__func__ is (  # type: ignore[attr-defined]
        codecs.Lz4Codec.compress
    )
    assert codecs.get_codec("lz4hc").compress.__func__ is codecs.Lz4Codec.compress  # type: ignore[attr-defined]
    for c in (codecs.get_codec("lz4", dictionary=b"abc" * 100), codecs.get_codec("lz4hc")):
        assert c.decompress.__func__ is codecs.Lz4Codec.decompress  # type: ignore[attr-defined]


@needs_c
def test_c_binding_accepts_any_buffer_and_large_inputs():
    c = lz4()
    page = text_page(random.Random(3))
    ref = codecs.Lz4Codec.compress(c, page)
    assert compressor(c)(bytearray(page)) == ref
    assert compressor(c)(memoryview(page)) == ref
    big = random.Random(4).randbytes(100_000)  # past the stack buffer: a heap destination
    out = c.compress(big)
    assert lz4_block.decompress(out, uncompressed_size=len(big)) == big


@needs_c
def test_c_binding_rejects_bad_calls():
    comp = compressor(lz4())
    with pytest.raises(TypeError):
        comp()
    with pytest.raises(TypeError):
        comp(b"x", b"y")
    with pytest.raises(TypeError):
        comp(page=b"x")
    with pytest.raises(TypeError):
        comp("text")
    kind = type(comp)
    with pytest.raises(ValueError):
        kind(0, 1, CodecError)
    with pytest.raises(TypeError):
        kind(1, 1, "not an exception class")


@needs_c
def test_c_binding_reports_a_failed_compression_as_codec_error():
    """LZ4_compress_fast returning 0 (what it does on error) raises the codec's error class."""
    import ctypes

    # a stand-in of the same signature that returns 0, as LZ4_compress_fast does on error
    proto = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int
    )
    failing = proto(lambda *args: 0)
    address = ctypes.cast(failing, ctypes.c_void_p).value
    comp = type(compressor(lz4()))(address, 1, CodecError)
    with pytest.raises(CodecError, match="compression failed"):
        comp(b"x" * PAGE)


def in_four_threads(call: Any, work: list[bytes], expect: list[bytes]) -> None:
    """Four threads call ``call`` on every item of ``work`` five times; each result must be
    ``expect``'s (the GIL is released around the C call; each call has its own buffers)."""
    errors: list[str] = []

    def run() -> None:
        for _ in range(5):
            if [call(x) for x in work] != expect:
                errors.append("mismatch")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs_c
def test_c_binding_compresses_in_parallel_threads():
    c = lz4()
    work = pages(7, 120)
    in_four_threads(c.compress, work, [codecs.Lz4Codec.compress(c, p) for p in work])


@needs_c
def test_a_binding_built_from_another_source_is_not_used(monkeypatch):
    """zramfs/_lz4fast.c edited since the build: ctypes, and the reason says to rebuild."""
    import importlib

    mod = importlib.import_module("zramfs._lz4fast")
    monkeypatch.setattr(mod, "SOURCE_SHA256", "0" * 64)
    binding, why = codecs._load_c_binding()
    assert binding is None and "changed since the build" in why


# ---------------------------------------------------------------------------- Decompressor


def reference_decompress(c: codecs.Codec, data: bytes, out_len: int = PAGE) -> bytes:
    """python-lz4's decompress through the Python method: the reference."""
    return codecs.Lz4Codec.decompress(cast(codecs.Lz4Codec, c), data, out_len)


@needs_c
def test_c_decompressor_gives_the_reference_bytes():
    c = lz4()
    dec: Any = c.decompress
    assert type(dec).__name__ == "Decompressor"
    for page in pages(11):
        z = c.compress(page)
        assert dec(z, len(page)) == page == reference_decompress(c, z, len(page))
        assert dec(bytearray(z), len(page)) == page and dec(memoryview(z), len(page)) == page
    z = c.compress(text_page(random.Random(5)))
    assert dec(z) == dec(z, PAGE) == reference_decompress(c, z)  # out_len defaults to a page


def _error(f: Any, *args: Any) -> str:
    with pytest.raises(CodecError) as e:
        f(*args)
    return str(e.value)


@needs_c
def test_c_decompressor_fails_where_the_reference_fails():
    """Both raise the codec's error (EIO for the device): corrupt input, output that would not
    fit, and output shorter than out_len (the kernel's backend wants exactly a page)."""
    c = lz4()
    dec: Any = c.decompress
    page = text_page(random.Random(8))
    z = c.compress(page)
    for args in [(b"\xff" * 10, PAGE), (z, PAGE - 1), (z[:-5], PAGE), (b"", PAGE)]:
        ours, ref = _error(dec, *args), _error(reference_decompress, c, *args)
        assert ours.startswith("lz4: ") and ref.startswith("lz4: ")
    short = lz4_block.compress(b"abc" * 600, store_size=False)  # 1,800 bytes
    assert _error(dec, short, PAGE) == _error(reference_decompress, c, short, PAGE)
    assert "decompressed 1800 bytes, expected 4096" in _error(dec, short, PAGE)
    assert dec(short, 1800) == b"abc" * 600


@needs_c
def test_c_decompressor_rejects_bad_calls():
    dec: Any = lz4().decompress
    for args, kwargs in [((), {}), ((b"x", 1, 2), {}), ((b"x",), {"out_len": 4})]:
        with pytest.raises(TypeError):
            dec(*args, **kwargs)
    with pytest.raises(TypeError):
        dec("text", PAGE)
    with pytest.raises(ValueError):
        dec(b"x", -1)
    with pytest.raises(ValueError):
        dec(b"x", 1 << 40)
    kind = type(dec)
    with pytest.raises(ValueError):
        kind(0, CodecError)
    with pytest.raises(TypeError):
        kind(1, "not an exception class")


@needs_c
def test_c_decompressor_runs_in_parallel_threads():
    c = lz4()
    work = [c.compress(p) for p in pages(9, 120)[:120]]  # whole pages: the default out_len
    in_four_threads(c.decompress, work, [reference_decompress(c, z) for z in work])
