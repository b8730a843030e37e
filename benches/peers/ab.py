#!/usr/bin/env python3
"""Two builds of trackside, alternated, on one pipeline (median wall and CPU).

    python3 benches/peers/ab.py ROUNDS BUILD_A BUILD_B [PIPELINE_DIR] [-- RUN ARGS...]

Each round runs `BUILD run --headless --no-watch --state-dir <dir>/state
pipeline.yml` once with each build, one after the other, so a slow moment
of a shared machine falls on both alike. PIPELINE_DIR (default: a fresh
temporary folder with overhead.py's 50 trivial jobs) holds pipeline.yml;
arguments after `--` are added to `run` (`-j 1000`, `--in-place`). The
state folder is kept between rounds, as a developer's is.
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
    state = folder / "state"
    results = {b: [] for b in builds}
    for _ in range(rounds):
        for b in builds:
            cmd = [b, "run", "--headless", "--no-watch", "--state-dir", str(state), *extra, "pipeline.yml"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"failed: {' '.join(cmd)}")
            results[b].append((wall, usage.ru_utime + usage.ru_stime))
    for b in builds:
        wall = statistics.median(r[0] for r in results[b]) * 1000
        cpu = statistics.median(r[1] for r in results[b]) * 1000
        print(f"{b}: wall {wall:.1f} ms, CPU {cpu:.1f} ms (median of {rounds})")


if __name__ == "__main__":
    main()
