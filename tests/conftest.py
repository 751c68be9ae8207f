"""Shared pytest configuration: only mount fixtures and markers (see tests/mountutil.py).

``zmount`` (a factory of real zramfs mounts, always torn down) is available to every test.
"""
from mountutil import zmount  # noqa: F401  (re-exported fixture)
