#!/usr/bin/env bash
# bench/chaos: the geo fault suite (tests/tests/chaos.rs) for a long run:
# a random schedule of faults — a site isolated, killed with -9, paused
# with SIGSTOP, a link cut one way, a site rebuilt from an empty data
# directory (cluster remove + join), a wall clock stepped up to 2 h either
# way — for SECS seconds over links of
# DELAY_MS each way (default 40: 80 ms round trips), while mail and zone
# edits go to all three sites. At the end the checker fails the run on any
# acknowledged message not delivered, acknowledged zone edit missing, SOA
# serial going backwards, or states that do not converge, and prints the
# counts, duplicates and the recovery time after each fault. The seed is
# printed; SEED=... replays a schedule.
#
# Usage: bench/chaos.sh [SECS]      (SECS default 1800; DELAY_MS, SEED)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
command -v kdig >/dev/null 2>&1 || apt_install knot-dnsutils
command -v faketime >/dev/null 2>&1 || apt_install faketime
cd "$here"
cargo build --quiet --workspace --all-targets
# Run copies of the binaries, so that a rebuild during a long run does not
# swap the binary under test (a killed node restarts from the copy).
exe=$(cargo test -p hamail-tests --test chaos --no-run 2>&1 | sed -n 's/.*Executable.*(\(.*\)).*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "bench/chaos: cannot find the chaos test binary" >&2; exit 1; }
run="${RUN_DIR:-/var/tmp/hamail-chaos-run}"
rm -rf "$run"; mkdir -p "$run/deps"
cp "$exe" "$run/deps/chaos"
cp "$(dirname "$exe")/../hamail" "$(dirname "$exe")/../hamail-chaos" "$run/"
export HAMAIL_CHAOS_SECS="${1:-1800}"
export HAMAIL_CHAOS_DELAY_MS="${DELAY_MS:-40}"
[ -z "${SEED:-}" ] || export HAMAIL_CHAOS_SEED="$SEED"
log="${LOG:-/var/tmp/hamail-chaos.log}"
echo "bench/chaos: ${HAMAIL_CHAOS_SECS} s of faults, links ${HAMAIL_CHAOS_DELAY_MS} ms each way; full output in $log"
set +e
"$run/deps/chaos" --nocapture > "$log" 2>&1
rc=$?
grep -E "chaos:|test result|panicked|gave up|failed" "$log"
exit "$rc"
