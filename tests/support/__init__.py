"""Test support code shared by several test modules (importable as ``support.*``: ``tests/`` is
on ``sys.path`` through its conftest)."""
