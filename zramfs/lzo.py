"""LZO1X-1 and LZO-RLE in pure Python, byte for byte the Linux kernel's lib/lzo.

Owns the two compression formats behind zram's ``lzo`` and ``lzo-rle`` backends (the
kernel's default algorithm, CONFIG_ZRAM_DEF_COMP="lzo-rle"), for which no library is
available to this process (no liblzo2; lzo-rle exists only in the kernel):

* ``compress(src, rle=False)`` is ``lzo1x_1_compress()`` and ``compress(src, rle=True)`` is
  ``lzorle1x_1_compress()`` of lib/lzo/lzo1x_compress.c (both ``lzogeneric1x_1_compress``),
  with the constants of lib/lzo/lzodefs.h;
* ``decompress(data, out_len)`` is ``lzo1x_decompress_safe()`` of
  lib/lzo/lzo1x_decompress_safe.c, which reads both formats (a stream that starts with
  17 and a version byte is an RLE stream).

Mirrored version: Linux 6.12 - 6.18 (zram's custom-backend era, where backend_lzo.c and
backend_lzorle.c call exactly these functions with a 2 * PAGE_SIZE destination; the
6.15+ ``_safe`` compressor only adds output-overrun checks and writes the same bytes).
That is the LZO 2.0x-based compressor of Linux 3.7+ (13-bit hash of 4-byte words, u16
``lzo_dict_t`` offsets from the chunk start, ``ip += 1 + ((ip - ii) >> 5)`` skipping),
with the 2019 changes of Linux 5.1 (the RLE zero-run instruction, the ``17, 1``
bitstream-version prefix, ``state_offset``) and the 2020 fix of ambiguous lzo-rle
encodings (M4_MAX_OFFSET_V1 = 0xbffe: lzo-rle compresses in chunks of at most 0xbfff
bytes).  Two behaviours that are easy to miss: an input (or last chunk) of fewer than 32
bytes including pending literals is never searched, because the kernel's pointer-overflow
guard ``ll_end + ((t + ll) >> 5) <= ll_end`` also holds when ``(t + ll) >> 5 == 0``; and
the match-length loop stops at 8-byte granularity once it reaches ``ip_end``, so the
output depends on the build: this port follows x86-64 / arm64
(CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS with LZO_USE_CTZ64).  The zero-run scan gives the
same length in every build.

Checked against (see tests/test_lzo.py): the kernel's C code built for user space as a
throwaway harness (byte-identical output on ~18 000 varied inputs of 0 - 120 KiB, both
formats; the same accept/reject decisions and bytes as lzo1x_decompress_safe on 80 000
truncated, corrupted and random streams), and the running 6.18 kernel's zram
(compr_data_size equal to len(compress(page)) on ~19 000 real pages per algorithm).

Format in short (Documentation/staging/lzo.rst): literal runs and back-references;
``M2`` (2 bytes, length 3-8, distance <= 2 KiB), ``M3`` (length 3-33+, distance <= 16 KiB),
``M4`` (distance 16-48 KiB, or the end marker ``0x11 0 0``), and in RLE streams a 4-byte
instruction ``0x18|len&7, 0xfc|state, 0xff, len>>3`` for 4..2051 zero bytes.

Speed (pure Python 3.11 on the 2-core VM of the tests; µs per 4 KiB page, compress /
decompress, average compressed size; ``python3 -m zramfs.lzo`` measures again):

====================  =========================  =========================
page                  lzo                        lzo-rle
====================  =========================  =========================
text (stdlib .py)     ~500 / ~135 µs (1956 B)    ~500 / ~135 µs (1958 B)
random (grows)          56 /    2 µs (4116 B)      56 /    2 µs (4118 B)
mostly zero             40 /    5 µs (159 B)       34 /    4 µs (148 B)
zero                    18 /    3 µs (44 B)        18 /    3 µs (41 B)
====================  =========================  =========================

(±10 % between runs; the fastest of three ``python3 -m zramfs.lzo`` runs.  Before the
2026-11 tuning, measured the same way against the previous version interleaved: text
~575 / ~163, random 64 / 2, mostly zero 47 / 5 and 44 / 4, zero 22 / 3 and 23 / 3.)
Random pages are cheap because LZO1X-1 skips ahead faster the longer it finds nothing
(``ip += 1 + (ip - ii) >> 5``); a text page costs ~1350 probed positions (~165 ns each:
the 32-bit multiplicative hash alone is ~60 ns in CPython) and ~330 matches.  What the
tuning kept: one unaligned-word array per position (a list of the words would cost ~50
µs to build, more than it saves), a step-1 probe loop for the 32 positions after a match,
memcmp (``bytes.startswith``, slice equality) before any per-byte work on zero runs and
long matches, an M2 decode table and fewer per-instruction checks in the decompressor
(see ``decompress``).  Tried and dropped as slower: ``range()`` loops per skip band, a
table of encoded M2 instructions, dicts instead of ``(x & -x) % 37``, bulk hashing of all
positions with big-int arithmetic (~50 µs a page for ``int.from_bytes``/``to_bytes``).  The
C library behind the lz4 codec takes ~5 µs for a text page: use lzo / lzo-rle here for the
kernel's sizes, not for speed.
"""

from __future__ import annotations

import sys
from array import array

__all__ = ["compress", "decompress", "LZO_VERSION"]

#: lzodefs.h: bitstream version written after the 17 that starts an lzo-rle stream
LZO_VERSION = 1

M2_MAX_OFFSET = 0x0800
M3_MAX_OFFSET = 0x4000
M4_MAX_OFFSET_V0 = 0xBFFF
M4_MAX_OFFSET_V1 = 0xBFFE
M2_MAX_LEN = 8
M3_MAX_LEN = 33
M4_MAX_LEN = 9
M3_MARKER = 32
M4_MARKER = 16
MIN_ZERO_RUN_LENGTH = 4
MAX_ZERO_RUN_LENGTH = 2047 + MIN_ZERO_RUN_LENGTH
D_BITS = 13  # the kernel's own; upstream LZO's LZO1X-1 uses 14
D_SIZE = 1 << D_BITS
D_MASK = D_SIZE - 1

_EOF_MARKER = bytes((M4_MARKER | 1, 0, 0))
_ZEROS = bytes(MAX_ZERO_RUN_LENGTH)
_BIG_ENDIAN = sys.byteorder == "big"


def _words(src: bytes) -> array:
    """``w[i] == get_unaligned_le32(src + i)`` for every position (zero-padded past the
    end), built by four strided slice assignments: ~9 µs for a page, against ~25 ns saved
    per probe over four per-alignment arrays and no per-entry word table to fill."""
    n = len(src)
    padded = src + b"\0\0\0"
    buf = bytearray(4 * n)
    buf[0::4] = padded[:n]
    buf[1::4] = padded[1 : n + 1]
    buf[2::4] = padded[2 : n + 2]
    buf[3::4] = padded[3 : n + 3]
    arr = array("I")
    arr.frombytes(buf)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


#: byte index of the lowest set byte of a non-zero word, by (x & -x) % 37 (2**i mod 37
#: differs for every i < 36)
_LOW_BYTE = [0] * 37
for _i in range(36):
    _LOW_BYTE[(1 << _i) % 37] = _i >> 3
del _i


def _emit_literals(out: bytearray, src: bytes, ii: int, ip: int, state_offset: int) -> None:
    """The literal run src[ii:ip] (non-empty) before an instruction: 1-3 bytes go into the
    low bits of the previous instruction (op[state_offset]), 4-18 take one length byte
    t - 3, longer runs 0, a 0 per 255, then the rest."""
    t = ip - ii
    if t <= 3:
        out[state_offset] |= t
    elif t <= 18:
        out.append(t - 3)
    else:
        tt = t - 18
        z = (tt - 1) // 255
        out += bytes(z + 1)
        out.append(tt - 255 * z)
    out += src[ii:ip]


def _do_compress(
    src: bytes,
    words: array,
    base: int,
    ll: int,
    out: bytearray,
    ti: int,
    state_offset: int,
    rle: bool,
) -> tuple[int, int]:
    """lzo1x_1_do_compress() on src[base:base+ll]: append to `out`, return (pending
    literal count, state_offset)."""
    in_end = base + ll
    ip_end = in_end - 20
    # lzo_dict_t holds offsets from the chunk start, zeroed per chunk: an untouched entry
    # points at the chunk's first byte.  Kept as absolute positions here (same matches).
    dct = [base] * D_SIZE
    low_byte = _LOW_BYTE
    ii = base
    ip = base + (4 - ti if ti < 4 else 0)
    ip += 1 + ((ip - ii) >> 5)
    append = out.append
    from_bytes = int.from_bytes
    while True:
        # ip - ii < 32: the step 1 + ((ip - ii) >> 5) is 1 (most probes of a text page)
        lim = ii + 32
        if lim > ip_end:
            lim = ip_end
        while ip < lim:
            dv = words[ip]
            if not dv and rle:
                break
            h = ((dv * 0x1824429D) >> 19) & 0x1FFF  # u32 product >> (32 - D_BITS)
            if dv == words[dct[h]]:
                break
            dct[h] = ip
            ip += 1
        else:
            while ip < ip_end:
                dv = words[ip]
                if not dv and rle:
                    break
                h = ((dv * 0x1824429D) >> 19) & 0x1FFF
                if dv == words[dct[h]]:
                    break
                dct[h] = ip
                ip += 1 + ((ip - ii) >> 5)
            else:
                break
        if not dv and rle:
            # lzo-rle: 4..MAX_ZERO_RUN_LENGTH zero bytes become one instruction; the scan
            # stops at ip_end (whatever the build's word-wise loop, the same length)
            ir = ip + 4
            limit = ip + MAX_ZERO_RUN_LENGTH + 1
            if ip_end < limit:
                limit = ip_end
            if ir < limit:
                if src.startswith(_ZEROS[: limit - ir], ir):
                    ir = limit  # one memcmp; lstrip takes ~2 ns a byte
                else:
                    seg = src[ir:limit]
                    ir += len(seg) - len(seg.lstrip(b"\0"))
            run_length = ir - ip
            if run_length > MAX_ZERO_RUN_LENGTH:
                run_length = MAX_ZERO_RUN_LENGTH
            if ti:
                ii -= ti
                ti = 0
            if ip != ii:
                _emit_literals(out, src, ii, ip, state_offset)
            ip += run_length
            run_length -= MIN_ZERO_RUN_LENGTH
            out += bytes((0x18 | (run_length & 7), 0xFC, 0xFF, run_length >> 3))
            state_offset = -3
            ii = ip
            continue
        m_pos = dct[h]
        dct[h] = ip
        if ti:
            ii -= ti
            ti = 0
        t = ip - ii
        if t:
            if t <= 3:
                out[state_offset] |= t
            elif t <= 18:
                append(t - 3)
            else:
                tt = t - 18
                z = (tt - 1) // 255
                out += bytes(z + 1)
                append(tt - 255 * z)
            out += src[ii:ip]
        # match length: 4 known bytes, then the 64-bit ctz loop of x86-64/arm64, which
        # stops (without the final ctz) once ip + m_len reaches ip_end
        x = words[ip + 4] ^ words[m_pos + 4]
        if x:
            m_len = 4 + low_byte[(x & -x) % 37]
        else:
            x = words[ip + 8] ^ words[m_pos + 8]
            if x:
                m_len = 8 + low_byte[(x & -x) % 37]
            else:
                # 8 * k_end: the kernel stops after block k_end, the first with
                # ip + 4 + 8k >= ip_end
                a = ip + 4
                b = m_pos + 4
                span = ip_end - a
                cap = 8 if span <= 8 else (span + 7) & ~7
                common = 8
                step = 16
                while common < cap:
                    n = step if common + step <= cap else cap - common
                    p = src[a + common : a + common + n]
                    q = src[b + common : b + common + n]
                    if p != q:  # memcmp; from_bytes only for the block that differs
                        x = from_bytes(p, "little") ^ from_bytes(q, "little")
                        common += ((x & -x).bit_length() - 1) >> 3
                        break
                    common += n
                    if step < 1024:
                        step <<= 2
                if common > cap:
                    common = cap
                m_len = 4 + common
        m_off = ip - m_pos
        ip += m_len
        if m_len <= 8 and m_off <= 0x800:
            m_off -= 1
            append(((m_len - 1) << 5) | ((m_off & 7) << 2))
            append(m_off >> 3)
        elif m_off <= 0x4000:
            m_off -= 1
            if m_len <= 33:
                append(32 | (m_len - 2))
            else:
                m_len -= 33
                append(32)
                z = (m_len - 1) // 255
                if z:
                    out += bytes(z)
                append(m_len - 255 * z)
            append((m_off << 2) & 0xFF)
            append(m_off >> 6)
        else:
            m_off -= 0x4000
            if m_len <= 9:
                append(16 | ((m_off >> 11) & 8) | (m_len - 2))
            else:
                m_len -= 9
                append(16 | ((m_off >> 11) & 8))
                z = (m_len - 1) // 255
                if z:
                    out += bytes(z)
                append(m_len - 255 * z)
            append((m_off << 2) & 0xFF)
            append((m_off >> 6) & 0xFF)
        state_offset = -2
        ii = ip
    return in_end - (ii - ti), state_offset


def compress(src: bytes, *, rle: bool) -> bytes:
    """lzo1x_1_compress (rle=False) or lzorle1x_1_compress (rle=True) of `src`."""
    src = bytes(src)
    in_len = len(src)
    out = bytearray()
    if rle:
        out += bytes((17, LZO_VERSION))
        m4_max_offset = M4_MAX_OFFSET_V1
    else:
        m4_max_offset = M4_MAX_OFFSET_V0
    data_start = len(out)
    state_offset = -2
    pos = 0
    remaining = in_len
    words: array | None = None
    t = 0
    while remaining > 20:
        ll = remaining if remaining <= m4_max_offset + 1 else m4_max_offset + 1
        if (t + ll) >> 5 == 0:
            # the kernel's pointer-overflow guard `ll_end + ((t + ll) >> 5) <= ll_end` is
            # also true when t + ll < 32: such inputs are stored as one literal run
            break
        if words is None:
            words = _words(src)
        t, state_offset = _do_compress(src, words, pos, ll, out, t, state_offset, rle)
        pos += ll
        remaining -= ll
    t += remaining
    if t > 0:
        ii = in_len - t
        if len(out) == data_start and t <= 238:
            out.append(17 + t)  # a stream that is one literal run
            out += src[ii:]
        else:
            _emit_literals(out, src, ii, in_len, state_offset)
    out += _EOF_MARKER
    return bytes(out)


#: an M2 instruction byte (64-255) -> (trailing literals, distance - 8 * next byte, length)
_M2_DECODE = [(0, 0, 0)] * 64 + [
    (_t & 3, 1 + ((_t >> 2) & 7), (_t >> 5) + 1) for _t in range(64, 256)
]


class _Corrupt(Exception):
    pass


def _extended_length(src: bytes, ip: int, in_len: int) -> tuple[int, int]:
    """An extended length field (the kernel's zero-byte loop): 255 per zero byte plus the
    first non-zero byte; returns (that sum, the position after it).  Only long runs get here."""
    start = ip
    while src[ip] == 0:
        ip += 1
        if ip >= in_len:
            raise _Corrupt("input overrun")
    return 255 * (ip - start) + src[ip], ip + 1


def decompress(data: bytes, out_len: int) -> bytes:
    """lzo1x_decompress_safe() into exactly `out_len` bytes (both formats).

    Raises ValueError when the kernel's function fails (input overrun, output overrun,
    lookbehind overrun, bad end marker, input not consumed) and also when the stream
    ends before `out_len` bytes (the kernel reports the shorter length; zram would hand
    back a partly stale page).  Accepts and rejects exactly the streams the kernel does
    for an `out_len` destination.

    Checks that are left out without changing a decision (the stream can only be
    accepted at an end marker with ``ip == in_len`` and ``op == out_len``):

    * output bounds: the kernel checks each copy (NEED_OP); here only the long copies
      (extended literal and match lengths, zero runs) are checked before they happen,
      the short ones (at most 36 bytes per 1-3 input bytes) at the end: output only
      grows, so a stream that overruns once ends with ``op > out_len``;
    * the ``NEED_IP(t + 3)`` of a literal run and after a match's 0-3 trailing
      literals: with fewer bytes left, the next instruction cannot be a whole end
      marker (reading past the input raises IndexError, the end-marker branch finds
      fewer than 2 bytes, or the stream goes on to one of those), so the stream is
      rejected all the same.
    """
    src = bytes(data)
    in_len = len(src)
    if out_len < 0:
        raise ValueError(f"lzo: negative output length {out_len}")
    if in_len < 3:
        raise ValueError("lzo: input overrun (stream shorter than 3 bytes)")
    out = bytearray()
    op = 0  # == len(out) while the stream can still be accepted
    ip = 0
    version = 0
    if in_len >= 5 and src[0] == 17:
        version = src[1]
        ip = 2
    state = 0
    m2 = _M2_DECODE
    try:
        t = src[ip]
        if t > 17:  # first literal run, 17 + t
            ip += 1
            t -= 17
            if out_len < t:
                raise _Corrupt("output overrun")
            if in_len - ip < t + 3:
                raise _Corrupt("input overrun")
            out += src[ip : ip + t]
            op = t
            ip += t
            state = t if t < 4 else 4
        while True:
            t = src[ip]
            ip += 1
            if t >= 64:
                # M2: length 3-8, distance 1-2048
                nxt, dist, t = m2[t]
                dist += src[ip] << 3
                ip += 1
            elif t >= 32:
                # M3: length 3-33 or extended, distance 1-16384
                t = (t & 31) + 2
                if t == 2:
                    extra, ip = _extended_length(src, ip, in_len)
                    t += extra + 31
                    if in_len - ip < 2:
                        raise _Corrupt("input overrun")
                    if out_len - op < t:
                        raise _Corrupt("output overrun")
                nxt = src[ip] | (src[ip + 1] << 8)
                ip += 2
                dist = 1 + (nxt >> 2)
                nxt &= 3
            elif t >= 16:
                # M4 (distance 16385-49151), the end marker, or an lzo-rle zero run
                if in_len - ip < 2:
                    raise _Corrupt("input overrun")
                nxt = src[ip] | (src[ip + 1] << 8)
                if (nxt & 0xFFFC) == 0xFFFC and (t & 0xF8) == 0x18 and version:
                    if in_len - ip < 3:
                        raise _Corrupt("input overrun")
                    t = ((t & 7) | (src[ip + 2] << 3)) + MIN_ZERO_RUN_LENGTH
                    if out_len - op < t:
                        raise _Corrupt("output overrun")
                    out += bytes(t)
                    op += t
                    ip += 3
                    t = nxt & 3
                    if in_len - ip < t + 3:
                        raise _Corrupt("input overrun")
                    if t:
                        out += src[ip : ip + t]
                        op += t
                        ip += t
                    state = t
                    continue
                dist = (t & 8) << 11
                t = (t & 7) + 2
                if t == 2:
                    extra, ip = _extended_length(src, ip, in_len)
                    t += extra + 7
                    if in_len - ip < 2:
                        raise _Corrupt("input overrun")
                    nxt = src[ip] | (src[ip + 1] << 8)
                ip += 2
                dist += nxt >> 2
                nxt &= 3
                if not dist:
                    # the end marker: 0x11 0 0 (t must be exactly 3)
                    if t != 3:
                        raise _Corrupt("bad end-of-stream marker")
                    if ip != in_len:
                        raise _Corrupt("input not consumed" if ip < in_len else "input overrun")
                    break
                dist += 0x4000
                if t > 36 and out_len - op < t:
                    raise _Corrupt("output overrun")
            elif state == 0:
                # a literal run: t + 3 bytes, or extended
                if t == 0:
                    extra, ip = _extended_length(src, ip, in_len)
                    t = extra + 18
                    if out_len - op < t:
                        raise _Corrupt("output overrun")
                else:
                    t += 3
                out += src[ip : ip + t]
                op += t
                ip += t
                state = 4
                continue
            elif state != 4:
                # M1 after a match's 1-3 trailing literals: 2 bytes, distance 1-1024
                nxt = t & 3
                m_pos = op - 1 - (t >> 2) - (src[ip] << 2)
                ip += 1
                if m_pos < 0:
                    raise _Corrupt("lookbehind overrun")
                out += out[m_pos : m_pos + 2]
                op += 2
                if nxt:
                    out += src[ip : ip + nxt]
                    op += nxt
                    ip += nxt
                state = nxt
                continue
            else:
                # M1 right after a literal run: 3 bytes, distance 2049-3072
                nxt = t & 3
                dist = (1 + M2_MAX_OFFSET) + (t >> 2) + (src[ip] << 2)
                ip += 1
                t = 3
            # copy the match (overlapping copies repeat the period, like a byte loop)
            m_pos = op - dist
            if m_pos < 0:
                raise _Corrupt("lookbehind overrun")
            if dist >= t:
                out += out[m_pos : m_pos + t]
            elif dist == 1:
                out += out[m_pos:op] * t
            else:
                out += (out[m_pos:op] * (t // dist + 1))[:t]
            op += t
            # then nxt (0-3) literals
            if nxt:
                out += src[ip : ip + nxt]
                op += nxt
                ip += nxt
            state = nxt
    except _Corrupt as exc:
        raise ValueError(
            f"lzo: corrupt stream: {exc.args[0]} "
            f"(input byte {ip} of {in_len}, output byte {op} of {out_len})"
        ) from None
    except IndexError:
        raise ValueError(
            f"lzo: corrupt stream: input overrun (input byte {ip} of {in_len})"
        ) from None
    if op != out_len:
        raise ValueError(f"lzo: stream decodes to {op} bytes, expected {out_len}")
    return bytes(out)


def _bench(rounds: int = 5) -> None:  # pragma: no cover - `python3 -m zramfs.lzo`
    """Print µs per 4 KiB page for the page kinds of the module docstring."""
    import glob
    import pathlib
    import random
    import sysconfig
    import time

    rng = random.Random(1)
    stdlib = sorted(glob.glob(sysconfig.get_path("stdlib") + "/*.py"))
    text = b"".join(pathlib.Path(p).read_bytes() for p in stdlib[:40])
    kinds = {
        "text (stdlib .py)": [text[o : o + 4096] for o in range(0, 40 * 4096, 4096)],
        "random": [rng.randbytes(4096) for _ in range(40)],
        "mostly zero": [bytes(1000) + rng.randbytes(100) + bytes(2996) for _ in range(40)],
        "zero": [bytes(4096)] * 40,
    }
    for name, pages in kinds.items():
        cells = []
        for rle in (False, True):
            blobs = [compress(p, rle=rle) for p in pages]
            t0 = time.perf_counter()
            for _ in range(rounds):
                for p in pages:
                    compress(p, rle=rle)
            tc = (time.perf_counter() - t0) / (rounds * len(pages)) * 1e6
            t0 = time.perf_counter()
            for _ in range(rounds):
                for b in blobs:
                    decompress(b, 4096)
            td = (time.perf_counter() - t0) / (rounds * len(pages)) * 1e6
            avg = sum(map(len, blobs)) // len(blobs)
            cells.append(f"{'lzo-rle' if rle else 'lzo'}: {tc:5.0f} / {td:4.0f} µs ({avg} B)")
        print(f"{name:18s} " + "   ".join(cells))


if __name__ == "__main__":  # pragma: no cover
    _bench()
