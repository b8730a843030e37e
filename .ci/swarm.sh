#!/usr/bin/env bash
# A real two-node Docker Swarm on this machine, for trackside's Swarm
# executor tests (tests/swarm.rs) and for trying `--executor swarm` by hand.
#
#   sudo .ci/swarm.sh up          # bring it up (idempotent); prints the variables to export
#   sudo .ci/swarm.sh env         # print them again
#   sudo .ci/swarm.sh start N     # start node N's daemon again (after it was killed)
#   sudo .ci/swarm.sh down        # tear everything down
#
# Each node is a dockerd in a network namespace of its own (tsw1, tsw2),
# joined to the host by a veth pair on the bridge tswbr0 (10.231.0.0/24):
# node 1 (10.231.0.1) is the manager, labelled pool=a; node 2 (10.231.0.2) a
# worker, labelled pool=b. A registry (Debian's docker-registry) listens on
# the bridge at 10.231.0.254:5000; both daemons trust it without TLS. A
# busybox image made from Debian's busybox-static is imported into each
# node and pushed there as 10.231.0.254:5000/trackside-busybox:1.
#
# The daemons start with `nsenter --net=...`, not `ip netns exec`, which
# remounts /sys and leaves dockerd without its cgroups.
set -euo pipefail

DIR=${TRACKSIDE_SWARM_DIR:-/tmp/trackside-swarm}
BR=tswbr0
NET=10.231.0
REGISTRY=$NET.254:5000
IMAGE=$REGISTRY/trackside-busybox:1

sock() { echo "unix://$DIR/n$1/docker.sock"; }
d() { local n=$1; shift; docker -H "$(sock "$n")" "$@"; }

wait_for() { # seconds, description, command...
  local t=$1 what=$2; shift 2
  for _ in $(seq 1 $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "swarm.sh: $what did not happen within ${t}s" >&2
  return 1
}

start_node() {
  local n=$1 dir=$DIR/n$1
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then return 0; fi
  rm -f "$dir/pid" "$dir/docker.sock"
  nsenter --net=/var/run/netns/tsw$n dockerd \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/pid" \
    -H "$(sock "$n")" --bridge=none --iptables=false --ip-masq=false \
    --insecure-registry "$REGISTRY" >>"$dir/dockerd.log" 2>&1 &
  if ! wait_for 60 "node $n's dockerd to answer" d "$n" version; then
    tail -20 "$dir/dockerd.log" >&2
    exit 1
  fi
}

node_id() { d "$1" info --format '{{.Swarm.NodeID}}'; }

up() {
  for tool in dockerd docker docker-registry nsenter ip iptables; do
    command -v $tool >/dev/null || { echo "swarm.sh: needs $tool (apt-get install docker.io docker-registry util-linux iproute2 iptables)" >&2; exit 1; }
  done
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  ip link show $BR >/dev/null 2>&1 || ip link add $BR type bridge
  ip addr show dev $BR | grep -q "$NET.254/24" || ip addr add $NET.254/24 dev $BR
  ip link set $BR up
  # Docker's own rules on the host drop forwarded traffic; the nodes talk across the bridge.
  iptables -C FORWARD -i $BR -o $BR -j ACCEPT 2>/dev/null || iptables -I FORWARD -i $BR -o $BR -j ACCEPT
  for n in 1 2; do
    ip netns list | grep -qw tsw$n || ip netns add tsw$n
    if ! ip link show tswv$n >/dev/null 2>&1; then
      ip link add tswv$n type veth peer name eth0 netns tsw$n
      ip netns exec tsw$n ip addr add $NET.$n/24 dev eth0
    fi
    ip link set tswv$n master $BR up
    ip netns exec tsw$n ip link set eth0 up
    ip netns exec tsw$n ip link set lo up
    ip netns exec tsw$n ip route replace default via $NET.254
  done
  # The registry, on the bridge.
  if ! { [ -f "$DIR/registry.pid" ] && kill -0 "$(cat "$DIR/registry.pid")" 2>/dev/null; }; then
    mkdir -p "$DIR/registry"
    printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: "%s"}\n' \
      "$DIR/registry/data" "$REGISTRY" >"$DIR/registry/config.yml"
    setsid docker-registry serve "$DIR/registry/config.yml" >>"$DIR/registry/log" 2>&1 &
    echo $! >"$DIR/registry.pid"
    wait_for 20 "the registry to listen" bash -c "exec 3<>/dev/tcp/${REGISTRY%:*}/${REGISTRY#*:}"
  fi
  start_node 1
  start_node 2
  if [ "$(d 1 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    d 1 swarm init --advertise-addr $NET.1 --listen-addr $NET.1:2377 >/dev/null
  fi
  # Nodes report every second: a lost node is seen as down within seconds.
  d 1 swarm update --dispatcher-heartbeat 1s >/dev/null
  if [ "$(d 2 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    d 2 swarm join --token "$(d 1 swarm join-token -q worker)" $NET.1:2377 >/dev/null
  fi
  d 1 node update --label-add pool=a "$(node_id 1)" >/dev/null
  d 1 node update --label-add pool=b "$(node_id 2)" >/dev/null
  wait_for 60 "both nodes to be ready" bash -c \
    "[ \"\$(docker -H $(sock 1) node ls --format '{{.Status}}' | grep -c Ready)\" = 2 ]"
  # The image the tests run, from Debian's static busybox, on each node and in the registry.
  local busybox
  busybox=$(command -v busybox || true)
  [ -n "$busybox" ] || { echo "swarm.sh: needs busybox (apt-get install busybox-static)" >&2; exit 1; }
  if ! d 1 image inspect "$IMAGE" >/dev/null 2>&1; then
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    cp "$busybox" "$root/bin/busybox"
    for app in $("$busybox" --list); do [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    for n in 1 2; do
      tar -C "$root" -c . | d "$n" import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
    done
    rm -rf "$root"
  fi
  d 1 push "$IMAGE" >/dev/null
  env_lines
}

env_lines() {
  echo "export TRACKSIDE_SWARM_HOST=$(sock 1)"
  echo "export TRACKSIDE_SWARM_REGISTRY=$REGISTRY"
  echo "export TRACKSIDE_SWARM_IMAGE=$IMAGE"
  echo "export TRACKSIDE_SWARM_DIR=$DIR"
}

down() {
  for n in 2 1; do
    local pidf=$DIR/n$n/pid
    if [ -f "$pidf" ]; then
      local pid
      pid=$(cat "$pidf")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  # What the daemons left mounted (their overlay layers, network namespaces).
  if [ -d "$DIR" ]; then
    grep " $DIR/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  if [ -f "$DIR/registry.pid" ]; then kill "$(cat "$DIR/registry.pid")" 2>/dev/null || true; fi
  for n in 1 2; do
    ip link del tswv$n 2>/dev/null || true
    ip netns del tsw$n 2>/dev/null || true
  done
  iptables -D FORWARD -i $BR -o $BR -j ACCEPT 2>/dev/null || true
  ip link del $BR 2>/dev/null || true
  rm -rf "$DIR"
}

case "${1:-}" in
  up) up ;;
  env) env_lines ;;
  start) start_node "${2:?node number}"; wait_for 60 "node $2 to be ready" bash -c \
    "[ \"\$(docker -H $(sock 1) node ls --format '{{.Status}}' | grep -c Ready)\" = 2 ]" ;;
  down) down ;;
  *) echo "usage: $0 up|env|start N|down" >&2; exit 2 ;;
esac
