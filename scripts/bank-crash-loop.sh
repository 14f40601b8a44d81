#!/usr/bin/env bash
# Many SIGKILL cycles of the real 2-shard tessera-server under cross-shard
# bank transfers (net/tests/bank.rs): after each restart no intent is left,
# the total holds and every acknowledged transfer is present.
# Usage: scripts/bank-crash-loop.sh [cycles] (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
TESSERA_BANK_CRASH_CYCLES=${1:-100} cargo test -p tessera-net --release --test bank \
  transfers_survive_sigkill -- --nocapture
