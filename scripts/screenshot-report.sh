#!/usr/bin/env bash
# Screenshots a chaos report.html with headless Chromium (Debian package
# `chromium`). The page is self-contained, so Chromium gets no network.
#
#   scripts/screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
#
# Default size 1280x2000 (the whole single-run report). CHROMIUM overrides
# the browser binary. Exit codes: 0 written, 2 usage, 5 no chromium, 1 failed.
set -euo pipefail

usage() { echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
report=$1
out=$2
size=${3:-1280x2000}
[[ -f $report ]] || { echo "$0: no such report: $report" >&2; exit 2; }
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || usage

browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
  done
fi
[[ -n $browser ]] || { echo "$0: chromium not found (apt-get install -y chromium)" >&2; exit 5; }

abs_report=$(realpath "$report")
abs_out=$(realpath -m "$out")
mkdir -p "$(dirname "$abs_out")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

# Bounded: a hung browser must not hang CI.
timeout 60 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$abs_out" --window-size="${size/x/,}" "file://$abs_report" \
  >"$profile/chromium.log" 2>&1 || {
    echo "$0: chromium failed:" >&2; tail -20 "$profile/chromium.log" >&2; exit 1; }
[[ -s $abs_out ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "$abs_out"
