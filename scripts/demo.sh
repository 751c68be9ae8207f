#!/usr/bin/env bash
# scripts/demo.sh - the main job on a fresh machine: install what is missing, mount a zramfs
# device, run a workload on MNT/dev/zram0, show what zram would show (mm_stat, io_stat,
# `zramfs status`), then fragmentation and compaction: discard a random part of the data, plot,
# compact, plot; unmount. Run as root from a checkout:
#
#   scripts/demo.sh
#
#   SIZE=1G          disksize of the device
#   ALGORITHM=lz4    comp_algorithm
#   IO_SIZE=256M     how much of the device the workload touches
#   RUNTIME=20       seconds cap per fio job
#   BACKEND=zramfs   zramfs | nullfs (scripts/nullfs.py: the same FUSE image without compression)
#   NO_INSTALL=1     do not install anything
#   NO_FIO=1         use the Python workload even when fio is installed
#   DISCARD_PCT=60   per cent of the written 4 KiB blocks discarded at random before compaction
#   RECORD=1         record the mount (zramfs record) and plot it (zramfs plot); RECORD=0 skips
#   RECORD_DIR=DIR   where the records and plots go (default /tmp/zramfs-record.XXXXXX)
#
# Workload: fio when installed (scripts/fio/verify-crc32c.fio, then compressible.fio), else a
# Python writer of mixed pages (same-filled, text, half random, random) that reads them back.
# If `zramfs mount` fails (no usable /dev/fuse, say), it says why, runs the allocator demo
# (scripts/demo_allocator.py: the zsmalloc port alone, no mount) and exits 1. Cleans up
# (unmounts) on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-1G}"
ALGORITHM="${ALGORITHM:-lz4}"
IO_SIZE="${IO_SIZE:-256M}"
RUNTIME="${RUNTIME:-20}"
BACKEND="${BACKEND:-zramfs}"

log() { printf '[demo] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=scripts/devicelib.sh
. "$REPO/scripts/devicelib.sh"   # mount_device, unmount_device, show_stats

allocator_demo() {  # when the mount fails: show the allocator alone, then fail
    log "running the allocator demo instead: python3 scripts/demo_allocator.py"
    python3 "$REPO/scripts/demo_allocator.py" || true
    die "zramfs mount failed (see above); only the allocator demo ran"
}

cleanup() {
    local rc=$?
    set +e
    stop_record
    unmount_device
    [ "$rc" = 0 ] || log "failed (exit $rc); cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. dependencies (system packages, /dev/fuse, the project itself)
if [ -z "${NO_INSTALL:-}" ]; then
    bash "$REPO/scripts/test.sh" --deps-only
fi

# 2. mount
[ "$(id -u)" = 0 ] || log "not root: the mount may fail (FUSE needs /dev/fuse access)"
MNT="$(mktemp -d /tmp/zramfs-demo.XXXXXX)"; OWN_MNT=1
case "$BACKEND" in
    zramfs)
        log "zramfs mount $MNT --size $SIZE --algorithm $ALGORITHM"
        if ! zramfs_cli mount "$MNT" --size "$SIZE" --algorithm "$ALGORITHM"; then
            log "zramfs mount failed (see above)"
            unmount_device
            allocator_demo
        fi ;;
    nullfs)
        log "nullfs.py $MNT --size $SIZE"
        python3 "$REPO/scripts/nullfs.py" "$MNT" --size "$SIZE" ;;
    *) die "BACKEND must be zramfs or nullfs" ;;
esac
for _ in $(seq 300); do is_mounted "$MNT" && [ -e "$MNT/dev/zram0" ] && break; sleep 0.1; done
is_mounted "$MNT" || die "$MNT did not mount"
DEV="$MNT/dev/zram0"
log "mounted: $DEV ($(stat -c %s "$DEV") bytes)"
if [ -d "$MNT/sys/block/zram0" ]; then
    echo "comp_algorithm: $(cat "$MNT/sys/block/zram0/comp_algorithm")"
fi
start_record 1-fill-discard

# 3. workload
if [ -z "${NO_FIO:-}" ] && command -v fio >/dev/null 2>&1; then
    run_fio() {  # JOBFILE IO_SIZE: prints the summary lines, fails when fio fails
        local out
        if ! out="$(FILENAME="$DEV" SIZE="$2" RUNTIME="$RUNTIME" fio "$REPO/scripts/fio/$1" 2>&1)"; then
            echo "$out"; die "fio $1 failed"
        fi
        echo "$out" | grep -E '^[a-z0-9-]+: \(groupid|^ +(READ|WRITE):' || true
    }
    # integrity first (its last pass writes random, incompressible data), then the compressible
    # workload over the same blocks, so the statistics below describe typical data
    log "fio scripts/fio/verify-crc32c.fio (SIZE=64M; crc32c on every block, verify_fatal)"
    run_fio verify-crc32c.fio 64M
    log "fio verify: OK"
    log "fio scripts/fio/compressible.fio (SIZE=$IO_SIZE, RUNTIME=$RUNTIME s cap per job)"
    run_fio compressible.fio "$IO_SIZE"
else
    log "Python writer of mixed pages ($IO_SIZE; fio not installed or NO_FIO set)"
    python3 - "$DEV" "$(numfmt --from=iec "${IO_SIZE%B}")" <<'PY'
import os, random, sys, time
dev, nbytes = sys.argv[1], int(sys.argv[2])
P, CH = 4096, 32                      # 4 KiB pages, written 128 KiB at a time
def page(i):
    k = i % 4
    if k == 0: return bytes([i % 251]) * P                       # same-filled
    if k == 1: return (b"page %10d zram demo text " % i * 200)[:P]  # compressible
    r = random.Random(i)
    return r.randbytes(P // 2) + bytes(P // 2) if k == 2 else r.randbytes(P)
n = nbytes // P
fd = os.open(dev, os.O_RDWR)
t = time.monotonic()
for i in range(0, n, CH):
    os.pwrite(fd, b"".join(page(j) for j in range(i, min(n, i + CH))), i * P)
w = time.monotonic() - t; t = time.monotonic()
bad = sum(os.pread(fd, P, i * P) != page(i) for i in range(n))
r = time.monotonic() - t
os.close(fd)
print(f"wrote {n} pages in {w:.1f} s ({nbytes / w / 2**20:.1f} MiB/s), read back in {r:.1f} s: {bad} bad")
sys.exit(1 if bad else 0)
PY
fi

# 4. what zram would show
show_stats
[ -r "$MNT/sys/block/zram0/io_stat" ] && echo "io_stat: $(cat "$MNT/sys/block/zram0/io_stat")"

# 5. fragmentation and compaction: discard a random part of the blocks (as swap frees slots and
# a filesystem trims: fallocate PUNCH_HOLE), which leaves the zspages partly used; plot; compact,
# which moves the survivors together and frees the emptied zspages; plot.
if [ -e "$MNT/sys/block/zram0/compact" ]; then
    DISCARD_PCT="${DISCARD_PCT:-60}"
    log "discarding ${DISCARD_PCT}% of the written blocks at random"
    python3 - "$DEV" "$(numfmt --from=iec "${IO_SIZE%B}")" "$DISCARD_PCT" <<'PY'
import ctypes, os, random, sys
dev, nbytes, pct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01
n = nbytes // 4096
fd = os.open(dev, os.O_RDWR)
for i in random.Random(14).sample(range(n), n * pct // 100):
    if libc.fallocate(fd, PUNCH_HOLE_KEEP_SIZE, i * 4096, 4096) != 0:
        sys.exit(f"fallocate: {os.strerror(ctypes.get_errno())}")
os.close(fd)
print(f"discarded {n * pct // 100} of {n} blocks")
PY
    show_stats
    sleep 1
    stop_record
    start_record 2-compact
    sleep 1
    echo 1 > "$MNT/sys/block/zram0/compact"
    log "after echo 1 > compact:"
    show_stats
    sleep 1
    stop_record
fi

# 6. unmount (the trap does it; done here to report it)
unmount_device
log "unmounted; done"
