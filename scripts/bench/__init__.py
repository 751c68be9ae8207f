"""Side-by-side fio benchmark: zramfs against its user-space peers and kernel zram.

    python3 scripts/bench.py                      # defaults: 256 MiB images, 4 s per job, 3 rounds
    python3 scripts/bench.py --quick --systems zramfs-lz4,nullfs --rounds 1
    python3 scripts/bench.py --profile            # py-spy profile of zramfs-lz4 under the 4 KiB jobs
    python3 scripts/bench.py --micro              # in-process cost of each layer (no FUSE)
    python3 scripts/bench.py server-cpu PID MNT/dev/zram0 --jobs randwrite-4k   # a running server
    python3 scripts/bench.py device-ab /tmp/base .   # in process: hot device paths, A/B of two trees
    python3 scripts/bench.py device-128k [ROOT]      # in process: 128 KiB writes and reads
    python3 scripts/bench.py daemon-ab               # the compaction daemon on against off

Systems (``--systems``, comma-separated; default all):

- ``zramfs-lz4``, ``zramfs-zstd``: ``zramfs mount MNT --size SIZE --algorithm A --foreground``,
  compaction daemon on with its defaults;
- ``zramfs-lz4-nocompact``: the same with ``--no-compact`` (daemon on vs off, and the
  ``migrate_lock`` contention from MNT/proc/lock_stat under both);
- ``zramfs-lz4-pure`` (and ``zramfs-zstd-pure``, only when named in ``--systems``): zramfs-lz4
  on the pure-Python build (``ZRAMFS_PURE_PYTHON=1`` in the server's environment), beside the
  compiled one; the report names the build each server ran (its ``build_mode`` parameter);
- ``zramfs-lz4-aggressive`` (only when named in ``--systems``): the daemon as busy as it goes
  (``--compact-threshold 1 --compact-interval 10``), to put ``migrate_lock`` under pressure;
- ``nullfs``: ``zramfs mount MNT --backend null --size SIZE --foreground`` — the same FUSE front
  end (binding, options, operations) over a plain RAM image, no compression, no allocator: the
  ceiling of a Python FUSE image here;
- ``nbdkit-zstd``: ``nbdkit -U SOCK memory SIZE allocator=zstd`` exposed as a file by
  ``nbdfuse DIR/zram0 --unix SOCK`` (skipped with a message when either is missing);
- ``kernel-lz4``: the kernel's /dev/zram0 with lz4 (skipped when absent, not writable or already
  initialised — someone else's; reset before and after use).

Every system is set up once, prefilled with compressible data (so the read jobs decompress), then
each fio job runs on every system in turn, round after round (A B C A B C …; each round starts one
system further, so no system always runs first; ``--settle`` seconds of idle before every run,
default 2, so no system pays for the one before it), with ``--output-format=json``. The synthetic
jobs write compressible buffers (``buffer_compress_percentage=50``, ``buffer_compress_chunk=4k``,
``refill_buffers``). Then a real-data image — real files of this machine concatenated (Python
sources, binaries, shared libraries, documentation) — is written onto every device by this script
(128 KiB O_DIRECT writes, timed: the ``real-write-128k`` row), the devices' ``mm_stat`` and the
server processes' RSS are read, and read jobs run on that data.

Output (``--out``, default bench-out/): ``results.md`` (tables: IOPS, MB/s, p99 completion latency,
each system's ratio to zramfs-lz4, the targets, lock contention, memory), ``results.json`` (every
round's figures, the environment, the exact command), ``results.png`` (a bar chart; needs
matplotlib, the ``plot`` extra — skipped with a message without it) and ``jobs/*.fio`` (the job
files, runnable alone with FILENAME/SIZE/RUNTIME in the environment).

Everything mounted or attached is torn down on any failure, Ctrl-C or SIGTERM (try/finally, signal
handlers turned into an exception): FUSE mounts unmounted and their servers reaped, nbdkit stopped,
kernel zram reset.

The harness is this package (``scripts/bench.py`` is its entry point; ``python3 -m bench`` from
scripts/ runs it too), one concern a module:

- ``cli``: the command line, defaults, dispatch;
- ``run``: the benchmark run (set up, prefill, rounds, real data, teardown, reports written);
- ``systems``: each system under test, its setup, teardown, processes and statistics;
- ``jobs``: the fio jobs, their job files, running fio and reading its JSON;
- ``realdata``: the real-data image and its timed writer;
- ``readings``: /proc figures of the servers, mm_stat and lock_stat parsers;
- ``report``: results, medians, ratios, targets, the Markdown report and the chart;
- ``profile``: ``--profile`` (py-spy);  ``micro``: ``--micro`` (in process, no FUSE);
- ``server_cpu``: the ``server-cpu`` subcommand;  ``common``: errors, logging, signals;
- ``daemon_ab``: the ``daemon-ab`` subcommand (one mount, the daemon's policy switched between
  runs);
- ``device``: the ``device-ab`` and ``device-128k`` subcommands (in process, one checkout or an
  A/B of two imported side by side);  ``pages``: the page contents the in-process benchmarks
  write (also scripts/bench_device.py's).
"""
