#!/usr/bin/env bash
# scripts/fs_demo.sh - a filesystem on a zramfs device: losetup -> mkfs.ext4 -> mount -> copy files
# -> verify them (sha256sum, after dropping caches) -> mm_stat -> tear down.
#
#   scripts/fs_demo.sh [MNT]
#
#   MNT            an existing zramfs mount (uses MNT/dev/zram0; left mounted afterwards).
#                  Without it the script mounts its own in a temporary directory and unmounts it.
#   SIZE=512M      size of the device it mounts (and the disksize it sets on an uninitialised MNT)
#   ALGORITHM=lz4  compression algorithm of the device it mounts
#   BACKEND=zramfs zramfs | nullfs (scripts/nullfs.py: same FUSE image, no compression; a baseline)
#   SRC="/usr/lib/python3 /usr/share/doc"   directories copied onto the filesystem
#   LOOP_DIO=off   losetup --direct-io=on|off
#   RECORD=1       record the mount while the demo runs (zramfs record, RECORD_INTERVAL=0.5 s)
#                  and plot it at the end (zramfs plot; the paths are printed); RECORD=0 skips
#   RECORD_DIR=DIR where the record, its CSV and the plots go (default /tmp/zramfs-record.XXXXXX)
#
# Needs root (losetup, mount). Cleans up on any failure: filesystem, loop device, its own mount.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-512M}"
ALGORITHM="${ALGORITHM:-lz4}"
BACKEND="${BACKEND:-zramfs}"
SRC="${SRC:-/usr/lib/python3 /usr/share/doc}"
LOOP_DIO="${LOOP_DIO:-off}"

log() { printf '[fs_demo] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=scripts/devicelib.sh
. "$REPO/scripts/devicelib.sh"   # mount_device, unmount_device, show_stats

[ "$(id -u)" = 0 ] || die "needs root (losetup, mount)"
for c in losetup mkfs.ext4 mount umount sha256sum mountpoint; do
    command -v "$c" >/dev/null 2>&1 || die "missing $c (scripts/test.sh --deps-only installs it)"
done

LOOP=""; FSDIR=""; WORK=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$FSDIR" ]; then
        if is_mounted "$FSDIR"; then umount "$FSDIR" || umount -l "$FSDIR"; fi
        rmdir "$FSDIR" 2>/dev/null
    fi
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    stop_record
    unmount_device
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ "$rc" = 0 ] || log "failed (exit $rc); cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_device "${1:-}"
start_record fs
DEV="$MNT/dev/zram0"
WORK="$(mktemp -d /tmp/fs_demo.XXXXXX)"
FSDIR="$WORK/fs"; mkdir "$FSDIR"

LOOP="$(losetup --find --show --direct-io="$LOOP_DIO" "$DEV")"
log "$DEV on $LOOP ($(blockdev --getsize64 "$LOOP") bytes, direct-io=$LOOP_DIO)"

t0=$(date +%s.%N)
mkfs.ext4 -q -F -L zramfs-demo "$LOOP"
mount -t ext4 "$LOOP" "$FSDIR"
t1=$(date +%s.%N)
log "mkfs.ext4 + mount: $(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s"

# what to copy: existing directories from SRC, checksummed at the source
srcs=()
for s in $SRC; do [ -d "$s" ] && srcs+=("$s"); done
[ "${#srcs[@]}" -gt 0 ] || die "none of SRC=($SRC) exists"
(cd / && find "${srcs[@]}" -type f -print0 | xargs -0 -r sha256sum) > "$WORK/sums"
nfiles=$(wc -l < "$WORK/sums")
bytes=$(cd / && find "${srcs[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
log "copying $nfiles files, $((bytes / 1048576)) MiB from: ${srcs[*]}"

t0=$(date +%s.%N)
mkdir "$FSDIR/data"
tar -C / -cf - "${srcs[@]#/}" | tar -C "$FSDIR/data" -xf -
sync
t1=$(date +%s.%N)
awk -v b="$bytes" -v t="$(awk "BEGIN{print $t1-$t0}")" 'BEGIN{printf "[fs_demo] copy + sync: %.1f s, %.1f MiB/s\n", t, (t > 0 ? b/1048576/t : 0)}' >&2
df -h "$FSDIR" | sed 's/^/  /'
show_stats

# read everything back from the device, not from the page cache: remount and drop caches
umount "$FSDIR"
blockdev --flushbufs "$LOOP" 2>/dev/null || true
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
mount -t ext4 "$LOOP" "$FSDIR"
t0=$(date +%s.%N)
if (cd "$FSDIR/data" && sed 's|  /|  |' "$WORK/sums" | sha256sum -c --quiet --strict); then
    t1=$(date +%s.%N)
    log "verified: all $nfiles files match their sha256 ($(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s to read back)"
else
    die "sha256 mismatch after reading back from $DEV"
fi

# delete the copy and trim: discards reach the device as fallocate(PUNCH_HOLE) and free its blocks
rm -rf "$FSDIR/data"
sync
if fstrim -v "$FSDIR" 2>/dev/null; then log "after rm + fstrim:"; else log "after rm (fstrim not supported):"; fi
show_stats

umount "$FSDIR"
losetup -d "$LOOP"; LOOP=""
stop_record
log "done"
