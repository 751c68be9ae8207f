"""The kernel's text parsers, shared by every control file of a mount (docs/zram.md,
"Parsing conventions").

One implementation per kernel routine, so that a sysfs attribute, a module parameter and a
sysctl answer exactly what their kernel counterparts answer:

- ``kstrtoull``/``kstrtoll``/``kstrtouint``/``kstrtoint``/``kstrtou16`` (lib/kstrtox.c): the
  whole string, one optional leading ``+`` (unsigned and positive signed), base prefixes only
  with base 0 (``0x`` hex, ``0`` octal; no ``0b``/``0o``, no ``_``), at most one trailing
  newline, no leading space; ``EINVAL`` for junk, ``ERANGE`` for overflow.  Module parameters
  use them with base 0 (``param_set_uint`` & co.) and return the error as is.
- ``kstrtobool``: only the first character counts (two for ``on``/``off``).
- ``memparse`` (lib/cmdline.c): a prefix number with a K/M/G/T/P/E suffix, wrapping in u64.
- ``sysfs_streq``, ``next_args`` (``next_arg()`` over a whole buffer).
- ``proc_dointvec`` (kernel/sysctl.c ``__do_proc_dointvec`` for one ``int``): what sysctls
  such as ``vm.compact_memory`` accept, which differs from kstrto*: leading blanks and any
  trailing blanks are fine, ``+`` is not, overflow is ``EINVAL``, and text after the number
  and its separator is left unconsumed (a short write).

Errors are `zramfs.errors` exceptions (OSErrors carrying the kernel errno).
"""

from __future__ import annotations

from .errors import InvalidInput, OutOfRange

U64 = (1 << 64) - 1
INT_MAX = (1 << 31) - 1

__all__ = [
    "sysfs_streq",
    "kstrtoull",
    "kstrtoll",
    "kstrtoint",
    "kstrtouint",
    "kstrtou16",
    "kstrtobool",
    "memparse",
    "next_args",
    "proc_dointvec",
    "U64",
]


def _strip_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def sysfs_streq(a: str, b: str) -> bool:
    """Compare ignoring one trailing newline on either side."""
    return _strip_newline(a) == _strip_newline(b)


_HEX = "0123456789abcdef"


def _fixup_radix(s: str, base: int) -> tuple[str, int]:
    """_parse_integer_fixup_radix(): base 0 detects 0x / 0 prefixes; base 16 skips 0x."""
    if base == 0:
        if s.startswith("0"):
            base = 16 if s[1:2].lower() == "x" and s[2:3] != "" and s[2:3].lower() in _HEX else 8
        else:
            base = 10
    if base == 16 and s[:2].lower() == "0x":
        s = s[2:]
    return s, base


def _parse_digits(s: str, base: int) -> tuple[int, int]:
    """_parse_integer(): value of the leading digits (0-9, a-f below ``base``) and their count."""
    value = 0
    n = 0
    for ch in s:
        d = _HEX.find(ch.lower())
        if d < 0 or d >= base:
            break
        value = value * base + d
        n += 1
    return value, n


def _kstrtoull(s: str, base: int, limit: int, original: str) -> int:
    """_kstrtoull(): digits, then nothing but one newline."""
    s, base = _fixup_radix(s, base)
    value, n = _parse_digits(s, base)
    if n == 0:
        raise InvalidInput(f"not a number: {original!r}")
    rest = s[n:]
    if rest and rest != "\n":
        raise InvalidInput(f"not a number: {original!r}")
    if value > limit:
        raise OutOfRange(f"{original.strip()!r} out of range")
    return value


def kstrtoull(text: str, base: int = 10, *, limit: int = U64) -> int:
    """kstrtoull(): "The first character may also be a plus sign, but not a minus sign"."""
    return _kstrtoull(text[1:] if text.startswith("+") else text, base, limit, text)


def kstrtoll(text: str, base: int = 10, *, lo: int = -(1 << 63), hi: int = (1 << 63) - 1) -> int:
    """kstrtoll(): a '-' goes straight to _kstrtoull (so "-+1" is junk), else kstrtoull."""
    if text.startswith("-"):
        value = -_kstrtoull(text[1:], base, -lo, text)
    else:
        value = kstrtoull(text, base, limit=hi)
    if not lo <= value <= hi:
        raise OutOfRange(f"{text.strip()!r} out of range")
    return value


def kstrtoint(text: str, base: int = 10) -> int:
    return kstrtoll(text, base, lo=-(1 << 31), hi=INT_MAX)


def kstrtouint(text: str, base: int = 10) -> int:
    return kstrtoull(text, base, limit=(1 << 32) - 1)


def kstrtou16(text: str, base: int = 10) -> int:
    return kstrtoull(text, base, limit=0xFFFF)


_TRUE_FIRST = frozenset("yYtTeE1")  # yes, true, enable, 1
_FALSE_FIRST = frozenset("nNfFdD0")  # no, false, disable, 0


def kstrtobool(text: str) -> bool:
    """kstrtobool() of Linux 6.18: decided by the first character (y/t/e/1 true, n/f/d/0
    false) or the first two (on/off); anything else EINVAL.  So "1junk" and "yes" pass and
    " 1" does not (measured on /sys/module/printk/parameters/time)."""
    c0 = text[:1]
    if c0 in _TRUE_FIRST:
        return True
    if c0 in _FALSE_FIRST:
        return False
    if c0 in ("o", "O"):
        c1 = text[1:2]
        if c1 in ("n", "N"):
            return True
        if c1 in ("f", "F"):
            return False
    raise InvalidInput(f"not a boolean: {text!r}")


_MEMPARSE_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def memparse(text: str) -> tuple[int, int]:
    """memparse(): (value, characters consumed); K M G T P E in either case, u64 wrap."""
    s, base = _fixup_radix(text, 0)
    skipped = len(text) - len(s)
    value, n = _parse_digits(s, base)
    if n == 0:
        # simple_strtoull on "0x" without hex digits parsed the leading "0" in base 8
        return 0, (1 if text.startswith("0") else 0)
    value &= U64
    consumed = skipped + n
    suffix = text[consumed : consumed + 1].lower()
    if suffix in _MEMPARSE_SHIFT:
        value = (value << _MEMPARSE_SHIFT[suffix]) & U64
        consumed += 1
    return value, consumed


def next_args(text: str) -> list[tuple[str, str | None]]:
    """next_arg() over a whole buffer: `key=value` pairs (double quotes allowed), `key` alone."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        in_quote = False
        while i < n and (in_quote or not text[i].isspace()):
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        token = text[start:i]
        if token.startswith('"'):  # a quoted whole argument: "key=value with spaces"
            token = token[1:-1] if len(token) > 1 and token.endswith('"') else token[1:]
        if "=" in token:
            key, _, val = token.partition("=")
            if val.startswith('"'):
                val = val[1:-1] if len(val) > 1 and val.endswith('"') else val[1:]
            out.append((key, val))
        else:
            out.append((token, None))


# ---- sysctl integers ---------------------------------------------------------------------------
# The kernel's isspace(): \t \n \v \f \r, space, and Latin-1 NBSP (its _ctype table marks 0xA0 _S).
_PROC_SPACES = frozenset(b"\t\n\x0b\x0c\r \xa0")
# proc_wspace_sep[]: what may follow a number.
_PROC_SEP = frozenset(b" \t\n")
# TMPBUFLEN: proc_get_long() looks at no more than 21 characters, and refuses a number that
# fills all of them ("We don't know if the next char is whitespace").
_TMPBUFLEN = 22


def proc_dointvec(data: bytes) -> tuple[int, int]:
    """A write to a one-int sysctl through proc_dointvec(): (value, bytes consumed).

    __do_proc_dointvec + proc_get_long + do_proc_dointvec_conv: skip blanks; an optional
    '-'; a digit must follow; the number is read with base 0 (0x…, 0…); overflow of unsigned
    long or of int is EINVAL, as is a number followed by anything but blank/tab/newline;
    trailing blanks are consumed, anything after them is not (the caller reports a short
    write).  Nothing but blanks: EINVAL.
    """
    size = len(data)
    p = 0
    while p < size and data[p] in _PROC_SPACES:
        p += 1
    if p == size:
        raise InvalidInput("sysctl: no number")
    tmp = data[p : p + _TMPBUFLEN - 1]
    q = 0
    neg = tmp[:1] == b"-" and size - p > 1
    if neg:
        q = 1
    if not tmp[q : q + 1].isdigit():
        raise InvalidInput(f"sysctl: not a number: {data[:40]!r}")
    digits = tmp[q:].decode("latin-1")
    s, base = _fixup_radix(digits, 0)
    value, n = _parse_digits(s, base)
    q += len(digits) - len(s) + n
    if value > U64 or q == _TMPBUFLEN - 1:  # strtoul_lenleft overflow / TMPBUFLEN
        raise InvalidInput(f"sysctl: number too long: {data[:40]!r}")
    if q < size - p and (q >= len(tmp) or tmp[q] not in _PROC_SEP):
        raise InvalidInput(f"sysctl: junk after the number: {data[:40]!r}")
    if value > (INT_MAX + 1 if neg else INT_MAX):  # do_proc_dointvec_conv
        raise InvalidInput(f"sysctl: {data[:40]!r} does not fit an int")
    p += q
    while p < size and data[p] in _PROC_SPACES:  # proc_skip_spaces after the value
        p += 1
    return (-value if neg else value), p
