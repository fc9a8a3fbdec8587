#!/usr/bin/env bash
# bench/import: `hamail recipient import` of a 100,000-line Postfix map file
# (replicated, fsynced, one raft entry) beside Postfix's own `postmap` of the
# same file (a local Berkeley/LMDB table, what relay_recipient_maps uses),
# in one run. Usage: bench/import.sh [LINES]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
lines="${1:-100000}"
command -v bc >/dev/null 2>&1 || apt_install bc

if ! command -v postmap >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_install postfix
fi

release_build
bin="$CARGO_TARGET_DIR/release/hamail"
echo "bench/import: release profile ($bin)"

work="$(mktemp -d /var/tmp/hamail-bench-import.XXXXXX)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

map="$work/relay_recipients"
awk -v n="$lines" 'BEGIN { for (i = 0; i < n; i++) printf "user%d@example.jp x\n", i }' > "$map"

cat > "$work/hamail.toml" <<EOT
[node]
data_dir = "$work/data"
[cluster]
bootstrap = true
[metrics]
listen = "127.0.0.1:0"
EOT
"$bin" --config "$work/hamail.toml" serve 2>"$work/serve.log" &
pid=$!
for _ in $(seq 1 600); do
    "$bin" --config "$work/hamail.toml" status --json 2>/dev/null | grep -q '"leader": [0-9]' && break
    sleep 0.1
done
"$bin" --config "$work/hamail.toml" domain add example.jp --kind relay >/dev/null

t0=$(date +%s.%N)
"$bin" --config "$work/hamail.toml" recipient import "$map"
t1=$(date +%s.%N)
count=$("$bin" --config "$work/hamail.toml" recipient list | wc -l)

# A private Postfix configuration directory (postmap reads main.cf).
mkdir -p "$work/postfix"
printf 'compatibility_level = 3.6\n' > "$work/postfix/main.cf"
p0=$(date +%s.%N)
postmap -c "$work/postfix" "hash:$map"
p1=$(date +%s.%N)

h=$(echo "$t1 - $t0" | bc -l)
p=$(echo "$p1 - $p0" | bc -l)
printf 'lines                        %d (hamail holds %d afterwards)\n' "$lines" "$count"
printf 'hamail recipient import      %.3f s  (%.0f lines/s, committed and fsynced)\n' "$h" "$(echo "$lines / $h" | bc -l)"
printf 'postfix postmap hash:        %.3f s  (%.0f lines/s, local file)\n' "$p" "$(echo "$lines / $p" | bc -l)"
printf 'ratio hamail/postmap time    %.2f\n' "$(echo "$h / $p" | bc -l)"
