"""The column names of zram's stat files, in the order the kernel prints them (docs/zram.md,
"Statistics formats"): the one list that record files, replay results, the benchmarks and the
kernel comparison name their fields by.  No imports, so the light commands (``zramfs record``,
``zramfs plot``) can use it without loading the device."""

from __future__ import annotations

__all__ = [
    "MM_STAT_FIELDS",
    "IO_STAT_FIELDS",
    "BD_STAT_FIELDS",
    "DEBUG_STAT_FIELDS",
    "BLOCK_STAT_FIELDS",
]

# mm_stat_show()
MM_STAT_FIELDS = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "mem_limit",
    "mem_used_max",
    "same_pages",
    "pages_compacted",
    "huge_pages",
    "huge_pages_since",
)
IO_STAT_FIELDS = ("failed_reads", "failed_writes", "invalid_io", "notify_free")
BD_STAT_FIELDS = ("bd_count", "bd_reads", "bd_writes")
DEBUG_STAT_FIELDS = ("version", "writestall", "miss_free")
# the block layer's /sys/block/<dev>/stat (Documentation/block/stat.rst)
BLOCK_STAT_FIELDS = (
    "read_ios",
    "read_merges",
    "read_sectors",
    "read_ticks",
    "write_ios",
    "write_merges",
    "write_sectors",
    "write_ticks",
    "in_flight",
    "io_ticks",
    "time_in_queue",
    "discard_ios",
    "discard_merges",
    "discard_sectors",
    "discard_ticks",
    "flush_ios",
    "flush_ticks",
)
