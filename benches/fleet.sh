#!/usr/bin/env bash
# Benchmarks fleet fan-out (not a timed test): the wall time of one
# `chaos inject blackhole ... --duration 1ms` (preflight, apply, revert)
#   - locally (the engine in process, on a namespace),
#   - on 1 and on 3 hosts over SSH (what each host adds),
#   - on N hosts for N in $NS (time to fan out).
# Every "host" is a network namespace on a private bridge with its own
# sshd (per-run host keys, known_hosts, client key), the controller in a
# namespace of its own; nothing touches the machine's interfaces.
#
# Usage: sudo benches/fleet.sh
# Env: NS (default "1 3 10 25 50"), ROUNDS (3; the median is reported),
#      CHAOS_BIN (default: target/debug/chaos, built if missing; the cost
#      measured is SSH and process start-up, not the build profile).
# Needs: root, sshd (openssh-server), ssh, ip, nft.
# Every process it starts is stopped by PID and every namespace deleted
# on exit.
set -euo pipefail

NS=${NS:-"1 3 10 25 50"}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
for tool in /usr/sbin/sshd ssh ssh-keygen ip nft; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/install-deps.sh)" >&2; exit 5; }
done
if [ -z "${CHAOS_BIN:-}" ]; then
  cargo build --quiet
  CHAOS_BIN=$PWD/target/debug/chaos
fi
MAX=0
for n in $NS; do [ "$n" -gt "$MAX" ] && MAX=$n; done

TAG=fb$$
WORK=$(mktemp -d)
BR=${TAG}br
CTL=${TAG}ct
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in $(seq 1 "$MAX"); do
    for p in $(ip netns pids "${TAG}h$i" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "${TAG}h$i" 2>/dev/null || true
  done
  ip netns del "$CTL" 2>/dev/null || true
  ip netns del "$BR" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$WORK/client_key"
ip netns add "$BR"; ip netns add "$CTL"
ip -n "$BR" link add br0 type bridge; ip -n "$BR" link set br0 up
ip -n "$BR" link add c0 type veth peer name eth0 netns "$CTL"
ip -n "$BR" link set c0 master br0 up
ip -n "$CTL" addr add 10.78.0.2/16 dev eth0; ip -n "$CTL" link set eth0 up; ip -n "$CTL" link set lo up
: > "$WORK/known_hosts"
for i in $(seq 1 "$MAX"); do
  ns=${TAG}h$i; d=$WORK/h$i; addr=10.78.$((i / 200)).$((10 + i % 200))
  mkdir -p "$d/state"
  ip netns add "$ns"
  ip -n "$BR" link add "h$i" type veth peer name eth0 netns "$ns"
  ip -n "$BR" link set "h$i" master br0 up
  ip -n "$ns" addr add "$addr/16" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  ssh-keygen -q -t ed25519 -N "" -f "$d/host_key"
  echo "$addr $(cut -d' ' -f1,2 "$d/host_key.pub")" >> "$WORK/known_hosts"
  cp "$WORK/client_key.pub" "$d/authorized_keys"
  cat > "$d/sshd_config" <<CFG
ListenAddress $addr
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 200
SetEnv CHAOS_STATE_DIR=$d/state
CFG
  ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  PIDS+=($!)
done
inventory() {  # inventory N -> path
  local n=$1 f=$WORK/inv$1.toml
  printf '[ssh]\nknown_hosts = "%s"\nconnect_timeout = "10s"\n' "$WORK/known_hosts" > "$f"
  for i in $(seq 1 "$n"); do
    printf '\n[[host]]\nname = "h%d"\naddress = "10.78.%d.%d"\nuser = "root"\nidentity = "%s"\nchaos = "%s"\n' \
      "$i" $((i / 200)) $((10 + i % 200)) "$WORK/client_key" "$CHAOS_BIN" >> "$f"
  done
  echo "$f"
}
# Wait for every sshd to listen.
for i in $(seq 1 "$MAX"); do
  for _ in $(seq 1 100); do
    ip netns exec "$CTL" bash -c "exec 3<>/dev/tcp/10.78.$((i / 200)).$((10 + i % 200))/22" 2>/dev/null && break
    sleep 0.05
  done
done
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() {  # measure ARGS... -> median seconds of ROUNDS runs
  for _ in $(seq 1 "$ROUNDS"); do
    local t0; t0=$(now)
    ip netns exec "$CTL" env CHAOS_STATE_DIR="$WORK/ctl-state" "$CHAOS_BIN" inject blackhole "$@" \
      --destination 192.0.2.0/24 --duration 1ms >/dev/null 2>"$WORK/last.err" \
      || { cat "$WORK/last.err" >&2; exit 1; }
    echo "$(now) - $t0" | bc -l
  done | median
}
local_s=$(measure --target "netns:${TAG}h1")
printf 'local (in process, netns:%s)    %.3f s\n' "${TAG}h1" "$local_s"
for n in $NS; do
  inv=$(inventory "$n")
  s=$(measure --target "iface:eth0@hosts:*" --inventory "$inv")
  printf '%3d host(s) over ssh             %.3f s   (+%.3f s over local; %.3f s per host)\n' \
    "$n" "$s" "$(echo "$s - $local_s" | bc -l)" "$(echo "($s - $local_s) / $n" | bc -l)"
done
