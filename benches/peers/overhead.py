#!/usr/bin/env python3
"""Per-job overhead, whole process, side by side with the floor (issue 20).

    python3 benches/peers/overhead.py [ROUNDS [BIG_ROUNDS]]

Each round runs, one after the other (so a slow moment of a shared machine
falls on all of them alike):

  1. 50 trivial jobs (`echo`), trackside's own YAML, default -j (the cores),
     against the floor: `seq 1 50 | xargs -P <cores> -I{} sh -c "echo hi-{}"`;
  2. 1,000 trivial jobs at -j 1000 against `seq 1 1000 | xargs -P 64 ...`;
     and wrkflw (if installed) on the same 1,000 jobs as a .gitlab-ci.yml;
  3. the 50 jobs in a project of 10,000 files (100 folders of 100), with a
     fresh workspace per job and with --in-place: the difference, per job, is
     what the workspace costs (BIG_ROUNDS rounds, default 3: on a file system
     that is slow to allocate inodes, one takes minutes). These rounds run
     after all the others.

It prints medians of wall time, and the peak memory (max RSS) and CPU time
(user + system, children included) that wait4 reports for each process.

Needs a release build (cargo build --release; $TRACKSIDE names another
binary, and $TRACKSIDE_B a second one measured in the same rounds, to
compare builds), and GNU time for the memory column
(apt-get install time). wrkflw is looked for in
$PEERS/wrkflw-bin/bin (default /tmp/peers; `cargo install wrkflw --root
/tmp/peers/wrkflw-bin`); without it, that column is left out.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
TRACKSIDE = Path(os.environ.get("TRACKSIDE", HERE / "target/release/trackside"))
WRKFLW = Path(os.environ.get("PEERS", "/tmp/peers")) / "wrkflw-bin/bin/wrkflw"
CORES = os.cpu_count() or 2
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def measure(cmd, cwd):
    """Wall seconds, max RSS (MiB) and CPU seconds of one run of `cmd`.

    The peak memory comes from GNU time (Debian's `time`): a process started
    from this Python inherits Python's resident size as its first peak."""
    with tempfile.NamedTemporaryFile("r") as out:
        timed = [GNU_TIME, "-f", "%M", "-o", out.name] if GNU_TIME else []
        t0 = time.perf_counter()
        proc = subprocess.Popen(timed + cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(map(str, cmd))}")
        rss = int(out.read().split()[-1]) / 1024 if GNU_TIME else float("nan")
    return wall, rss, usage.ru_utime + usage.ru_stime


def native(jobs):
    lines = ["name: trivial", "jobs:"]
    for i in range(1, jobs + 1):
        lines += [f"  j{i}:", "    steps:", f"      - script: echo hi-{i}"]
    return "\n".join(lines) + "\n"


def gitlab(jobs):
    lines = []
    for i in range(1, jobs + 1):
        lines += [f"j{i}:", "  script:", f"    - echo hi-{i}"]
    return "\n".join(lines) + "\n"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    big_rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if not TRACKSIDE.exists():
        sys.exit("build first: cargo build --release")
    work = Path(tempfile.mkdtemp(prefix="trackside-overhead-"))
    state = work / "state"
    p50, p1k, big, gl = work / "p50", work / "p1k", work / "p10k", work / "gitlab"
    for d in (p50, p1k, big, gl):
        d.mkdir()
    (p50 / "pipeline.yml").write_text(native(50))
    (p1k / "pipeline.yml").write_text(native(1000))
    (big / "pipeline.yml").write_text(native(50))
    for m in range(100):
        folder = big / "src" / f"m{m}"
        folder.mkdir(parents=True)
        for f in range(100):
            (folder / f"f{f}.txt").write_text(f"file {m} {f}\n" * 4)
    (gl / ".gitlab-ci.yml").write_text(gitlab(1000))
    run = [str(TRACKSIDE), "run", "--headless", "--no-watch", "--state-dir", str(state)]
    cases = {
        "trackside, 50 jobs": (run + ["pipeline.yml"], p50),
        f"floor, 50 (xargs -P {CORES})": (
            ["sh", "-c", f'seq 1 50 | xargs -P {CORES} -I{{}} sh -c "echo hi-{{}}"'],
            p50,
        ),
        "trackside, 1,000 jobs, -j 1000": (run + ["-j", "1000", "pipeline.yml"], p1k),
        "floor, 1,000 (xargs -P 64)": (
            ["sh", "-c", 'seq 1 1000 | xargs -P 64 -I{} sh -c "echo hi-{}"'],
            p1k,
        ),
        "trackside, 50 jobs, 10,000 files": (run + ["pipeline.yml"], big),
        "trackside, 50 jobs, 10,000 files, --in-place": (run + ["--in-place", "pipeline.yml"], big),
    }
    # $TRACKSIDE_B: another build measured in the same rounds, case after
    # case, so both see the same moments of a shared machine.
    if os.environ.get("TRACKSIDE_B"):
        for name in [n for n in cases if n.startswith("trackside")]:
            cmd, cwd = cases[name]
            cases["B: " + name] = ([os.environ["TRACKSIDE_B"]] + cmd[1:], cwd)
    if WRKFLW.exists():
        cases["wrkflw, 1,000 jobs (--runtime emulation)"] = (
            [str(WRKFLW), "run", "--runtime", "emulation", ".gitlab-ci.yml"],
            gl,
        )
    results = {name: [] for name in cases}
    # The 10,000-file rounds come after the others: on a file system slow to
    # allocate inodes that were freed moments ago (ext4 without a journal),
    # what they free would slow the next cases' log files.
    small = [n for n in cases if "10,000 files" not in n]
    big = [n for n in cases if "10,000 files" in n]
    for names, count in ((small, rounds), (big, big_rounds)):
        for _ in range(count):
            for name in names:
                cmd, cwd = cases[name]
                results[name].append(measure(cmd, cwd))
    subprocess.run(["rm", "-rf", str(work)], check=False)

    def med(name, i):
        return statistics.median(r[i] for r in results[name])

    print(f"medians of {rounds} rounds ({big_rounds} with 10,000 files); {CORES} cores")
    print(f"{'':48} {'wall':>9} {'max RSS':>9} {'CPU':>8}")
    for name in (n for n in cases if results[n]):
        print(f"{name:48} {med(name, 0) * 1000:7.0f}ms {med(name, 1):7.1f}MiB {med(name, 2):7.2f}s")
    ratio = med("trackside, 50 jobs", 0) / med(f"floor, 50 (xargs -P {CORES})", 0)
    print(f"50 jobs: trackside / floor = {ratio:.2f}x (target <= 1.5x)")
    ratio = med("trackside, 1,000 jobs, -j 1000", 0) / med("floor, 1,000 (xargs -P 64)", 0)
    print(f"1,000 jobs: trackside / floor = {ratio:.2f}x (target <= 1.5x)")
    print(f"1,000 jobs: trackside peak RSS {med('trackside, 1,000 jobs, -j 1000', 1):.1f} MiB (target <= 30)")
    if WRKFLW.exists():
        ours = med("trackside, 1,000 jobs, -j 1000", 2)
        theirs = med("wrkflw, 1,000 jobs (--runtime emulation)", 2)
        print(f"1,000 jobs: CPU trackside {ours:.2f} s, wrkflw {theirs:.2f} s ({ours / theirs:.2f}x; target <= 1x)")
    if big_rounds:
        ws = med("trackside, 50 jobs, 10,000 files", 0) - med("trackside, 50 jobs, 10,000 files, --in-place", 0)
        print(f"10,000 files: the fresh workspace costs {ws / 50 * 1000:.1f} ms per job")
    if os.environ.get("TRACKSIDE_B"):
        floor50 = med(f"floor, 50 (xargs -P {CORES})", 0)
        floor1k = med("floor, 1,000 (xargs -P 64)", 0)
        print(f"B: 50 jobs {med('B: trackside, 50 jobs', 0) / floor50:.2f}x the floor, "
              f"1,000 jobs {med('B: trackside, 1,000 jobs, -j 1000', 0) / floor1k:.2f}x")


if __name__ == "__main__":
    main()
