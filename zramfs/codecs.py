"""Compression backends for zram pages: one interface, several implementations.

Owns the equivalent of the kernel's zcomp layer (drivers/block/zram/zcomp.c and the
backend_*.c files of the custom-backend era, 6.12+): a backend compresses one 4 KiB page
into a buffer that may be larger than the page (the kernel hands compress() a
2 * PAGE_SIZE destination), and decompresses an object back into exactly one page.

Shaped like CPython's Lib/selectors.py: an abstract base (`Codec`) with the contract,
one concrete class per library, a table of the backends that really work here, and a
module-level choice of the default.  The kernel keeps one stream per CPU; Python has
threads, and a codec object is shared by every thread of a device.  Stateful library
contexts (zstd's ZSTD_CCtx/ZSTD_DCtx wrappers) are lent from a pool inside the codec, one
context per concurrent user, rather than kept per thread: FUSE callbacks may run on a fresh
Python thread state per request (see zramfs.fusethreads), where a `threading.local` would
be empty and the ~35 µs of context construction paid on every page.

Parameters follow `algorithm_params` (docs/zram.md, "algorithm_params"): `level`
(per-backend meaning, as in the kernel: lz4 acceleration, lz4hc/zstd/deflate compression
level), `dictionary` (raw bytes; zstd uses it as an auto-detected dictionary, lz4/lz4hc as a
preset history like LZ4_loadDict, deflate as a zdict) and deflate's `winbits`.  lzo and
lzo-rle take neither (their setup_params accepts and ignores both in 6.12 - 6.18).

lzo and lzo-rle (the kernel's default algorithm) are zramfs.lzo, a pure-Python port of
lib/lzo that writes the kernel's bytes exactly; it is ~100x slower than the C libraries
behind the other backends, so the default here stays lz4.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, cast

import lz4.block
import zstandard

from . import cmodules
from . import lzo as _lzo
from .errors import CodecError, InvalidInput

PAGE_SIZE = 4096


class Codec(ABC):
    """One compression algorithm with fixed parameters, safe to share between threads."""

    name: ClassVar[str]
    #: level used when algorithm_params gives none (the kernel backend's default)
    default_level: ClassVar[int | None] = None

    def __init__(self, *, level: int | None = None, dictionary: bytes | None = None) -> None:
        self.level: int | None = self.default_level if level is None else level
        self.dictionary: bytes | None = dictionary or None
        self._local = threading.local()

    @abstractmethod
    def compress(self, page: bytes) -> bytes:
        """Compress one page; the result may be longer than the input (incompressible)."""

    @abstractmethod
    def decompress(self, data: bytes, out_len: int = PAGE_SIZE) -> bytes:
        """Decompress into exactly `out_len` bytes, or raise CodecError."""

    def __repr__(self) -> str:
        extra = f", dict={len(self.dictionary)}B" if self.dictionary else ""
        return f"<{type(self).__name__} {self.name} level={self.level}{extra}>"


#: ``lz4_path`` values: which call compresses an lz4 page that has no dictionary.
LZ4_PATH_EXACT = "LZ4_compress_fast"
LZ4_PATH_INEXACT = "lz4.block (lengths differ from the kernel)"


def _load_lz4_compress_fast() -> tuple[Callable[..., int] | None, str]:
    """(LZ4_compress_fast() from the liblz4 that python-lz4 carries, or the system's; the
    library it came from), or (None, why it could not be bound).

    Why not lz4.block.compress: python-lz4 compresses through LZ4_resetStream +
    LZ4_compress_fast_continue, and a fresh *stream* hashes with the byU32 table, while
    LZ4_compress_fast() — what the kernel's backend_lz4 calls — uses the byU16 table for
    inputs under 64 KiB.  The two produce different lengths for most real pages, and the
    lengths decide size classes, HUGE pages and every mm_stat number.
    """
    import ctypes.util

    candidates: list[str | None] = []
    try:  # a private module of python-lz4: an upgrade may move or rename it
        from lz4.block import _block

        candidates.append(getattr(_block, "__file__", None))
    except ImportError as exc:
        tried = [f"lz4.block._block: {exc}"]
    else:
        tried = []
    candidates.append(ctypes.util.find_library("lz4"))
    for path in candidates:
        if not path:
            continue
        try:
            fn = ctypes.CDLL(path).LZ4_compress_fast
        except (OSError, AttributeError) as exc:
            tried.append(f"{path}: {exc}")
            continue
        fn.restype = ctypes.c_int
        # No argtypes: converting through them costs ~0.4 µs a call.  Every call passes
        # (bytes, a ctypes buffer, int, int, int), which ctypes maps to (char *, char *, int,
        # int, int) by itself — never a bare Python int for a pointer.
        return fn, path
    if not any(candidates):
        tried.append("no liblz4 found (python-lz4's _block module, ctypes.util.find_library)")
    return None, "; ".join(tried)


_LZ4_COMPRESS_FAST, _LZ4_BINDING = _load_lz4_compress_fast()


def _load_lz4_decompress_safe() -> Callable[..., int] | None:
    """LZ4_decompress_safe() from the library LZ4_compress_fast came from, for the C path's
    `Decompressor` (python-lz4's decompress calls the same function; tests/test_lz4fast.py
    holds the two to the same bytes and errors), or None."""
    if _LZ4_COMPRESS_FAST is None:
        return None
    try:
        return cast(Callable[..., int], ctypes.CDLL(_LZ4_BINDING).LZ4_decompress_safe)
    except (OSError, AttributeError):
        return None


_LZ4_DECOMPRESS_SAFE = _load_lz4_decompress_safe()
_LZ4_DST_LEN = 2 * PAGE_SIZE  # zcomp hands compress() a 2 * PAGE_SIZE destination


def _load_c_binding() -> tuple[Any, str]:
    """(zramfs._lz4fast, "") when Lz4Codec may compress through it, or (None, why not).

    The C module calls the same LZ4_compress_fast as the ctypes path, with no interpreted
    frame and no argument conversion around it (~0.6 µs of a 4 KiB write).  It belongs to the
    compiled build and is used as `zramfs.cmodules` rules; otherwise ctypes.
    """
    if _LZ4_COMPRESS_FAST is None:
        return None, "LZ4_compress_fast is not bound"
    return cmodules.load("_lz4fast")


_LZ4_C, _LZ4_C_WHY_NOT = _load_c_binding()


def lz4_binding() -> str:
    """How the kernel-exact lz4 path is called here: "C" (zramfs._lz4fast), "ctypes", or
    "none" (no LZ4_compress_fast: the inexact path, `lz4_path`)."""
    if _LZ4_COMPRESS_FAST is None:
        return "none"
    return "C" if _LZ4_C is not None else "ctypes"


def lz4_path() -> str:
    """How lz4 pages without a dictionary are compressed in this process: `LZ4_PATH_EXACT`
    (LZ4_compress_fast, the kernel's call: the kernel's compressed lengths, up to differences
    between LZ4 releases) or `LZ4_PATH_INEXACT` (python-lz4's stream API: other lengths for
    most pages, so other size classes, huge pages and mm_stat).  Codecs take the path when
    they are created; this reads the same module state they do."""
    return LZ4_PATH_EXACT if _LZ4_COMPRESS_FAST is not None else LZ4_PATH_INEXACT


def lz4_path_warning() -> str | None:
    """One line for the mount's start-up when lz4 cannot give the kernel's lengths, else None."""
    if _LZ4_COMPRESS_FAST is not None:
        return None
    why = _LZ4_BINDING or "not bound"
    return (
        f"lz4 compresses through {LZ4_PATH_INEXACT}: LZ4_compress_fast could not be "
        f"bound ({why}); compr_data_size, mem_used_total and huge_pages will not match "
        f"a kernel's"
    )


class Lz4Codec(Codec):
    """LZ4 block format, no size header (the page size is known), like backend_lz4.c.

    Without a dictionary the page goes through LZ4_compress_fast(level as acceleration),
    exactly the kernel's call; the ctypes call releases the GIL, so each thread has its own
    output buffer.  Where that function cannot be bound it falls back to lz4.block.compress,
    whose lengths differ; `lz4_path()` says which one is in use, and the mount shows it
    (module parameter ``lz4_path``, ``zramfs status``, a warning at start-up).  With a
    dictionary the kernel uses LZ4_loadDict + LZ4_compress_fast_continue, which is what
    lz4.block.compress(dict=...) does.
    """

    name = "lz4"
    default_level = 1  # LZ4_ACCELERATION_DEFAULT; the kernel passes level as acceleration

    def __init__(self, *, level: int | None = None, dictionary: bytes | None = None) -> None:
        super().__init__(level=level, dictionary=dictionary)
        kwargs: dict[str, object] = {"store_size": False}
        if self.level is not None and self.level > 1:
            kwargs.update(mode="fast", acceleration=self.level)
        if self.dictionary:
            kwargs["dict"] = self.dictionary
        self._ckw = kwargs
        self._dkw: dict[str, object] = {"dict": self.dictionary} if self.dictionary else {}
        self._fast = _LZ4_COMPRESS_FAST if type(self) is Lz4Codec and not self.dictionary else None
        if self._fast is not None and _LZ4_C is not None:
            # The same call in C: an instance attribute `compress`, found before the method,
            # so a page is one C call from the device (the method stays the reference, and
            # tests/test_lz4fast.py checks the two agree).
            address = ctypes.cast(cast(Any, self._fast), ctypes.c_void_p).value or 0
            compressor = _LZ4_C.Compressor(address, self.level, CodecError)
            self.compress = compressor  # type: ignore[method-assign]
            if _LZ4_DECOMPRESS_SAFE is not None:  # and decompress, likewise
                dec = ctypes.cast(cast(Any, _LZ4_DECOMPRESS_SAFE), ctypes.c_void_p).value or 0
                self.decompress = _LZ4_C.Decompressor(dec, CodecError)  # type: ignore[method-assign]

    def compress(self, page: bytes) -> bytes:
        fast = self._fast
        if fast is not None:
            local = self._local
            try:
                buf = local.buf
            except AttributeError:
                local.buf = buf = ctypes.create_string_buffer(_LZ4_DST_LEN)
            if type(page) is not bytes:  # the call passes bytes as char *
                page = bytes(page)
            n = fast(page, buf, len(page), _LZ4_DST_LEN, self.level)
            if n <= 0:
                raise CodecError(f"{self.name}: compression failed ({n})")
            return buf[:n]
        try:
            return lz4.block.compress(page, **self._ckw)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"{self.name}: compression failed: {exc}") from None

    def decompress(self, data: bytes, out_len: int = PAGE_SIZE) -> bytes:
        try:
            dkw = self._dkw
            # uncompressed_size positionally: python-lz4's keyword parsing costs ~0.2 µs a call
            out = (
                lz4.block.decompress(data, out_len, **dkw)
                if dkw
                else lz4.block.decompress(data, out_len)
            )
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"{self.name}: {exc}") from None
        if len(out) != out_len:
            raise CodecError(f"{self.name}: decompressed {len(out)} bytes, expected {out_len}")
        return out


class Lz4hcCodec(Lz4Codec):
    """LZ4 high-compression mode; level is the HC level (LZ4HC_DEFAULT_CLEVEL = 9)."""

    name = "lz4hc"
    default_level = 9

    def __init__(self, *, level: int | None = None, dictionary: bytes | None = None) -> None:
        Codec.__init__(self, level=level, dictionary=dictionary)
        kwargs: dict[str, object] = {
            "store_size": False,
            "mode": "high_compression",
            "compression": self.level,
        }
        if self.dictionary:
            kwargs["dict"] = self.dictionary
        self._ckw = kwargs
        self._dkw = {"dict": self.dictionary} if self.dictionary else {}
        self._fast = None  # LZ4_compress_HC is what python-lz4's HC mode calls already


class ZstdCodec(Codec):
    """Zstandard with pooled, reused compressors and decompressors.

    Frame parameters are those of the kernel's zstd_get_params(): content size written,
    no checksum, dictionary id written when a dictionary is used.

    Contexts: a ZstdCompressor/ZstdDecompressor may be used by any thread but by one at a
    time, and building one costs far more than a 4 KiB page's work (~35 µs for the pair).
    Each call takes a context from a `queue.SimpleQueue` (`get_nowait`, a new one when the
    pool is empty) and puts it back afterwards, so the pool grows to the highest number of
    concurrent calls and never shrinks: at most one context per thread that compresses (or
    decompresses) at the same time.  Compressors and decompressors are pooled separately, so
    a read never builds a compressor.  A context whose call raised is dropped, not reused.
    """

    name = "zstd"
    default_level = 3  # ZSTD_CLEVEL_DEFAULT
    level: int  # never None here: default_level stands in

    def __init__(self, *, level: int | None = None, dictionary: bytes | None = None) -> None:
        if level is not None and level > zstandard.MAX_COMPRESSION_LEVEL:
            level = zstandard.MAX_COMPRESSION_LEVEL  # ZSTD_getCParams() clamps like this
        super().__init__(level=level, dictionary=dictionary)
        self._dict = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
        if self._dict is not None:
            try:  # a dictionary the library refuses must fail at setup, not on the data path
                self._dict.precompute_compress(level=self.level)
            except zstandard.ZstdError as exc:
                raise InvalidInput(f"zstd dictionary rejected: {exc}") from None
        self._cctxs: queue.SimpleQueue[zstandard.ZstdCompressor] = queue.SimpleQueue()
        self._dctxs: queue.SimpleQueue[zstandard.ZstdDecompressor] = queue.SimpleQueue()
        try:  # build one of each now: bad parameters fail at disksize time, not on a write
            self._cctxs.put(self._new_cctx())
            self._dctxs.put(self._new_dctx())
        except (zstandard.ZstdError, ValueError) as exc:
            raise InvalidInput(f"zstd parameters rejected: {exc}") from None

    def _new_cctx(self) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(
            level=self.level, dict_data=self._dict, write_checksum=False, write_content_size=True
        )

    def _new_dctx(self) -> zstandard.ZstdDecompressor:
        return zstandard.ZstdDecompressor(dict_data=self._dict)

    def compress(self, page: bytes) -> bytes:
        try:
            cctx = self._cctxs.get_nowait()
        except queue.Empty:  # every pooled compressor is in use: one more for the pool
            cctx = self._new_cctx()
        try:
            out = cctx.compress(page)
        except zstandard.ZstdError as exc:
            raise CodecError(f"{self.name}: compression failed: {exc}") from None
        self._cctxs.put(cctx)  # only after success: a failed context is not lent again
        return out

    def decompress(self, data: bytes, out_len: int = PAGE_SIZE) -> bytes:
        try:
            dctx = self._dctxs.get_nowait()
        except queue.Empty:
            dctx = self._new_dctx()
        try:
            out = dctx.decompress(data, max_output_size=out_len)
        except zstandard.ZstdError as exc:
            raise CodecError(f"{self.name}: {exc}") from None
        self._dctxs.put(dctx)
        if len(out) != out_len:
            raise CodecError(f"{self.name}: decompressed {len(out)} bytes, expected {out_len}")
        return out


class DeflateCodec(Codec):
    """Raw deflate (no zlib header), window 2**winbits, like backend_deflate.c.

    The kernel defaults are level Z_DEFAULT_COMPRESSION and winbits 11 (DEFLATE_DEF_WINBITS)
    with memLevel MAX_MEM_LEVEL.
    """

    name = "deflate"
    default_level = zlib.Z_DEFAULT_COMPRESSION
    level: int  # never None here: default_level stands in
    DEFAULT_WINBITS = 11

    def __init__(
        self,
        *,
        level: int | None = None,
        dictionary: bytes | None = None,
        winbits: int | None = None,
    ) -> None:
        super().__init__(level=level, dictionary=dictionary)
        self.winbits = self.DEFAULT_WINBITS if winbits is None else winbits
        if not 9 <= self.winbits <= 15:
            raise InvalidInput(f"deflate.winbits={self.winbits} out of 9..15")
        if not -1 <= self.level <= 9:
            raise InvalidInput(f"deflate level {self.level} out of -1..9")

    def _new_compressor(self) -> zlib._Compress:
        if self.dictionary:
            return zlib.compressobj(
                self.level, zlib.DEFLATED, -self.winbits, 9, zdict=self.dictionary
            )
        return zlib.compressobj(self.level, zlib.DEFLATED, -self.winbits, 9)

    def compress(self, page: bytes) -> bytes:
        try:
            c = self._new_compressor()
            return c.compress(page) + c.flush()
        except zlib.error as exc:
            raise CodecError(f"{self.name}: compression failed: {exc}") from None

    def decompress(self, data: bytes, out_len: int = PAGE_SIZE) -> bytes:
        try:
            if self.dictionary:
                d = zlib.decompressobj(-self.winbits, zdict=self.dictionary)
            else:
                d = zlib.decompressobj(-self.winbits)
            out = d.decompress(data, out_len)
        except zlib.error as exc:
            raise CodecError(f"{self.name}: {exc}") from None
        if len(out) != out_len or not d.eof:
            raise CodecError(f"{self.name}: decompressed {len(out)} bytes, expected {out_len}")
        return out


class LzoCodec(Codec):
    """LZO1X-1 as backend_lzo.c: lzo1x_1_compress / lzo1x_decompress_safe (zramfs.lzo).

    The kernel's lzo backends take no parameters: in 6.12 - 6.18 their setup_params
    accepts a level and a dictionary and uses neither (checked on a 6.18 kernel: disksize
    succeeds after ``algorithm_params algo=lzo level=3 dict=...``), so both are ignored
    here too and `level` stays None.  (Later upstream backend_lzo.c answers EOPNOTSUPP.)
    Pure Python: ~0.6-0.9 ms to compress a compressible page, ~0.2 ms to decompress it.
    """

    name = "lzo"
    _rle = False

    def __init__(self, *, level: int | None = None, dictionary: bytes | None = None) -> None:
        super().__init__(level=None, dictionary=None)

    def compress(self, page: bytes) -> bytes:
        return _lzo.compress(page, rle=self._rle)

    def decompress(self, data: bytes, out_len: int = PAGE_SIZE) -> bytes:
        try:
            return _lzo.decompress(data, out_len)
        except ValueError as exc:
            raise CodecError(f"{self.name}: {exc}") from None


class LzoRleCodec(LzoCodec):
    """LZO-RLE as backend_lzorle.c: lzorle1x_1_compress (zero runs as one instruction,
    streams start with 17, 1); decompressed by the same lzo1x_decompress_safe."""

    name = "lzo-rle"
    _rle = True


#: The backends that work here, in the order of the kernel's backends[] array (zcomp.c,
#: 6.12+: lzo-rle, lzo, lz4, lz4hc, zstd, deflate, 842).  842 is not listed: no working
#: implementation is available to this process, and comp_algorithm must only offer what
#: can really be selected.
BACKENDS: dict[str, type[Codec]] = {
    cls.name: cls for cls in (LzoRleCodec, LzoCodec, Lz4Codec, Lz4hcCodec, ZstdCodec, DeflateCodec)
}
AVAILABLE: tuple[str, ...] = tuple(BACKENDS)

#: The kernel's CONFIG_ZRAM_DEF_COMP is lzo-rle, which we have (zramfs.lzo) but in pure
#: Python, ~100x slower than lz4's C: lz4 stays the default, for speed.
DEFAULT_ALGORITHM = "lz4"


def get_codec(
    name: str,
    *,
    level: int | None = None,
    dictionary: bytes | None = None,
    winbits: int | None = None,
) -> Codec:
    """Create the backend `name` with the given parameters (InvalidInput if unknown)."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise InvalidInput(f"unknown compression algorithm {name!r}") from None
    if cls is DeflateCodec:
        return DeflateCodec(level=level, dictionary=dictionary, winbits=winbits)
    return cls(level=level, dictionary=dictionary)


__all__ = [
    "Codec",
    "LzoCodec",
    "LzoRleCodec",
    "Lz4Codec",
    "Lz4hcCodec",
    "ZstdCodec",
    "DeflateCodec",
    "BACKENDS",
    "AVAILABLE",
    "DEFAULT_ALGORITHM",
    "PAGE_SIZE",
    "get_codec",
    "LZ4_PATH_EXACT",
    "LZ4_PATH_INEXACT",
    "lz4_binding",
    "lz4_path",
    "lz4_path_warning",
]
