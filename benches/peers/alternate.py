#!/usr/bin/env python3
"""Shell commands taking turns, round after round (median wall time, CPU and peak RSS).

    python3 benches/peers/alternate.py ROUNDS DIR -- LABEL=COMMAND [LABEL=COMMAND ...]

Each round runs every COMMAND once (through `sh -c`, in DIR, output
discarded), one after the other, so a slow moment of a shared machine falls
on all of them alike. CPU is the user and system time of the command and
everything it waited for (`wait4`); peak RSS is its largest process's, and
never less than this Python's own (a process keeps its peak across `exec`).
A command that fails is reported, and still counted.

    python3 benches/peers/alternate.py 21 /tmp/p -- \\
        j2="trackside run pipeline.yml --headless --no-watch -j 2" \\
        j3="trackside run pipeline.yml --headless --no-watch -j 3" \\
        floor="seq 1 50 | xargs -P 2 -I{} sh -c 'echo hi-{}'"
"""

import os
import statistics
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    if len(args) < 4 or args[2] != "--":
        sys.exit(__doc__)
    rounds, folder = int(args[0]), args[1]
    commands = []
    for spec in args[3:]:
        label, sep, command = spec.partition("=")
        if not sep:
            sys.exit(f"`{spec}` is not LABEL=COMMAND")
        commands.append((label, command))
    taken = {label: [] for label, _ in commands}
    for _ in range(rounds):
        for label, command in commands:
            t0 = time.perf_counter()
            p = subprocess.Popen(command, shell=True, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(p.pid, 0)
            wall = (time.perf_counter() - t0) * 1000
            if status != 0:
                print(f"{label}: failed ({status})", file=sys.stderr)
            taken[label].append((wall, (usage.ru_utime + usage.ru_stime) * 1000, usage.ru_maxrss / 1024))
    for label, _ in commands:
        runs = taken[label]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = statistics.median(r[2] for r in runs)
        print(f"{label:20s} wall {wall:7.1f} ms  cpu {cpu:7.1f} ms  rss {rss:6.1f} MiB")


if __name__ == "__main__":
    main()
