"""zsmalloc, ported from Linux 5.17 (pool migrate_lock design), on simulated physical memory.

Knows nothing of zram or FUSE.
"""
