#!/usr/bin/env bash
# What `zramfs record` costs a running workload (docs/experiments.md, "Overhead").
#
# One mount; the fio job scripts/fio/randwrite-4k.fio (4 KiB random writes, QD1) runs ROUNDS
# times without and ROUNDS times with `zramfs record --interval INTERVAL` sampling the mount,
# alternately (A B B A A B ...: a shared, noisy machine drifts, and alternating spreads the drift
# over both), and prints each run's IOPS and the median of with/without.  Then the direct cost:
# CPU time the mount's daemon and the recorder spend per sample (recording the now full mount at
# 0.1 s for 10 s, idle otherwise), which does not depend on the machine's noise.
#
# Usage: sudo scripts/record_overhead.sh [ROUNDS (default 4)] [RUNTIME seconds (default 8)]
#        [INTERVAL seconds (default 0.5)]
set -euo pipefail
ROUNDS=${1:-4}
RUNTIME=${2:-8}
INTERVAL=${3:-0.5}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d /tmp/zramfs-record-overhead.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
REC_PID=""

cleanup() {
    if [ -n "$REC_PID" ]; then kill -INT "$REC_PID" 2>/dev/null || true; wait "$REC_PID" || true; fi
    if grep -q " $MNT " /proc/mounts; then python3 -m zramfs umount "$MNT" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 -m zramfs mount "$MNT" --size 512M --log "$WORK/zramfs.log" --pidfile "$WORK/pid"

iops() {   # one fio run; prints its write IOPS
    FILENAME=$MNT/dev/zram0 SIZE=512M RUNTIME=$RUNTIME fio --output-format=json \
        "$REPO/scripts/fio/randwrite-4k.fio" | python3 -c \
        'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}

with_record() {
    python3 -m zramfs record "$MNT" --out "$WORK/rec.jsonl" --interval "$INTERVAL" 2>/dev/null &
    REC_PID=$!
    sleep 1   # the recorder is sampling (its first sample is taken at start)
    iops
    kill -INT "$REC_PID"; wait "$REC_PID"; REC_PID=""
}

ratios=()
for ((i = 0; i < ROUNDS; i++)); do
    if ((i % 2 == 0)); then a=$(iops); b=$(with_record); else b=$(with_record); a=$(iops); fi
    r=$(python3 -c "print(f'{$b / $a:.3f}')")
    ratios+=("$r")
    echo "round $((i + 1)): without $a IOPS, with record $b IOPS, ratio $r"
done
python3 -c "import statistics,sys; print('median ratio with/without:', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"

cpu_s() {   # utime + stime of a process, seconds
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
DAEMON=$(cat "$WORK/pid")
d0=$(cpu_s "$DAEMON")
TIMEFORMAT='%U %S'
rec=$( { time python3 -m zramfs record "$MNT" --out "$WORK/cost.jsonl" --interval 0.1 \
    --duration 10 2>/dev/null; } 2>&1 )
d1=$(cpu_s "$DAEMON")
n=$(grep -c '"type":"sample"' "$WORK/cost.jsonl")
python3 -c "
d = ($d1 - $d0) / $n * 1000
print(f'per sample ({$n} samples, {$(du -k "$WORK/cost.jsonl" | cut -f1) // $n} KiB each):'
      f' daemon {d:.1f} ms CPU -> {d / ($INTERVAL * 1000) * 100:.2f} % of a CPU at {$INTERVAL} s;'
      f' recorder {sum(map(float, \"$rec\".split())) / $n * 1000:.1f} ms CPU (with its start-up)')"
