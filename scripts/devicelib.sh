# shellcheck shell=bash
# scripts/devicelib.sh - the device helpers shared by demo.sh, fs_demo.sh and swap_experiment.sh.
# Sourced, not run. The caller defines log(), die(), REPO, SIZE, BACKEND (zramfs|nullfs) and ALGORITHM.
#   mount_device [MNT]  mount a device (or adopt MNT), sets MNT and OWN_MNT
#   unmount_device      undo what mount_device did (only what this script mounted)
#   show_stats          labelled mm_stat and `zramfs status` of MNT/dev/zram0
MNT=""; OWN_MNT=0
# The installed `zramfs` command (scripts/test.sh --deps-only installs the checkout editable);
# without it, this checkout's package through `python3 -m zramfs` (the one place the scripts run
# the project from the checkout without an install).
zramfs_cli() {
    if command -v zramfs >/dev/null 2>&1; then zramfs "$@"
    else PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m zramfs "$@"; fi
}
is_mounted() { [ -n "$1" ] && mountpoint -q "$1" 2>/dev/null; }
mount_device() {  # [MNT] -> sets MNT (and OWN_MNT=1 when this script mounted it)
    if [ -n "${1:-}" ]; then
        MNT="$(realpath "$1")"
        [ -e "$MNT/dev/zram0" ] || die "$MNT/dev/zram0 does not exist: is $MNT a zramfs mount?"
        local ds="$MNT/sys/block/zram0/disksize"
        if [ -r "$ds" ] && [ "$(cat "$ds")" = 0 ]; then
            log "initialising $MNT/dev/zram0: disksize=$SIZE"
            echo "$SIZE" > "$ds"
        fi
        return 0
    fi
    MNT="$(mktemp -d /tmp/zramfs-mnt.XXXXXX)"; OWN_MNT=1
    case "$BACKEND" in
        zramfs)
            log "zramfs mount $MNT --size $SIZE --algorithm $ALGORITHM"
            zramfs_cli mount "$MNT" --size "$SIZE" --algorithm "$ALGORITHM" ;;
        nullfs)
            log "nullfs.py $MNT --size $SIZE (no compression: the FUSE baseline)"
            python3 "$REPO/scripts/nullfs.py" "$MNT" --size "$SIZE" --mlock ;;
        *) die "BACKEND must be zramfs or nullfs, not $BACKEND" ;;
    esac
    for _ in $(seq 300); do
        is_mounted "$MNT" && [ -e "$MNT/dev/zram0" ] && return 0
        sleep 0.1
    done
    die "$BACKEND did not mount $MNT in 30 s"
}
unmount_device() {
    [ "$OWN_MNT" = 1 ] || return 0
    if is_mounted "$MNT"; then
        if [ "$BACKEND" = zramfs ]; then zramfs_cli umount "$MNT" || true; fi
        is_mounted "$MNT" && { fusermount3 -u "$MNT" 2>/dev/null || fusermount -u "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || true; }
        for _ in $(seq 50); do is_mounted "$MNT" || break; sleep 0.1; done
        is_mounted "$MNT" && { log "lazy unmount of $MNT"; umount -l "$MNT" || true; }
    fi
    rmdir "$MNT" 2>/dev/null || true
    OWN_MNT=0
}
show_stats() {  # labelled mm_stat (+ zramfs status) of MNT/dev/zram0
    local f="$MNT/sys/block/zram0/mm_stat"
    if [ -r "$f" ]; then
        echo "mm_stat: $(cat "$f")"
        awk '{ printf "  orig_data_size  %12d\n  compr_data_size %12d\n  mem_used_total  %12d\n  mem_limit       %12d\n  mem_used_max    %12d\n  same_pages      %12d\n  pages_compacted %12d\n  huge_pages      %12d\n", $1,$2,$3,$4,$5,$6,$7,$8;
               if ($3 > 0) printf "  ratio orig/mem_used_total %.2f   orig/compr %.2f\n", $1/$3, ($2 > 0 ? $1/$2 : 0) }' "$f"
    else
        echo "mm_stat: none ($BACKEND serves no zram attributes)"
    fi
    if [ "$BACKEND" = zramfs ]; then zramfs_cli status "$MNT" || true; fi
}
# Recording (docs/experiments.md): RECORD=1 (default) records MNT while the script runs and plots
# it; RECORD=0 skips it. RECORD_DIR (default: a new /tmp/zramfs-record.XXXXXX) keeps the files.
#   start_record NAME   zramfs record MNT into RECORD_DIR/NAME.jsonl (+ .csv) in the background
#   stop_record         stop it (SIGINT), zramfs plot into RECORD_DIR/NAME/, say where (idempotent)
REC_PID=""; REC_NAME=""; REC_DIR=""
start_record() {
    [ "${RECORD:-1}" = 1 ] && [ "$BACKEND" = zramfs ] || return 0
    [ -n "$REC_DIR" ] || REC_DIR="${RECORD_DIR:-$(mktemp -d /tmp/zramfs-record.XXXXXX)}"
    mkdir -p "$REC_DIR"
    REC_NAME="$1"
    # Not through the zramfs_cli function: a function in the background is a subshell, whose
    # pid (in $!) would get the signal instead of the recorder.
    local cmd=(zramfs)
    command -v zramfs >/dev/null 2>&1 || cmd=(env "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m zramfs)
    "${cmd[@]}" record "$MNT" --out "$REC_DIR/$REC_NAME.jsonl" --interval "${RECORD_INTERVAL:-0.5}" \
        --csv 2>>"$REC_DIR/record.log" &
    REC_PID=$!
    log "recording $MNT into $REC_DIR/$REC_NAME.jsonl (RECORD=0 skips it)"
}
stop_record() {
    [ -n "$REC_PID" ] || return 0
    kill -TERM "$REC_PID" 2>/dev/null || true   # it writes its last sample and the end line
    wait "$REC_PID" || log "zramfs record exited $? (see $REC_DIR/record.log)"
    REC_PID=""
    local out="$REC_DIR/$REC_NAME"
    if zramfs_cli plot "$REC_DIR/$REC_NAME.jsonl" --out "$out" > "$out.txt" 2>&1; then
        log "plots of $REC_NAME: $out/ ($(grep -c '\.png$' "$out.txt") PNGs; record $out.jsonl, $out.csv)"
        grep -v '\.png$' "$out.txt" | sed 's/^/  /' >&2
    else
        log "no plots of $REC_NAME: $(tail -n 1 "$out.txt")"
    fi
}
