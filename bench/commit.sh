#!/usr/bin/env bash
# bench/commit: hamail's commit throughput beside this disk's fsync limit,
# in one run (release profile).
# Usage: bench/commit.sh [DIR-on-the-disk-to-measure] [SECONDS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
release_build
echo "bench/commit: release profile"
exec "$CARGO_TARGET_DIR/release/commit-bench" "${1:-/var/tmp}" "${2:-5}"
