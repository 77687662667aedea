#!/usr/bin/env bash
# Installs the Debian packages the tests, benchmarks and demo use. Idempotent:
# when every tool is already present it does nothing (no network needed).
set -euo pipefail

packages=(nftables iproute2 libxml2-utils wrk haproxy nginx prometheus chromium procps ca-certificates man-db openssh-server openssh-client util-linux nghttp2-client python3-grpcio)
tools=(nft ip xmllint wrk haproxy nginx prometheus chromium ps man sshd ssh ssh-keygen setpriv h2load)
# Python modules of the system interpreter (Debian packages, no pip): the
# proxy's gRPC test runs a grpcio server and client (python3-grpcio).
python_modules=(grpc)

missing=0
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null 2>&1 || missing=1
done
for m in "${python_modules[@]}"; do
  /usr/bin/python3 -c "import $m" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ] && [ "${FORCE_APT:-0}" != 1 ]; then
  echo "install-deps: all tools present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to apt-get install ${packages[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${packages[@]}"
# The packages ship services; the tests start their own instances on
# loopback ports, so make sure the system ones are not in the way.
# (ssh: the fleet tests start one sshd per test host on namespace
# addresses, with their own config; the system one must not hold port 22.)
for svc in nginx haproxy prometheus ssh; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done
