#!/usr/bin/env bash
# bench/dns: the same zone (100,000 names by default) served by NSD, stock
# hickory-dns and hamail (release build, loaded with `hamail zone add
# --file`), dnsperf against each in turn in one run, UDP, the same query
# files: names that exist (hits), names that do not (misses: NXDOMAIN and
# NODATA), and a mix (70 % hits, 20 % NXDOMAIN, 10 % NODATA, 10 % of all
# with the DO bit) so that the answer cache cannot flatter the figure.
# Prints qps and lost queries per server and mix, and the ratios.
# Usage: bench/dns.sh [SECONDS] [NAMES]     HICKORY=skip leaves hickory out;
# HAMAIL_BIN=path runs that binary instead of building the release one.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
secs="${1:-10}"
names="${2:-100000}"
command -v dnsperf >/dev/null 2>&1 || apt_install dnsperf
command -v nsd >/dev/null 2>&1 || apt_install nsd
command -v kdig >/dev/null 2>&1 || apt_install knot-dnsutils
. "$here/bench/lib-dns.sh"
dns_hamail_binary bench/dns
# Stock hickory-dns, built once into /var/tmp (its own target directory).
hickory="${HICKORY_DNS:-/var/tmp/hickory-dns-bin/bin/hickory-dns}"
[ "${HICKORY:-}" = skip ] && hickory=""
if [ -n "$hickory" ] && [ ! -x "$hickory" ]; then
    echo "bench/dns: building stock hickory-dns (once)" >&2
    CARGO_TARGET_DIR=/var/tmp/hickory-dns-build cargo install --quiet hickory-dns --root /var/tmp/hickory-dns-bin
fi

work="$(mktemp -d /var/tmp/hamail-bench-dns.XXXXXX)"
chmod 755 "$work"   # hickory-dns drops to nobody before it reads the zone
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

zone="$work/bench.example.zone"
dns_bench_zone "$zone" "$names"
for mix in hits misses mixed; do
    python3 "$here/bench/dns-queries.py" "$work/$mix.q" bench.example "$names" 200000 "$mix"
done

# NSD, primary for the same zone file, no rate limiting.
mkdir -p "$work/nsd"
cat > "$work/nsd/nsd.conf" <<EOT
server:
  port: 18553
  ip-address: 127.0.0.1
  username: ""
  chroot: ""
  database: ""
  zonesdir: "$work/nsd"
  pidfile: "$work/nsd/nsd.pid"
  xfrdfile: "$work/nsd/xfrd.state"
  zonelistfile: "$work/nsd/zone.list"
  logfile: "$work/nsd/nsd.log"
  server-count: 2
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: bench.example
  zonefile: "$zone"
EOT
nsd -d -c "$work/nsd/nsd.conf" >/dev/null 2>&1 &
pids+=($!)

# Stock hickory-dns serving the same file.
cat > "$work/hickory.toml" <<EOT
listen_addrs_ipv4 = ["127.0.0.1"]
listen_port = 18555
directory = "$work"
user = "nobody"
group = "nogroup"
[[zones]]
zone = "bench.example"
zone_type = "Primary"
[zones.stores]
type = "file"
zone_path = "bench.example.zone"
EOT
if [ -n "$hickory" ]; then
    "$hickory" -q -c "$work/hickory.toml" >/dev/null 2>&1 &
    pids+=($!)
fi

dns_hamail_start 18554 "$zone"
for _ in $(seq 1 150); do
    [ "$(kdig @127.0.0.1 -p 18554 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ] && \
    [ "$(kdig @127.0.0.1 -p 18553 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ] && \
    { [ -z "$hickory" ] || [ "$(kdig @127.0.0.1 -p 18555 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ]; } && break
    sleep 0.1
done

run() { # name port mix -> prints a line, leaves the qps in $work/<name>.<mix>.qps
    dnsperf -B -s 127.0.0.1 -p "$2" -d "$work/$3.q" -l "$secs" -c 4 -q 500 2>/dev/null > "$work/$1.$3.out" || true
    awk -v n="$1" -v m="$3" -v f="$work/$1.$3.qps" '/Queries sent:/ {s=$3} /Queries lost:/ {l=$3} /Queries per second:/ {q=$4}
        /Response codes:/ { for (i = 1; i < NF; i++) { if ($i == "NOERROR") ok = $(i+1); if ($i == "NXDOMAIN") nx = $(i+1) } }
        END { printf "%-8s %-7s %10.0f qps   sent %d, lost %d (%.3f %%), NOERROR %d NXDOMAIN %d\n", n, m, q, s, l, (s ? 100*l/s : 0), ok, nx; print q > f }' "$work/$1.$3.out"
}
servers="nsd:18553 hamail:18554"
[ -n "$hickory" ] && servers="nsd:18553 hickory:18555 hamail:18554"
echo "bench/dns: $names names, dnsperf ${secs}s per server and mix, UDP, one after another"
for mix in hits misses mixed; do
    for s in $servers; do run "${s%%:*}" "${s##*:}" "$mix"; done
done
q() { cat "$work/$1.qps" 2>/dev/null || echo 0; }
for mix in hits misses mixed; do
    awk -v m="$mix" -v h="$(q hamail.$mix)" -v n="$(q nsd.$mix)" -v k="$(q hickory.$mix)" \
        'BEGIN { printf "%-7s ratio hamail/nsd %.2f   hamail/hickory %s\n", m, (n > 0 ? h/n : 0), (k > 0 ? sprintf("%.2f", h/k) : "not run") }'
done
awk -v h="$(q hamail.hits)" -v m="$(q hamail.misses)" \
    'BEGIN { printf "hamail misses/hits %.2f (issue 12: at least 0.5)\n", (h > 0 ? m/h : 0) }'
