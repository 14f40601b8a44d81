#!/usr/bin/env bash
# Many SIGKILL crash cycles against the engine on the real disk
# (engine/tests/crash.rs). Usage: scripts/crash-loop.sh [cycles] (default 200).
set -euo pipefail
cd "$(dirname "$0")/.."
TESSERA_CRASH_CYCLES=${1:-200} cargo test -p tessera-engine --release --test crash -- --nocapture
