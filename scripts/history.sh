#!/usr/bin/env bash
# Runs the randomized history checker (tests/it/history.rs) for longer than CI does:
#   scripts/history.sh [SECONDS] [SEED]
# Needs PostgreSQL as the test suite does (DATABASE_URL, else 127.0.0.1:5432 as postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
export ALLOT_HISTORY_SECS=${1:-120}
export ALLOT_HISTORY_SEED=${2:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}
echo "history: ${ALLOT_HISTORY_SECS} s per run, seed ${ALLOT_HISTORY_SEED}" >&2
exec cargo test --release --test it history -- --nocapture --test-threads 1
