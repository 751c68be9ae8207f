"""zramfs: zram devices on the allocator, served as a FUSE tree that mirrors the kernel paths."""
