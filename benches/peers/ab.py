#!/usr/bin/env python3
"""Two builds of trackside, alternated, on one pipeline (median wall and CPU).

    python3 benches/peers/ab.py ROUNDS BUILD_A BUILD_B [PIPELINE_DIR] [-- RUN ARGS...]

Each round runs `BUILD run --headless --no-watch --state-dir <states>/N
pipeline.yml` in PIPELINE_DIR once with each build, one after the other, so a slow moment
of a shared machine falls on both alike. PIPELINE_DIR (default: a fresh
temporary folder with overhead.py's 50 trivial jobs) holds pipeline.yml;
arguments after `--` are added to `run` (`-j 1000`, `--in-place`). Each
build keeps a state folder of its own between rounds, as a developer's is
(two builds sharing one would read each other's history and index, whose
format a build may change), in a temporary folder outside the project (a
state folder inside it would be copied into the other build's workspaces). AB_WARM=N runs N unmeasured rounds first: the
history a run reads at its start grows with them.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    if len(args) < 3:
        sys.exit(__doc__)
    rounds, builds = int(args[0]), args[1:3]
    folder = Path(args[3]) if len(args) > 3 else Path(tempfile.mkdtemp(prefix="trackside-ab-"))
    if not (folder / "pipeline.yml").exists():
        (folder / "pipeline.yml").write_text(overhead.native(50))
    states = Path(tempfile.mkdtemp(prefix="trackside-ab-states-"))
    results = {b: [] for b in builds}
    warm = int(os.environ.get("AB_WARM", "0"))
    for round in range(warm + rounds):
        for n, b in enumerate(builds):
            state = states / str(n)
            cmd = [b, "run", "--headless", "--no-watch", "--state-dir", str(state), *extra, "pipeline.yml"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"failed: {' '.join(cmd)}")
            if round >= warm:
                results[b].append((wall, usage.ru_utime + usage.ru_stime))
    for b in builds:
        wall = statistics.median(r[0] for r in results[b]) * 1000
        cpu = statistics.median(r[1] for r in results[b]) * 1000
        print(f"{b}: wall {wall:.1f} ms, CPU {cpu:.1f} ms (median of {rounds})")


if __name__ == "__main__":
    main()
