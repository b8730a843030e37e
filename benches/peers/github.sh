#!/usr/bin/env bash
# The same 50-job GitHub workflow run by trackside and wrkflw, whole
# process, side by side (docs/BENCHMARKS.md).
#
#   benches/peers/github.sh [RUNS]     (TRACKSIDE=<build>: the build to measure; TRACKSIDE_B=<build>: another build in the same rounds)
#
# Needs: a release build (cargo build --release), and wrkflw on PATH or in
# $PEERS (default /tmp/peers): cargo install wrkflw --root
# $PEERS/wrkflw-bin. It is installed for the benchmark only; nothing in the
# project depends on it.
set -euo pipefail
runs=${1:-11}
here=$(cd "$(dirname "$0")/../.." && pwd)
peers=${PEERS:-/tmp/peers}
trackside=${TRACKSIDE:-$here/target/release/trackside}
wrkflw=$peers/wrkflw-bin/bin/wrkflw
command -v wrkflw >/dev/null 2>&1 && [ ! -x "$wrkflw" ] && wrkflw=$(command -v wrkflw)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p .github/workflows
# 25 build jobs, and 25 test jobs each needing its build: two levels, as a
# matrix-free CI of 25 packages would be.
{
  printf 'name: bench\non: push\njobs:\n'
  for i in $(seq 1 25); do
    printf '  build-%s:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo "build %s"\n' "$i" "$i"
  done
  for i in $(seq 1 25); do
    printf '  test-%s:\n    needs: build-%s\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo "test %s"\n' "$i" "$i" "$i"
  done
} > .github/workflows/ci.yml
printf '.state/\n' > .gitignore
git init -q -b main && git add -A && git -c user.name=b -c user.email=b@example.com commit -qm bench
git remote add origin https://github.com/bench/peers.git

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
# The tools take turns, round after round, so a slow moment of a shared
# machine falls on all of them alike.
# TRACKSIDE_B=<another build> runs it too, in the same rounds (before/after).
other=${TRACKSIDE_B:-}
t=(); b=(); w=(); f=()
for _ in $(seq 1 "$runs"); do
  t+=($(wall_ms "$trackside" run .github/workflows/ci.yml --headless --no-watch))
  [ -n "$other" ] && b+=($(wall_ms "$other" run .github/workflows/ci.yml --headless --no-watch))
  [ -x "$wrkflw" ] && w+=($(wall_ms "$wrkflw" run --runtime emulation .github/workflows/ci.yml))
  # The floor: the same 50 shells started two at a time, nothing else.
  f+=($(wall_ms sh -c 'seq 1 50 | xargs -P 2 -I{} sh -c "echo hi-{}"'))
done
tm=$(median "${t[@]}")
fm=$(median "${f[@]}")
echo "trackside        median ${tm} ms  (runs: ${t[*]})"
if [ ${#b[@]} -gt 0 ]; then
  echo "TRACKSIDE_B      median $(median "${b[@]}") ms  (runs: ${b[*]})"
fi
if [ ${#w[@]} -gt 0 ]; then
  wm=$(median "${w[@]}")
  echo "wrkflw           median ${wm} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $tm/$wm}")x its time; runs: ${w[*]})"
else
  echo "wrkflw           not found (cargo install wrkflw --root $peers/wrkflw-bin)"
fi
echo "floor (xargs -P 2 sh)  median ${fm} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $tm/$fm}")x)"
