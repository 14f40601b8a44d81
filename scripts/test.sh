#!/usr/bin/env bash
# The project's test command (README): formatting, lints, then every test in
# the workspace. Installs nothing beyond the Rust toolchain today.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
