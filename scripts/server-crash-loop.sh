#!/usr/bin/env bash
# Many SIGKILL cycles of the real tessera-server under concurrent SDK writes,
# in each WAL sync mode (net/tests/crash.rs).
# Usage: scripts/server-crash-loop.sh [cycles per mode] (default 200).
set -euo pipefail
cd "$(dirname "$0")/.."
TESSERA_SERVER_CRASH_CYCLES=${1:-200} cargo test -p tessera-net --release --test crash -- --nocapture
