#!/usr/bin/env bash
# bench/dns-flood: a random-subdomain flood against one hamail node (release
# build): 500,000 queries for names asked once each, half NXDOMAIN, half
# under a wildcard (answered, so each enters the UDP answer cache), while a
# second client asks one hot name 500 times a second. Checks, and fails the
# run otherwise: the node's RSS grows by at most the bound below, and the
# hot name is answered throughout.
#
# The bound: each UDP worker's cache is charged at most 32 MiB (keys,
# answers, bookkeeping; crates/hamail-dns/src/udp.rs CACHE_BYTES), 2 workers
# by default, plus 32 MiB for the allocator's slack: 96 MiB.
# Usage: bench/dns-flood.sh [QUERIES] [NAMES]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
queries="${1:-500000}"
names="${2:-10000}"
bound_kib=$((96 * 1024))
command -v dnsperf >/dev/null 2>&1 || apt_install dnsperf
command -v kdig >/dev/null 2>&1 || apt_install knot-dnsutils
. "$here/bench/lib-dns.sh"
dns_hamail_binary bench/dns-flood

work="$(mktemp -d /var/tmp/hamail-bench-dnsflood.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

zone="$work/bench.example.zone"
dns_bench_zone "$zone" "$names" 'hot IN A 192.0.2.1' '*.wild IN A 192.0.2.2'
python3 "$here/bench/dns-queries.py" "$work/flood.q" bench.example "$names" "$queries" flood
echo "hot.bench.example A" > "$work/hot.q"

dns_hamail_start 18556 "$zone"
pid=$hamail_pid
for _ in $(seq 1 150); do
    [ "$(kdig @127.0.0.1 -p 18556 hot.bench.example A +short 2>/dev/null)" = "192.0.2.1" ] && break
    sleep 0.1
done
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
# Warm: the hot name in every worker's cache.
dnsperf -s 127.0.0.1 -p 18556 -d "$work/hot.q" -n 2000 -c 4 >/dev/null 2>&1 || true
before="$(rss)"
dnsperf -s 127.0.0.1 -p 18556 -d "$work/hot.q" -l 3600 -Q 500 -c 2 > "$work/hot.out" 2>&1 &
hot=$!
pids+=("$hot")
start=$(date +%s.%N)
dnsperf -B -s 127.0.0.1 -p 18556 -d "$work/flood.q" -n 1 -c 4 -q 500 > "$work/flood.out" 2>&1 || true
end=$(date +%s.%N)
after="$(rss)"
kill -INT "$hot" 2>/dev/null || true
wait "$hot" 2>/dev/null || true
awk '/Queries sent:/ {s=$3} /Queries completed:/ {c=$3} /Queries per second:/ {q=$4}
     END { printf "flood: sent %d, answered %d, %.0f qps\n", s, c, q }' "$work/flood.out"
awk '/Queries sent:/ {s=$3} /Queries lost:/ {l=$3} /Average Latency/ {a=$4}
     END { printf "hot name during the flood: sent %d, lost %d, average latency %s s\n", s, l, a }' "$work/hot.out"
grows=$((after - before))
echo "RSS before $((before / 1024)) MiB, after $((after / 1024)) MiB: +$((grows / 1024)) MiB (bound +$((bound_kib / 1024)) MiB), $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
ok=1
[ "$grows" -le "$bound_kib" ] || { echo "bench/dns-flood: FAILED: RSS grew by $((grows / 1024)) MiB" >&2; ok=0; }
[ "$(kdig @127.0.0.1 -p 18556 hot.bench.example A +short 2>/dev/null)" = "192.0.2.1" ] || { echo "bench/dns-flood: FAILED: the hot name is not answered" >&2; ok=0; }
lost="$(awk '/Queries lost:/ {print $3}' "$work/hot.out")"
[ "${lost:-1}" -eq 0 ] || { echo "bench/dns-flood: FAILED: $lost hot queries lost during the flood" >&2; ok=0; }
[ "$ok" = 1 ] && echo "bench/dns-flood: ok"
[ "$ok" = 1 ]
