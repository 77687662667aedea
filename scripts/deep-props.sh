#!/usr/bin/env bash
# Runs only the property tests, with many more cases than the test suite
# and a random seed, to find failures before CI's fixed seed would miss
# them. A failure prints its minimal input, and proptest saves its seed in
# proptest-regressions/ (commit that file with the fix).
#   bash scripts/deep-props.sh            # 20000 cases per property
#   PROPTEST_CASES=200000 bash scripts/deep-props.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
unset PROPTEST_RNG_SEED
# Modules with proptest! blocks (their other tests run too; they are fast).
cargo test --locked --lib -- --test-threads="${CHAOS_TEST_THREADS:-2}" \
    traffic::fast traffic::assign traffic::h2relay \
    fault::recover::fuzz stats::properties report::
