#!/usr/bin/env python3
"""What making and removing a small folder costs in DIR (docs/BENCHMARKS.md):
200 folders of five files and a subfolder, made, then removed.

    python3 benches/peers/inode_cost.py DIR

On ext4 without a journal the kernel skips every inode freed in the last
30 seconds when it allocates one, so a directory whose block group has
seen many recent deletions makes files far more slowly than another.
"""
import os
import shutil
import sys
import time

base = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(base, exist_ok=True)
n = 200
t0 = time.perf_counter()
for i in range(n):
    d = os.path.join(base, f"w{i}")
    os.mkdir(d)
    for f in ("a", "b", "c", "d", "e"):
        with open(os.path.join(d, f), "w") as fh:
            fh.write("x")
    os.mkdir(os.path.join(d, "sub"))
t1 = time.perf_counter()
for i in range(n):
    shutil.rmtree(os.path.join(base, f"w{i}"))
t2 = time.perf_counter()
print(f"{base}: make {1000 * (t1 - t0) / n:.3f} ms per folder, remove {1000 * (t2 - t1) / n:.3f} ms")
