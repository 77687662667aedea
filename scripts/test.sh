#!/usr/bin/env bash
# The project's test command (README "Quick start"): installs what the tests
# need, then runs every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --locked -- --test-threads="${CHAOS_TEST_THREADS:-4}"
