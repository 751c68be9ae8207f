#!/usr/bin/env python3
"""One fio job against a mounted image, and what the serving process spent per I/O.

Reads /proc/PID/task/*/stat and status before and after a fio run (the same job options as
scripts/bench.py: psync, direct=1, compressible buffers, randseed 1234) and prints, per thread
and in total, user and system CPU µs per I/O, minor faults and context switches per I/O.  For
quick by-hand A/B runs on two mounts (old and new tree, or zramfs and nullfs), alternated:

    python3 scripts/server_cpu.py PID MNT/dev/zram0 randwrite 4k 3
"""
import json
import os
import subprocess
import sys


def snapshot(pid: str) -> dict[str, tuple[str, int, int, int, int, int]]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:       # the thread ended between listdir and open
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        fields = st[st.rindex(")") + 2:].split()
        vol = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        nvol = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        # utime, stime, minflt (fields 14, 15, 10 of stat; counted from after the comm)
        out[tid] = (comm, int(fields[11]), int(fields[12]), int(fields[7]), vol, nvol)
    return out


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    pid, filename, rw, bs, runtime = sys.argv[1:]
    tick = os.sysconf("SC_CLK_TCK")
    before = snapshot(pid)
    cmd = ["fio", "--name=job", f"--filename={filename}", f"--rw={rw}", f"--bs={bs}",
           "--ioengine=psync", "--direct=1", "--time_based", f"--runtime={runtime}",
           "--randseed=1234", "--buffer_compress_percentage=50", "--buffer_compress_chunk=4k",
           "--refill_buffers", "--scramble_buffers=0", "--output-format=json"]
    job = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["jobs"][0]
    after = snapshot(pid)
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    iops = job["read"]["iops"] + job["write"]["iops"]
    if not ios:
        print("fio completed no I/O", file=sys.stderr)
        return 1
    print(f"ios={ios} iops={iops:.0f} wall/io={1e6 / iops:.1f}us")
    tot_user = tot_sys = 0
    for tid, (comm, ut, stime, minflt, vol, nvol) in sorted(after.items()):
        _, ut0, st0, mf0, vol0, nvol0 = before.get(tid, (comm, 0, 0, 0, 0, 0))
        du, ds = ut - ut0, stime - st0
        tot_user += du
        tot_sys += ds
        if du or ds:
            print(f"  {tid} {comm:16s} user {du / tick / ios * 1e6:6.2f} sys {ds / tick / ios * 1e6:6.2f}"
                  f" us/io  minflt/io {(minflt - mf0) / ios:.3f} vcs/io {(vol - vol0) / ios:.2f}"
                  f" nvcs/io {(nvol - nvol0) / ios:.3f}")
    print(f"total user {tot_user / tick / ios * 1e6:.2f} sys {tot_sys / tick / ios * 1e6:.2f} us/io")
    return 0


if __name__ == "__main__":
    sys.exit(main())
