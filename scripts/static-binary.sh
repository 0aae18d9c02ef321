#!/usr/bin/env bash
# Builds allot as one statically linked binary (glibc's static libc), the binary the container
# image's `prebuilt` target takes, and copies it to target/docker/allot.
#
#   scripts/static-binary.sh            a dev build without debug info (what the tests use)
#   scripts/static-binary.sh release    an optimised one (what the Dockerfile's own build makes)
#
# It builds in target/static, apart from the usual target directory: the static flag applies
# to allot and its libraries only (hence --target), and would otherwise rebuild everything.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-dev}
case "$profile" in
  dev) dir=debug ;;
  release) dir=release ;;
  *) echo "static-binary.sh: profile must be dev or release, not $profile" >&2; exit 2 ;;
esac
host=$(rustc -vV | sed -n 's/^host: //p')
# The static flag as the host triple's rustflags (CARGO_TARGET_<TRIPLE>_RUSTFLAGS), which
# cargo joins to .cargo/config.toml's (its x86-64-v2 baseline); RUSTFLAGS would replace them.
triple_flags="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
env "$triple_flags=-C target-feature=+crt-static" CARGO_PROFILE_DEV_DEBUG=0 \
  CARGO_TARGET_DIR=target/static \
  cargo build --locked --profile "$profile" --bin allot --target "$host"
mkdir -p target/docker
cp "target/static/$host/$dir/allot" target/docker/allot.new
mv target/docker/allot.new target/docker/allot
echo target/docker/allot
