#!/usr/bin/env bash
# The main job (README "Quick start"): build chaos and run the demo
# experiment end to end — a demo fleet on loopback, the cohort proxy with
# synthetic users, a real fault, the statistical verdicts — against a
# resilient and a fragile API. Needs only a Rust toolchain; the demo uses
# processes and loopback sockets, no extra packages and no privileges.
set -euo pipefail
cd "$(dirname "$0")/.."
# A debug build: it compiles in about half the time of a release build on a
# small machine, shares its artifacts with the test command, and the demo's
# few hundred requests per second are well within its reach.
cargo build --locked --quiet
exec ./target/debug/chaos demo run "$@"
