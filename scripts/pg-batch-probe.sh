#!/usr/bin/env bash
# What PostgreSQL writes per allocation under the durable bench's two shapes: one pool driven
# by one h2load process (4 connections x 16 streams), and 16 pools driven by one h2load
# process each (1 connection x 4 streams): WAL bytes, commits and tuples changed, read from
# pg_current_wal_lsn() and the statistics views before and after 20,000 RequestAddress calls.
#
# Usage: scripts/pg-batch-probe.sh   (after `cargo build --release`; PostgreSQL on 127.0.0.1
# as user postgres, h2load and psql on PATH). Uses a database `allot_batch_probe`, dropped first.
set -euo pipefail
cd "$(dirname "$0")/.."
allot=target/release/allot
db=allot_batch_probe
port=${PROBE_PORT:-50999}
work=$(mktemp -d)
psql_() { psql -qAt -h 127.0.0.1 -U postgres "$@"; }
psql_ -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres 2>/dev/null
psql_ -c "CREATE DATABASE $db" postgres
"$allot" serve --database-url "postgres://postgres@127.0.0.1:5432/$db" \
  --listen "127.0.0.1:$port" 2>"$work/server.log" &
server=$!
trap 'kill $server; rm -rf "$work"' EXIT
cli() { "$allot" --server "http://127.0.0.1:$port" "$@"; }
# Ready once it answers (a fixed wait was too short for a slow start).
for _ in $(seq 100); do
  if cli pool list >/dev/null 2>&1; then break; fi
  sleep 0.2
done
pool() { printf 'fd00:7:%x::/64' "$1"; }
# Addresses in use over the pools named (`allot state`'s fifth column, IN-USE).
in_use() {
  local pools=()
  for p in "$@"; do pools+=("local/$p"); done
  cli state "${pools[@]}" | awk 'NR > 1 { n += $5 } END { print n + 0 }'
}
for p in $(seq 0 16); do
  cli pool request --pool "$(pool "$p")" --v6 >/dev/null
done
# A framed gRPC RequestAddressRequest { pool_id } (field 1, a string shorter than 128 bytes).
body() {
  python3 -c '
import struct, sys
pid = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(pid)]) + pid
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(msg)) + msg)' "$1" >"$2"
}
snapshot() {
  psql_ "$db" -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,
    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
    (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables)" |
    tr '|' ' '
}
total=20000
shape() { # NAME POOL...
  local name=$1 i=0 pids=() streams
  shift
  if [ $# = 1 ]; then streams="-c 4 -m 16"; else streams="-c 1 -m $((64 / $#))"; fi
  sleep 1 # the statistics views are updated when a backend goes idle
  read -r wal0 commits0 tuples0 < <(snapshot)
  local used0
  used0=$(in_use "$@")
  for pool in "$@"; do
    body "local/$pool" "$work/body-$i"
    # shellcheck disable=SC2086 # $streams is two options
    h2load -n $((total / $#)) $streams -t 1 -d "$work/body-$i" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://127.0.0.1:$port/ipam.v1.IpamService/RequestAddress" >"$work/h2load-$i.out" &
    pids+=($!)
    i=$((i + 1))
  done
  wait "${pids[@]}"
  if grep -h 'requests:' "$work"/h2load-*.out | grep -qv ' 0 failed, 0 errored'; then
    echo "pg-batch-probe: h2load saw failures:" >&2
    cat "$work"/h2load-*.out >&2
    exit 1
  fi
  sleep 1.5
  read -r wal1 commits1 tuples1 < <(snapshot)
  # A gRPC refusal is an HTTP success: count the addresses the calls took.
  local allocated=$(($(in_use "$@") - used0))
  if [ "$allocated" != "$total" ]; then
    echo "pg-batch-probe: $total calls allocated $allocated addresses" >&2
    exit 1
  fi
  python3 -c "
n, w, c, t = $total, $wal1 - $wal0, $commits1 - $commits0, $tuples1 - $tuples0
print(f'| $name | {w / n:.0f} B | {n / c:.1f} | {t / n:.2f} |')"
  rm -f "$work"/h2load-*.out
}
echo "| shape | WAL per allocation | allocations per commit | tuples changed per allocation |"
echo "|---|---|---|---|"
shape "1 pool, 1 h2load process" "$(pool 16)"
pools=()
for p in $(seq 0 15); do pools+=("$(pool "$p")"); done
shape "16 pools, 16 h2load processes" "${pools[@]}"
