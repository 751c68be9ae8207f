"""The shared-memory ring between a traced mount and its sink (zramfs/trace_ring.py)."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zramfs import trace_ring
from zramfs.trace_ring import RingReader, RingWriter, SinkGone

ROOT = Path(__file__).resolve().parents[1]


def pair(capacity: int) -> tuple[RingWriter, RingReader]:
    w = RingWriter(capacity)
    r = RingReader(os.dup(w.fd), w.size)  # the reader closes the fd it is given
    return w, r


def always() -> bool:
    return True


def test_capacity_must_be_a_power_of_two() -> None:
    for bad in (0, -4, 3, 100):
        with pytest.raises(ValueError, match="power of two"):
            RingWriter(bad)


def test_available_names_the_machines_with_total_store_order() -> None:
    assert trace_ring.available() == (platform.machine().lower() in ("x86_64", "amd64"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.booleans()), max_size=40))
def test_what_is_taken_is_what_was_put_in_order(steps: list[tuple[bytes, bool]]) -> None:
    """Puts that fit, takes in between: the taken bytes are the put bytes, across wraps."""
    w, r = pair(64)
    try:
        sent, got, pending = bytearray(), bytearray(), 0
        for data, take in steps:
            if pending + len(data) > 64 or take:
                chunk = r.take()
                got += chunk
                pending -= len(chunk)
                assert pending == 0
            w.put(data, always)
            sent += data
            pending += len(data)
        got += r.take()
        assert got == sent
        assert r.take() == b""
    finally:
        w.close()
        r.close()


def test_a_record_longer_than_the_ring_goes_in_pieces() -> None:
    """The producer waits for room piece by piece while the consumer takes."""
    w, r = pair(4096)
    data = random.Random(1).randbytes(100_000)
    got = bytearray()
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or len(got) < len(data):
            got.extend(r.take())
            time.sleep(0.0005)

    th = threading.Thread(target=consume)
    th.start()
    try:
        w.put(data, always)
    finally:
        done.set()
        th.join(10)
        w.close()
        r.close()
    assert bytes(got) == data


def test_a_full_ring_waits_for_the_consumer_then_goes_on() -> None:
    w, r = pair(64)
    try:
        w.put(b"a" * 64, always)
        put_done = threading.Event()

        def put() -> None:
            w.put(b"b" * 10, always)
            put_done.set()

        th = threading.Thread(target=put)
        th.start()
        assert not put_done.wait(0.05)  # no room: it waits
        assert r.take() == b"a" * 64
        assert put_done.wait(5)
        th.join()
        assert r.take() == b"b" * 10
    finally:
        w.close()
        r.close()


def test_a_dead_consumer_stops_a_waiting_producer() -> None:
    w, r = pair(64)
    try:
        w.put(b"x" * 60, always)
        with pytest.raises(SinkGone):
            w.put(b"y" * 10, lambda: False)
        assert r.take() == b"x" * 60 + b"y" * 4  # what fitted went in
    finally:
        w.close()
        r.close()


_CONSUMER = """
import os, random, sys, time
from zramfs.trace_ring import RingReader
fd, size, total, seed = map(int, sys.argv[1:])
r = RingReader(fd, size)
want = random.Random(seed).randbytes(total)
got = bytearray()
while len(got) < total:
    chunk = r.take()
    if not chunk:
        time.sleep(0.0002)
    got += chunk
sys.exit(0 if got == want else 1)
"""


def test_another_process_on_another_cpu_reads_the_stream_exactly() -> None:
    """The real arrangement: the consumer is a process (its own CPU where there is one),
    taking while the producer puts, across thousands of wraps; every byte arrives in order."""
    total, seed = 8 << 20, 5
    data = random.Random(seed).randbytes(total)
    w = RingWriter(16 << 10)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CONSUMER, str(w.fd), str(w.size), str(total), str(seed)],
        pass_fds=[w.fd],
        cwd=ROOT,
    )
    w.close_fd()
    try:
        rnd = random.Random(seed + 1)
        pos = 0
        while pos < total:
            n = min(rnd.choice((1, 7, 100, 4100, 20_000)), total - pos)
            w.put(data[pos : pos + n], lambda: proc.poll() is None)
            pos += n
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        w.close()
