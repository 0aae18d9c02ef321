#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, and every test, Postgres tests included.
#
# PostgreSQL: uses $DATABASE_URL if set, else a server on 127.0.0.1:5432 (user postgres), else
# starts the locally installed cluster (pg_ctlcluster), else installs one with apt-get when
# running as root. Under CI (CI set) a missing database is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@$PGHOST:$PGPORT/postgres}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }
can_login() { psql "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; }
start_clusters() {
  pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _; do
    [ "$status" = online ] || pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
  done
}

prepare_postgres() {
  if ! command -v pg_isready >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "test.sh: installing PostgreSQL" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
      return 1
    fi
  fi
  pg_up || start_clusters
  for _ in $(seq 30); do pg_up && break; sleep 1; done
  pg_up || return 1
  if ! can_login && [ "$(id -u)" = 0 ]; then
    # A Debian cluster with peer/scram auth: make a role that may create test databases.
    su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL'
SELECT 'CREATE ROLE allot_test LOGIN CREATEDB PASSWORD ''allot_test'''
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'allot_test') \gexec
SELECT 'CREATE DATABASE allot_test OWNER allot_test'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'allot_test') \gexec
SQL
    export DATABASE_URL="postgres://allot_test:allot_test@$PGHOST:$PGPORT/allot_test"
  fi
  can_login
}

if ! prepare_postgres; then
  echo "test.sh: no PostgreSQL reachable at $DATABASE_URL; the Postgres tests will fail" >&2
fi

# openssl makes the TLS tests' certificates; h2load (nghttp2-client) measures the server from
# outside in the tenancy benchmark's smoke run; the CNI chain test runs Debian's bridge plugin
# (containernetworking-plugins) in network namespaces (iproute2) and pings with busybox.
# Installed where missing, when we can.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v ip >/dev/null || missing+=(iproute2)
# The Docker tests run a real dockerd of their own (Debian's docker.io); the image test also
# brings compose.yaml up (docker-compose) with a PostgreSQL image it makes (debootstrap).
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: ${missing[*]} missing and cannot be installed here" >&2
  fi
fi

# Real clients the tests drive (grpcurl, buf), in a virtualenv of the project's own.
PATH="$(scripts/tools.sh):$PATH"
export PATH
hash -r
buf lint

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The image test's statically linked binary, built before the tests start rather than while
# they run beside it (the test runs the script again, which then finds it up to date).
scripts/static-binary.sh >/dev/null
cargo test --all-targets --locked "$@"
