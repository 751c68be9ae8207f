"""Errors of the zram layer: every failure carries the errno the kernel would return.

Owns `ZramError` (an `OSError`, so the FUSE layer can hand `e.errno` straight to the
kernel) and its named subclasses.  The subclasses follow borg's style: the class docstring
is the default message, so `raise DeviceBusy()` reads like the kernel's pr_info() and
`raise InvalidInput("disksize: nothing parsed")` adds detail.  Catch `ZramError` (or
`OSError`) and look at `.errno`; never parse the message.
"""

from __future__ import annotations

import errno as _errno


class ZramError(OSError):
    """zram error"""

    errno_value: int = _errno.EIO
    errno: int  # always set: __init__ passes an int code (OSError allows None)
    block: int  # set by the device's request paths on the way out: the failing block

    def __init__(self, message: str | None = None, *, err: int | None = None) -> None:
        code = self.errno_value if err is None else err
        text = message if message is not None else (type(self).__doc__ or "").strip()
        super().__init__(code, text)

    def __str__(self) -> str:  # "[Errno 16] ..." is noise for attribute users
        return f"{self.strerror} ({_errno.errorcode.get(self.errno, self.errno)})"


class InvalidInput(ZramError):
    """invalid input has been provided"""

    errno_value = _errno.EINVAL


class DeviceBusy(ZramError):
    """an attribute that cannot be changed once the device has been initialised; reset the device first"""

    errno_value = _errno.EBUSY


class NameTooLong(ZramError):
    """algorithm name too long"""

    errno_value = _errno.E2BIG


class OutOfRange(ZramError):
    """numerical result out of range"""

    errno_value = _errno.ERANGE


class NoSuchDevice(ZramError):
    """no such device"""

    errno_value = _errno.ENODEV


class NoMemory(ZramError):
    """zram was not able to allocate enough memory"""

    errno_value = _errno.ENOMEM


class IOFailure(ZramError):
    """I/O error"""

    errno_value = _errno.EIO


class NoSpace(ZramError):
    """no space left on device"""

    errno_value = _errno.ENOSPC


class NotBlockDevice(ZramError):
    """backing device is not usable"""

    errno_value = _errno.ENOTBLK


class CodecError(IOFailure):
    """compressed data could not be decompressed to a full page"""


class TraceError(ZramError):
    """not a usable zramfs trace file"""

    errno_value = _errno.EINVAL


class InvalidSetting(InvalidInput):
    """invalid replay setting"""


__all__ = [
    "ZramError",
    "InvalidInput",
    "DeviceBusy",
    "NameTooLong",
    "OutOfRange",
    "NoSuchDevice",
    "NoMemory",
    "IOFailure",
    "NoSpace",
    "NotBlockDevice",
    "CodecError",
    "TraceError",
    "InvalidSetting",
]
