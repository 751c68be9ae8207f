#!/usr/bin/env bash
# scripts/swap_experiment.sh - swap on a zramfs device, the way zram is used most.
# losetup -> mkswap -> swapon -> a process in a memory-limited cgroup allocates more than its
# limit, fills it with patterned pages (same-filled, compressible, half random, random), reads all
# of it back and checks every byte -> /proc/swaps, mm_stat -> swapoff -> tear down.
#
#   scripts/swap_experiment.sh [MNT]
#
#   MNT            an existing zramfs mount (uses MNT/dev/zram0; left mounted afterwards).
#                  Without it the script mounts its own in a temporary directory and unmounts it.
#   SIZE=512M      size of the device it mounts (and the disksize it sets on an uninitialised MNT)
#   ALGORITHM=lz4  compression algorithm of the device it mounts
#   BACKEND=zramfs zramfs | nullfs (scripts/nullfs.py: same FUSE image, no compression; a baseline)
#   LIMIT=64M      the cgroup's memory limit (memory.max / memory.limit_in_bytes)
#   ALLOC=192M     what the process allocates (must exceed LIMIT, and fit in LIMIT + the swap)
#   DISCARD=pages  swapon --discard=once|pages|both|none: with "pages" freed swap slots are
#                  discarded (fallocate PUNCH_HOLE on the image), which frees them in the pool as
#                  kernel zram's swap_slot_free_notify does; "none" leaves stale data stored
#   MLOCK=1        mount zramfs with --mlock (daemon pinned in RAM, PR_SET_IO_FLUSHER; plus
#                  --no-io-flusher, said in the log, when this process lacks CAP_SYS_RESOURCE,
#                  which the prctl needs); MLOCK=0 mounts without. An existing MNT is used as is.
#   RECORD=1       record the mount while the experiment runs (zramfs record, RECORD_INTERVAL=0.5
#                  s) and plot it at the end (zramfs plot; the paths are printed); RECORD=0 skips
#   RECORD_DIR=DIR where the record, its CSV and the plots go (default /tmp/zramfs-record.XXXXXX)
#
# cgroups: v2 (memory.max + memory.swap.max) when the memory controller is on the unified
# hierarchy, else v1 (memory.limit_in_bytes, memory.swappiness=100), else systemd-run --scope.
# Needs root. Cleans up on any failure: the worker, swap, loop device, cgroup, its own mount.
#
# Caveat: swap on a loop device over a FUSE file can deadlock if the FUSE daemon itself has to be
# reclaimed to make progress. The worker is confined to its own cgroup and the daemon is not in
# it, and the daemon is pinned (zramfs mount --mlock, nullfs --mlock); do not put the daemon under
# the same memory pressure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-512M}"
ALGORITHM="${ALGORITHM:-lz4}"
BACKEND="${BACKEND:-zramfs}"
LIMIT="${LIMIT:-64M}"
ALLOC="${ALLOC:-192M}"
DISCARD="${DISCARD:-pages}"
MLOCK="${MLOCK:-1}"

log() { printf '[swap_experiment] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

to_bytes() { numfmt --from=iec "$(echo "$1" | tr "[:lower:]" "[:upper:]" | sed 's/I\?B$//')"; }

# shellcheck source=scripts/devicelib.sh
. "$REPO/scripts/devicelib.sh"   # mount_device, unmount_device, show_stats

# zramfs mount --mlock for the device mount_device mounts: wrap devicelib's zramfs_cli.
if [ "$MLOCK" = 1 ] && [ "$BACKEND" = zramfs ]; then
    MLOCK_ARGS=(--mlock)
    cap_eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
    if (( (0x${cap_eff:-0} >> 24) & 1 )); then :; else
        MLOCK_ARGS+=(--no-io-flusher)
        log "no CAP_SYS_RESOURCE here: mounting with --mlock --no-io-flusher (pinned, no PR_SET_IO_FLUSHER)"
    fi
    eval "devicelib_$(declare -f zramfs_cli)"
    zramfs_cli() {
        if [ "${1:-}" = mount ]; then devicelib_zramfs_cli "$@" "${MLOCK_ARGS[@]}"
        else devicelib_zramfs_cli "$@"; fi
    }
fi

[ "$(id -u)" = 0 ] || die "needs root (losetup, swapon, cgroups)"
for c in losetup mkswap swapon swapoff mountpoint numfmt; do
    command -v "$c" >/dev/null 2>&1 || die "missing $c (scripts/test.sh --deps-only installs it)"
done
LIMIT_B=$(to_bytes "$LIMIT"); ALLOC_B=$(to_bytes "$ALLOC")
[ "$ALLOC_B" -gt "$LIMIT_B" ] || die "ALLOC ($ALLOC) must exceed LIMIT ($LIMIT), or nothing is swapped"

# ---- cgroup: pick v2, v1 or systemd-run --------------------------------------------------------
CG_MODE=""; CG=""
cg2_root() {  # the cgroup2 mount whose controllers include memory
    local root
    for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        [ -r "$root/cgroup.controllers" ] && grep -qw memory "$root/cgroup.controllers" && { echo "$root"; return 0; }
    done
    return 1
}
setup_cgroup() {
    local root name="zramfs-swap.$$"
    if root="$(cg2_root)"; then
        grep -qw memory "$root/cgroup.subtree_control" || echo +memory > "$root/cgroup.subtree_control"
        CG="$root/$name"; mkdir "$CG"; CG_MODE=v2
        echo "$LIMIT_B" > "$CG/memory.max"
        echo max > "$CG/memory.swap.max" 2>/dev/null || log "no memory.swap.max (swap accounting off): swap is unlimited anyway"
    elif [ -w /sys/fs/cgroup/memory/cgroup.procs ] || [ -d /sys/fs/cgroup/memory ]; then
        root=/sys/fs/cgroup/memory
        CG="$root/$name"; mkdir "$CG"; CG_MODE=v1
        echo "$LIMIT_B" > "$CG/memory.limit_in_bytes"
        echo 100 > "$CG/memory.swappiness" 2>/dev/null || true
        # memory.memsw.limit_in_bytes stays unlimited: memory+swap may exceed LIMIT
    elif command -v systemd-run >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        CG_MODE=systemd
    else
        die "no memory cgroup: neither cgroup v2 with the memory controller, v1 memory, nor systemd"
    fi
    log "cgroup: $CG_MODE ${CG:-(transient scope)}, memory limit $LIMIT"
}
cgroup_report() {
    case "$CG_MODE" in
        v2) echo "cgroup $CG: memory.current $(cat "$CG/memory.current"), memory.swap.current $(cat "$CG/memory.swap.current" 2>/dev/null || echo n/a), $(grep -E '^(oom|oom_kill|max) ' "$CG/memory.events" | tr '\n' ' ')" ;;
        v1) echo "cgroup $CG: max_usage $(cat "$CG/memory.max_usage_in_bytes"), failcnt $(cat "$CG/memory.failcnt"), memsw.max_usage $(cat "$CG/memory.memsw.max_usage_in_bytes" 2>/dev/null || echo n/a), $(grep -E '^oom_kill ' "$CG/memory.oom_control" 2>/dev/null || true)" ;;
        *) true ;;
    esac
}

# ---- the worker: allocate ALLOC, fill with patterns, verify ------------------------------------
read -r -d '' WORKER <<'PY' || true
import mmap, os, random, sys, time
nbytes, mm_stat, dev = int(sys.argv[1]), sys.argv[2], sys.argv[3]
P = 4096
npages = nbytes // P
PHRASE = b"zram keeps compressed pages in zsmalloc; swap puts them there. "

def page(i: int) -> bytes:
    kind = i % 4
    if kind == 0:                                   # same-filled: zram stores no object
        return bytes([i % 251]) * P
    if kind == 1:                                   # text-like: compresses well
        head = b"page %10d " % i
        return (head + PHRASE * (P // len(PHRASE) + 1))[:P]
    r = random.Random(i)
    if kind == 2:                                   # half random, half zeros: ~2:1
        return r.randbytes(P // 2) + bytes(P // 2)
    return r.randbytes(P)                           # random: incompressible (huge)

def status(tag: str) -> None:
    st = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmSwap"):
                st[k] = v.strip()
    swaps = "?"
    with open("/proc/swaps") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts and os.path.realpath(parts[0]) == os.path.realpath(dev):
                swaps = f"size {parts[2]} KiB, used {parts[3]} KiB"
    mm = open(mm_stat).read().strip() if os.path.exists(mm_stat) else "n/a"
    print(f"[worker] {tag}: RSS {st.get('VmRSS')}, swapped out {st.get('VmSwap')}; "
          f"swap {swaps}; mm_stat {mm}", flush=True)

t0 = time.monotonic()
area = mmap.mmap(-1, npages * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(npages):
    area[i * P:(i + 1) * P] = page(i)
t1 = time.monotonic()
print(f"[worker] filled {npages} pages ({nbytes >> 20} MiB) in {t1 - t0:.1f} s", flush=True)
status("after fill")
bad = [i for i in range(npages) if area[i * P:(i + 1) * P] != page(i)]
t2 = time.monotonic()
print(f"[worker] verified {npages} pages in {t2 - t1:.1f} s: {len(bad)} bad"
      + (f" (first: {bad[:10]})" if bad else ""), flush=True)
status("after verify")
sys.exit(1 if bad else 0)
PY

# ---- run -------------------------------------------------------------------------------------------
LOOP=""; SWAP_ON=0; WORKER_PID=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null
    fi
    if [ "$SWAP_ON" = 1 ] && [ -n "$LOOP" ]; then swapoff "$LOOP" || log "swapoff $LOOP failed"; fi
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
        [ -d "$CG" ] && log "could not remove cgroup $CG"
    fi
    stop_record
    unmount_device
    [ "$rc" = 0 ] || log "failed (exit $rc); cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_device "${1:-}"
start_record swap
DEV="$MNT/dev/zram0"
PARAMS="$MNT/sys/module/zramfs/parameters"
[ -r "$PARAMS/mlock" ] && log "daemon pinned (mlock): $(cat "$PARAMS/mlock"), io_flusher: $(cat "$PARAMS/io_flusher")"
LOOP="$(losetup --find --show "$DEV")"
log "$DEV on $LOOP ($(blockdev --getsize64 "$LOOP") bytes)"
mkswap -L zramfs-swap "$LOOP" >/dev/null
swap_opts=(-p 32767)
[ "$DISCARD" = none ] || swap_opts+=("--discard=$DISCARD")
swapon "${swap_opts[@]}" "$LOOP"; SWAP_ON=1
log "swapon ${swap_opts[*]} $LOOP"
sed 's/^/  /' /proc/swaps
show_stats

setup_cgroup
log "worker: allocate $ALLOC with a $LIMIT limit"
set +e
case "$CG_MODE" in
    v1|v2)
        bash -c 'echo $$ > "$1/cgroup.procs" && exec python3 -c "$2" "$3" "$4" "$5"' _ \
            "$CG" "$WORKER" "$ALLOC_B" "$MNT/sys/block/zram0/mm_stat" "$LOOP" &
        WORKER_PID=$!; wait "$WORKER_PID"; wrc=$? ;;
    systemd)
        systemd-run --quiet --scope -p MemoryMax="$LIMIT_B" -p MemorySwapMax=infinity \
            python3 -c "$WORKER" "$ALLOC_B" "$MNT/sys/block/zram0/mm_stat" "$LOOP" &
        WORKER_PID=$!; wait "$WORKER_PID"; wrc=$? ;;
esac
WORKER_PID=""
set -e
cgroup_report
log "after the worker exited:"
sed 's/^/  /' /proc/swaps
show_stats

swapoff "$LOOP"; SWAP_ON=0
losetup -d "$LOOP"; LOOP=""
stop_record
if [ "$wrc" = 0 ]; then
    log "PASS: $ALLOC written and read back through swap with a $LIMIT limit"
else
    [ "$wrc" = 137 ] && log "the worker was killed (exit 137): OOM in the cgroup? (swap too slow or too small)"
    die "worker exited $wrc"
fi
