#!/usr/bin/env bash
# The same 50-job, two-stage GitLab pipeline run by trackside,
# gitlab-ci-local and wrkflw, whole process, side by side (docs/BENCHMARKS.md).
#
#   benches/peers/gitlab.sh [RUNS]
#
# TRACKSIDE_B=<another build> runs it too, in the same rounds, with a state
# folder of its own (before/after). NO_GCL=1 leaves gitlab-ci-local out: it
# makes and removes thousands of files a run, and on a file system that is
# slow to reuse freed inodes (ext4 without a journal) the next run's file
# creations pay for that (docs/BENCHMARKS.md).
#
# Needs: a release build (cargo build --release; $TRACKSIDE names another
# binary, to compare builds), and the peers on PATH or
# in $PEERS (default /tmp/peers): npm install gitlab-ci-local@4.65 there,
# cargo install wrkflw --root $PEERS/wrkflw-bin. They are installed for the
# benchmark only; nothing in the project depends on them.
set -euo pipefail
runs=${1:-11}
here=$(cd "$(dirname "$0")/../.." && pwd)
peers=${PEERS:-/tmp/peers}
trackside=${TRACKSIDE:-$here/target/release/trackside}
gcl=$peers/node_modules/.bin/gitlab-ci-local
wrkflw=$peers/wrkflw-bin/bin/wrkflw

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
{
  echo "stages: [build, test]"
  for i in $(seq 1 25); do
    printf 'build-%s:\n  stage: build\n  script:\n    - echo "build %s"\n' "$i" "$i"
  done
  for i in $(seq 1 25); do
    printf 'test-%s:\n  stage: test\n  script:\n    - echo "test %s"\n' "$i" "$i"
  done
} > .gitlab-ci.yml
git init -q -b main && git add -A && git -c user.name=b -c user.email=b@example.com commit -qm bench
# gitlab-ci-local asks the origin remote (and needs rsync).
git remote add origin https://gitlab.example.com/bench/peers.git

# Wall-clock milliseconds of one run of "$@" (output discarded; a failed
# run stops the benchmark).
wall_ms() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

export TRACKSIDE_STATE_DIR=$work/.state
# gitlab-ci-local keeps its builds in the project (its docs say to ignore
# the folder); left untracked, every other tool would copy them.
printf '.state*/\n.gitlab-ci-local/\n' > .gitignore
[ -n "${NO_GCL:-}" ] && gcl=/nonexistent
other=${TRACKSIDE_B:-}
# The tools take turns, round after round, so a slow moment of a shared
# machine falls on all of them alike.
t=(); b=(); g=(); w=(); f=()
for _ in $(seq 1 "$runs"); do
  t+=($(TRACKSIDE_STATE_DIR=$work/.state wall_ms "$trackside" run --headless --no-watch))
  [ -n "$other" ] && b+=($(TRACKSIDE_STATE_DIR=$work/.state-b wall_ms "$other" run --headless --no-watch))
  [ -x "$gcl" ] && g+=($(wall_ms "$gcl"))
  [ -x "$wrkflw" ] && w+=($(wall_ms "$wrkflw" run --runtime emulation .gitlab-ci.yml))
  # The floor: the same 50 shells started two at a time, nothing else.
  f+=($(wall_ms sh -c 'seq 1 50 | xargs -P 2 -I{} sh -c "echo hi-{}"'))
done
tm=$(median "${t[@]}")
fm=$(median "${f[@]}")
echo "trackside        median ${tm} ms"
if [ ${#b[@]} -gt 0 ]; then
  bm=$(median "${b[@]}")
  echo "TRACKSIDE_B      median ${bm} ms"
fi
if [ ${#g[@]} -gt 0 ]; then
  gm=$(median "${g[@]}")
  echo "gitlab-ci-local  median ${gm} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $tm/$gm}")x its time)"
fi
if [ ${#w[@]} -gt 0 ]; then
  wm=$(median "${w[@]}")
  echo "wrkflw           median ${wm} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $tm/$wm}")x its time)"
  [ -n "${bm:-}" ] && echo "                 (TRACKSIDE_B: $(awk "BEGIN {printf \"%.2f\", $bm/$wm}")x its time)"
fi
echo "floor (xargs -P 2 sh)  median ${fm} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $tm/$fm}")x)"
