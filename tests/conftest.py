"""Shared pytest fixtures: real mounts (``zmount``, see tests/support/mountutil.py) and ``lockdep``.

``zmount`` (a factory of real zramfs mounts, always torn down) is available to every test.
``lockdep`` turns the lock checker on for one test and off again, even when the test fails.
"""
from collections.abc import Iterator

import pytest

from allocator.locks import set_lockdep
from support.mountutil import zmount  # noqa: F401  (re-exported fixture)


@pytest.fixture
def lockdep() -> Iterator[None]:
    set_lockdep(True)
    try:
        yield
    finally:
        set_lockdep(False)
