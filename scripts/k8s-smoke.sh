#!/usr/bin/env bash
# One command from a clean checkout to the Kubernetes demo experiment on a
# throwaway local cluster (kind, or k3d if kind is missing):
#
#   scripts/k8s-smoke.sh            # KEEP=1 keeps the cluster afterwards
#
# Needs: docker, kubectl, kind or k3d, cargo. Builds the release binary,
# the chaos:dev image (deploy/kubernetes/Dockerfile), creates the cluster
# `chaos-smoke`, loads the image, applies deploy/kubernetes/*.yaml, waits
# for the demo Deployments, port-forwards the two APIs and runs
# experiments/k8s-pod-kill.toml (a real pod delete, a real heal check).
#
# UNTESTED: the machines this was written on cannot run a cluster or
# containers. Every step checks its result and says which one failed.
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-chaos-smoke}
IMAGE=chaos:dev
PIDS=()

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'k8s-smoke: %s\n' "$*" >&2; exit 1; }

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" != 1 ] && [ -n "${CREATED:-}" ]; then
    say "deleting cluster $CLUSTER (KEEP=1 keeps it)"
    if [ "$TOOL" = kind ]; then kind delete cluster --name "$CLUSTER" || true
    else k3d cluster delete "$CLUSTER" || true; fi
  fi
}
trap cleanup EXIT

for t in docker kubectl cargo; do
  command -v "$t" >/dev/null || die "$t is not installed"
done
if command -v kind >/dev/null; then TOOL=kind
elif command -v k3d >/dev/null; then TOOL=k3d
else die "install kind (https://kind.sigs.k8s.io) or k3d (https://k3d.io)"; fi

say "building chaos (release) and the $IMAGE image"
cargo build --release --locked
docker build -f deploy/kubernetes/Dockerfile -t "$IMAGE" .

say "creating cluster $CLUSTER with $TOOL"
if [ "$TOOL" = kind ]; then
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || { kind create cluster --name "$CLUSTER" --wait 120s; CREATED=1; }
  kind load docker-image "$IMAGE" --name "$CLUSTER"
  CONTEXT="kind-$CLUSTER"
else
  k3d cluster list "$CLUSTER" >/dev/null 2>&1 || { k3d cluster create "$CLUSTER" --wait; CREATED=1; }
  k3d image import "$IMAGE" -c "$CLUSTER"
  CONTEXT="k3d-$CLUSTER"
fi
KUBECTL=(kubectl --context "$CONTEXT")

say "applying deploy/kubernetes (namespace, RBAC, agent DaemonSet, demo)"
"${KUBECTL[@]}" apply -f deploy/kubernetes/namespace.yaml
"${KUBECTL[@]}" apply -f deploy/kubernetes/rbac.yaml
"${KUBECTL[@]}" apply -f deploy/kubernetes/agent-daemonset.yaml
"${KUBECTL[@]}" apply -f deploy/kubernetes/demo.yaml
for d in $("${KUBECTL[@]}" -n chaos-demo get deploy -o name); do
  "${KUBECTL[@]}" -n chaos-demo rollout status "$d" --timeout=180s || die "$d did not become ready"
done
"${KUBECTL[@]}" -n chaos rollout status ds/chaos-agent --timeout=180s || die "the agent DaemonSet did not become ready"

say "port-forwarding the APIs to 127.0.0.1:18001 (control) and :18002 (experiment)"
"${KUBECTL[@]}" -n chaos-demo port-forward svc/api-control 18001:8080 >/dev/null & PIDS+=($!)
"${KUBECTL[@]}" -n chaos-demo port-forward svc/api-experiment 18002:8080 >/dev/null & PIDS+=($!)
for port in 18001 18002; do
  for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$port/checkout" -o /dev/null 2>/dev/null && break
    sleep 0.2
  done
done

say "the plan (server-side dry run: nothing changes)"
CTX_FILE=$(mktemp)
sed "s/^# context = .*/context = \"$CONTEXT\"/" experiments/k8s-pod-kill.toml > "$CTX_FILE"
./target/release/chaos run --dry-run "$CTX_FILE"

say "the experiment"
set +e
./target/release/chaos run "$CTX_FILE"
code=$?
set -e
rm -f "$CTX_FILE"
say "chaos run exited $code (0 accepted, 1 rejected, 3 aborted, 4 inconclusive, 5 environment)"
"${KUBECTL[@]}" -n chaos-demo get pods -o wide
exit "$code"
