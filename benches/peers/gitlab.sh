#!/usr/bin/env bash
# The same 50-job, two-stage GitLab pipeline run by trackside,
# gitlab-ci-local and wrkflw, whole process, side by side (docs/BENCHMARKS.md).
#
#   benches/peers/gitlab.sh [RUNS]
#
# Needs: a release build (cargo build --release), and the peers on PATH or
# in $PEERS (default /tmp/peers): npm install gitlab-ci-local@4.65 there,
# cargo install wrkflw --root $PEERS/wrkflw-bin. They are installed for the
# benchmark only; nothing in the project depends on them.
set -euo pipefail
runs=${1:-11}
here=$(cd "$(dirname "$0")/../.." && pwd)
peers=${PEERS:-/tmp/peers}
trackside=$here/target/release/trackside
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

# median of wall-clock milliseconds over $runs runs of "$@" (output discarded;
# a failed run stops the benchmark)
median_ms() {
  local samples=()
  for _ in $(seq 1 "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }
    t1=$(date +%s%N)
    samples+=($(( (t1 - t0) / 1000000 )))
  done
  printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

export TRACKSIDE_STATE_DIR=$work/.state
echo ".state/" > .gitignore
t=$(median_ms "$trackside" run --headless --no-watch)
echo "trackside        median ${t} ms"
if [ -x "$gcl" ]; then
  g=$(median_ms "$gcl")
  echo "gitlab-ci-local  median ${g} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $t/$g}")x its time)"
fi
if [ -x "$wrkflw" ]; then
  w=$(median_ms "$wrkflw" run --runtime emulation .gitlab-ci.yml)
  echo "wrkflw           median ${w} ms  (trackside: $(awk "BEGIN {printf \"%.2f\", $t/$w}")x its time)"
fi
