#!/usr/bin/env python3
"""What starting a GitHub step's bash costs, by how it is started.

    python3 benches/peers/bash_start.py [ENV_FILE [STARTS]]

ENV_FILE holds a step's environment as `env` prints it (a workflow step
`run: env > /tmp/step-env.txt` under `trackside run --dialect github`);
without it, this process's environment. Each round starts `bash -e SCRIPT`
(SCRIPT: `echo hi`) four ways, one after the other: named `bash` or by its
path, and without or with `SHELL` in the environment. It prints the mean
CPU (user + system, from wait4) of STARTS rounds (default 400).
"""

import os
import shutil
import statistics
import sys
import tempfile


def main():
    env = dict(os.environ)
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            env = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    starts = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    env.pop("_", None)
    bash = shutil.which("bash", path=env.get("PATH"))
    if not bash:
        sys.exit("no bash on the PATH")
    bare = {k: v for k, v in env.items() if k != "SHELL"}
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write("echo hi\n")
        script.flush()
        ways = {
            "as `bash`, no SHELL": (["bash", "-e", script.name], bare),
            "by its path, no SHELL": ([bash, "-e", script.name], bare),
            "as `bash`, with SHELL": (["bash", "-e", script.name], {**bare, "SHELL": bash}),
            "by its path, with SHELL": ([bash, "-e", script.name], {**bare, "SHELL": bash}),
        }
        cpu = {way: [] for way in ways}
        null = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
        for _ in range(starts):
            for way, (argv, e) in ways.items():
                pid = os.posix_spawn(bash, argv, e, file_actions=null)
                _, _, usage = os.wait4(pid, 0)
                cpu[way].append((usage.ru_utime + usage.ru_stime) * 1000)
    for way, ms in cpu.items():
        print(f"{way:26} {statistics.mean(ms):.3f} ms CPU (mean of {starts})")


if __name__ == "__main__":
    main()
