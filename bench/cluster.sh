#!/usr/bin/env bash
# bench/cluster: commits per second on three nodes (TLS cluster RPC on
# 127.0.0.11-13) beside one node, in one run. Usage: bench/cluster.sh [SECONDS]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
cd "$here"
release_build
echo "bench/cluster: release profile"
exec "$CARGO_TARGET_DIR/release/cluster-bench" "${1:-5}"
