#!/usr/bin/env bash
# bench/commit: hamail's commit throughput beside this disk's fsync limit,
# in one run (dev profile: dependencies at opt-level 2, hamail at 1).
# Usage: bench/commit.sh [DIR-on-the-disk-to-measure] [SECONDS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
(cd "$here" && cargo build --quiet --workspace --all-targets)
exec "$CARGO_TARGET_DIR/debug/commit-bench" "${1:-/var/tmp}" "${2:-5}"
