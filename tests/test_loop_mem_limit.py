"""A loop device over ``MNT/dev/zram0`` at ``mem_limit``: O_DIRECT writes from buffers that are
512-byte aligned but not page aligned either succeed with all their data or fail with EIO.

Why such buffers: a loop request is handed to the image as one write, and FUSE carries at most
32 pages of memory per request.  A page-aligned 128 KiB request is exactly 32 pages; the same
request from a buffer starting 512 bytes into a page touches 33, so FUSE cuts it in two (and a
request from 1 KiB pieces each across a page boundary touches two pages per KiB).  If the
later piece is the one refused at the limit, FUSE returns a short count and the loop driver
(``lo_complete_rq``, Linux 6.18) completes a short *write* as success: data lost without an
error.  zramfs.loopdev clamps loop requests to the size that always fits (16 KiB); with the
former 128 KiB clamp these tests found lost sectors on every run.

How: incompressible data (every page stored whole) is written until the limit refuses it a few
times; then the limit goes up one page at a time and the refused write is retried at the same
place, so the refusal walks through every page of a write, and through both pieces of any
request FUSE cuts in two.  Every write's outcome is recorded in a per-sector model, and the
whole range is read back with O_DIRECT at the end.  After a refused write each of its sectors
may be old or new; after a successful one only new.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from support.mountutil import Mount, loop_unusable
from support.reliability import Watchdog, daemon_killer
from zramfs import loopdev

pytestmark = pytest.mark.fuse

PAGE = 4096
SECTOR = 512
KiB = 1 << 10
MiB = 1 << 20
ZERO_SECTOR = bytes(SECTOR)


@contextmanager
def off_page_buffer(size: int) -> Iterator[memoryview]:
    """``size`` writable bytes starting 512 bytes into a page: sector aligned, as O_DIRECT on a
    512-byte-sector loop device requires (dma_alignment 511), but never page aligned."""
    area = mmap.mmap(-1, size + PAGE)
    view = memoryview(area)[SECTOR : SECTOR + size]
    try:
        yield view
    finally:
        view.release()
        area.close()


#: One piece of a scattered buffer: 1 KiB, the jbd2 journal's unit on a 1 KiB-block ext4 (what
#: mkfs.ext4 makes on a small image), placed across a page boundary: two pages per KiB, the most
#: pages a sector-aligned request can touch.
PIECE = 2 * SECTOR


@contextmanager
def scattered_buffer(size: int) -> Iterator[list[memoryview]]:
    """``size`` bytes as an iovec of 1 KiB pieces, each in two pages of its own."""
    area = mmap.mmap(-1, size // PIECE * 2 * PAGE + PAGE)
    views = [
        memoryview(area)[at : at + PIECE]
        for at in range(PAGE - SECTOR, size // PIECE * 2 * PAGE, 2 * PAGE)
    ]
    try:
        yield views
    finally:
        for view in views:
            view.release()
        area.close()


@contextmanager
def write_buffer(
    layout: str, size: int
) -> Iterator[tuple[list[memoryview], Callable[[bytes], None]]]:
    """(the iovec to write, a function that puts the data in it) for a buffer layout:
    ``off-page`` (one buffer 512 bytes into a page) or ``scattered``."""
    if layout == "off-page":
        with off_page_buffer(size) as view:

            def fill(data: bytes) -> None:
                view[:] = data

            yield [view], fill
    elif layout == "scattered":
        with scattered_buffer(size) as views:

            def fill(data: bytes) -> None:
                for i, view in enumerate(views):
                    view[:] = data[i * PIECE : (i + 1) * PIECE]

            yield views, fill
    else:
        raise ValueError(f"unknown buffer layout {layout!r}")


class SectorModel:
    """Per 512-byte sector of the device, the contents it may hold, as 64-bit hashes (a soak
    run's data would not fit in memory): one when known, more after refused writes.

    A refused write may leave any of its sectors old or new.  Not per 4 KiB block: a loop
    device has 512-byte sectors, so one block can be split between two requests of the same
    write (the loop's queue limits, FUSE's page limit), one of them refused and the other not.
    """

    def __init__(self, size: int) -> None:
        self.known = array("q", [hash(ZERO_SECTOR)]) * (size // SECTOR)
        self.maybe: dict[int, set[int]] = {}  # sector -> contents of refused writes

    def record(self, offset: int, data: bytes, *, succeeded: bool) -> None:
        assert offset % SECTOR == 0 and len(data) % SECTOR == 0
        first = offset // SECTOR
        for i in range(len(data) // SECTOR):
            h = hash(data[i * SECTOR : (i + 1) * SECTOR])
            if succeeded:
                self.known[first + i] = h
                self.maybe.pop(first + i, None)
            else:
                self.maybe.setdefault(first + i, set()).add(h)

    def allows(self, sector: int, content: bytes) -> bool:
        h = hash(content)
        return h == self.known[sector] or h in self.maybe.get(sector, ())

    def certain(self, sector: int) -> bool:
        return sector not in self.maybe


@dataclass
class Outcome:
    succeeded: int = 0
    refused: int = 0
    limit_raises: int = 0
    end: int = 0  # just past the last byte any write tried


def set_mem_limit(m: Mount, nbytes: int) -> None:
    m.write_attr("mem_limit", str(nbytes))


#: Fresh writes refused in a row before the sweep starts (the fill goes this far past the limit).
FILL_REFUSALS = 4


def write_at_the_limit(
    m: Mount,
    fd: int,
    *,
    layout: str,
    write_size: int,
    shift: int,
    end: int,
    limit: int,
    sweeps: int,
    rng: random.Random,
    model: SectorModel,
) -> Outcome:
    """Fill, then sweep.  Random (incompressible) data, ``write_size`` bytes at a time from
    ``shift`` on, every refusal checked to be EIO and recorded in ``model``.

    Fill: write on until ``FILL_REFUSALS`` writes in a row were refused, each at a fresh place.
    Sweep: raise the limit one page at a time and retry the refused write at the same place
    with new data, until ``sweeps`` writes went through.  Each retry re-stores what the previous
    one stored and gets one page further, so the refusal walks through every page of the write,
    and through both pieces of every loop request FUSE has to cut in two.
    """
    out = Outcome()
    offset = shift
    refused_in_row = 0
    with write_buffer(layout, write_size) as (iov, fill):
        while out.succeeded < sweeps or refused_in_row < FILL_REFUSALS:
            assert offset + write_size <= end, f"device too small for the test: {out}"
            data = rng.randbytes(write_size)
            fill(data)
            out.end = max(out.end, offset + write_size)
            try:
                n = os.pwritev(fd, iov, offset)
            except OSError as exc:
                assert exc.errno == errno.EIO, f"write at {offset}: {exc!r} (only EIO may come)"
                model.record(offset, data, succeeded=False)
                out.refused += 1
                if refused_in_row < FILL_REFUSALS:
                    refused_in_row += 1
                    offset += write_size  # filling: the next one at a fresh place
                else:
                    limit += PAGE  # sweeping: one page more, same place
                    set_mem_limit(m, limit)
                    out.limit_raises += 1
                continue
            assert n == write_size, f"short O_DIRECT write at {offset}: {n} of {write_size}"
            model.record(offset, data, succeeded=True)
            offset += write_size
            if refused_in_row < FILL_REFUSALS:
                refused_in_row = 0  # still below the limit
            else:
                out.succeeded += 1
    return out


def verify(fd: int, model: SectorModel, *, start: int, end: int, chunk: int) -> None:
    """Read [start, end) back with O_DIRECT into an off-page buffer; every block must hold one
    of the contents the model allows."""
    bad: list[str] = []
    with off_page_buffer(chunk) as buf:
        for offset in range(start, end, chunk):
            n = os.preadv(fd, [buf], offset)
            assert n == chunk, f"short O_DIRECT read at {offset}: {n}"
            got = bytes(buf)
            for i in range(0, chunk, SECTOR):
                sector = (offset + i) // SECTOR
                if not model.allows(sector, got[i : i + SECTOR]):
                    what = "the known" if model.certain(sector) else "a possible"
                    bad.append(f"sector {sector} (byte {sector * SECTOR}): not {what} content")
    assert not bad, f"{len(bad)} sector(s) wrong, first: {bad[:5]}"


def wait_clamped(loop: str, limit_kb: int, timeout: float = 5.0) -> None:
    """The mount's loop guard lowers max_sectors_kb asynchronously (on the attach uevent)."""
    deadline = time.monotonic() + timeout
    while loopdev.max_request_kb(loop) > limit_kb:
        assert time.monotonic() < deadline, f"{loop}: max_sectors_kb not clamped to {limit_kb}"
        time.sleep(0.01)


def loop_writes_at_mem_limit(
    zmount,
    *,
    layout: str,
    write_size: int,
    shift: int,
    disksize: int,
    limit: int,
    sweeps: int,
    seed: int,
) -> None:
    if (why := loop_unusable()) is not None:
        pytest.skip(why)
    from zramfs.fs import MAX_IO

    # No background compaction: the page counts the sweep walks through stay put.
    m = zmount(
        "--size", str(disksize), "--mem-limit", str(limit), "--algorithm", "lz4", "--no-compact"
    )
    loop = m.losetup()  # detached by the fixture, even on failure
    wait_clamped(loop, loopdev.whole_request_kb(MAX_IO // KiB))
    model = SectorModel(disksize)
    with Watchdog(300, daemon_killer(m), what="O_DIRECT loop writes at mem_limit"):
        fd = os.open(loop, os.O_RDWR | os.O_DIRECT)
        try:
            out = write_at_the_limit(
                m,
                fd,
                layout=layout,
                write_size=write_size,
                shift=shift,
                end=disksize,
                limit=limit,
                sweeps=sweeps,
                rng=random.Random(seed),
                model=model,
            )
            # Everything up to the last write tried, and the never-written rest of its chunk.
            chunk = 128 * KiB
            verify(fd, model, start=0, end=min(disksize, -(-out.end // chunk) * chunk), chunk=chunk)
        finally:
            os.close(fd)
    assert out.succeeded == sweeps and out.refused > FILL_REFUSALS, out
    assert out.limit_raises >= sweeps * write_size // PAGE, out
    assert int(m.read_attr("io_stat").split()[1]) >= out.refused, "failed_writes undercounted"


LAYOUTS = ["off-page", "scattered"]
SHIFTS = pytest.mark.parametrize("shift", [0, SECTOR], ids=["block-aligned", "sector-offset"])


@SHIFTS
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("write_size,sweeps", [(128 * KiB, 3), (MiB, 1)], ids=["128K", "1M"])
def test_o_direct_writes_at_mem_limit_succeed_whole_or_fail(
    zmount, layout: str, write_size: int, sweeps: int, shift: int
) -> None:
    """128 KiB and 1 MiB O_DIRECT writes from buffers that are sector but not page aligned,
    at block-aligned and 512-byte-shifted device offsets: a 1 MiB limit filled past, then the
    refusal swept page by page through 3 writes of 128 KiB or one of 1 MiB."""
    loop_writes_at_mem_limit(
        zmount,
        layout=layout,
        write_size=write_size,
        shift=shift,
        disksize=16 * MiB,
        limit=MiB,
        sweeps=sweeps,
        seed=write_size + shift + len(layout),
    )


@pytest.mark.soak
@SHIFTS
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "write_size,swept", [(128 * KiB, 32 * MiB), (MiB, 8 * MiB)], ids=["128K", "1M"]
)
def test_o_direct_writes_at_mem_limit_soak(
    zmount, layout: str, write_size: int, swept: int, shift: int
) -> None:
    """The same past a 16 MiB limit, the refusal swept through 32 MiB of 128 KiB writes or
    8 MiB of 1 MiB writes (each retry re-stores the write so far: 1 MiB ones cost ~40 s)."""
    loop_writes_at_mem_limit(
        zmount,
        layout=layout,
        write_size=write_size,
        shift=shift,
        disksize=128 * MiB,
        limit=16 * MiB,
        sweeps=swept // write_size,
        seed=7 * write_size + shift + len(layout),
    )


def test_sector_model_allows_old_or_new_after_a_refusal() -> None:
    """The model itself: a success replaces a sector's content, a refusal adds the new content
    beside the old one, sector by sector."""
    model = SectorModel(8 * SECTOR)
    model.record(SECTOR, b"a" * 2 * SECTOR, succeeded=True)
    assert model.allows(0, ZERO_SECTOR) and not model.allows(1, ZERO_SECTOR)
    assert model.allows(1, b"a" * SECTOR) and model.allows(2, b"a" * SECTOR)
    model.record(2 * SECTOR, b"b" * 2 * SECTOR, succeeded=False)
    assert model.allows(2, b"a" * SECTOR) and model.allows(2, b"b" * SECTOR)
    assert model.allows(3, ZERO_SECTOR) and model.allows(3, b"b" * SECTOR)
    assert not model.certain(2) and model.certain(1)
    model.record(2 * SECTOR, b"c" * SECTOR, succeeded=True)
    assert model.certain(2) and model.allows(2, b"c" * SECTOR)
    assert not model.allows(2, b"a" * SECTOR) and not model.allows(2, b"b" * SECTOR)
