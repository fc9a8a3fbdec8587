#!/usr/bin/env bash
# bench/dns: the same 10,000-name zone served by NSD and by hamail (loaded
# with `hamail zone import`), dnsperf against each in turn in one run, UDP,
# same query file. Prints qps and lost queries and the ratio.
# Usage: bench/dns.sh [SECONDS] [NAMES]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/scripts/deps.sh"
secs="${1:-10}"
names="${2:-10000}"
command -v dnsperf >/dev/null 2>&1 || apt_install dnsperf
command -v nsd >/dev/null 2>&1 || apt_install nsd
(cd "$here" && cargo build --quiet --workspace --all-targets)
bin="$CARGO_TARGET_DIR/debug/hamail"
# Stock hickory-dns, built once into /var/tmp (its own target directory).
hickory="${HICKORY_DNS:-/var/tmp/hickory-dns-bin/bin/hickory-dns}"
if [ ! -x "$hickory" ]; then
    echo "bench/dns: building stock hickory-dns (once)" >&2
    CARGO_TARGET_DIR=/var/tmp/hickory-dns-build cargo install --quiet hickory-dns --root /var/tmp/hickory-dns-bin
fi

work="$(mktemp -d /var/tmp/hamail-bench-dns.XXXXXX)"
chmod 755 "$work"   # hickory-dns drops to nobody before it reads the zone
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

zone="$work/bench.example.zone"
{
    echo '$ORIGIN bench.example.'
    echo '$TTL 3600'
    echo '@ IN SOA ns1.bench.example. hostmaster.bench.example. 1 3600 900 1209600 300'
    echo '@ IN NS ns1'
    echo 'ns1 IN A 192.0.2.53'
    awk -v n="$names" 'BEGIN { for (i = 0; i < n; i++) printf "host%d IN A 10.%d.%d.%d\n", i, int(i/65536)%256, int(i/256)%256, i%256 }'
} > "$zone"
awk -v n="$names" 'BEGIN { for (i = 0; i < n; i++) printf "host%d.bench.example A\n", i }' > "$work/queries"

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
"$hickory" -q -c "$work/hickory.toml" >/dev/null 2>&1 &
pids+=($!)

cat > "$work/hamail.toml" <<EOT
[node]
data_dir = "$work/hamail"
log = "warn"
[cluster]
bootstrap = true
[rpc]
listen = "127.0.0.1:0"
[dns]
listen = ["127.0.0.1:18554"]
[metrics]
listen = "127.0.0.1:0"
EOT
"$bin" --config "$work/hamail.toml" serve 2>"$work/hamail.log" &
pids+=($!)
for _ in $(seq 1 600); do
    "$bin" --config "$work/hamail.toml" status --json 2>/dev/null | grep -q '"leader": [0-9]' && break
    sleep 0.1
done
"$bin" --config "$work/hamail.toml" zone add bench.example --file "$zone" >/dev/null
for _ in $(seq 1 150); do
    [ "$(kdig @127.0.0.1 -p 18554 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ] && \
    [ "$(kdig @127.0.0.1 -p 18553 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ] && \
    [ "$(kdig @127.0.0.1 -p 18555 host1.bench.example A +short 2>/dev/null)" = "10.0.0.1" ] && break
    sleep 0.1
done

run() { # name port -> prints a line, leaves the qps in $work/<name>.qps
    dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$secs" -c 4 -q 500 2>/dev/null > "$work/$1.out" || true
    awk -v n="$1" -v f="$work/$1.qps" '/Queries sent:/ {s=$3} /Queries lost:/ {l=$3} /Queries per second:/ {q=$4}
        END { printf "%-8s %10.0f qps   sent %d, lost %d (%.3f %%)\n", n, q, s, l, (s ? 100*l/s : 0); print q > f }' "$work/$1.out"
}
echo "bench/dns: $names names, dnsperf ${secs}s each, UDP, one after another"
run nsd 18553
run hickory 18555
run hamail 18554
awk -v h="$(cat "$work/hamail.qps")" -v n="$(cat "$work/nsd.qps")" -v k="$(cat "$work/hickory.qps")" \
    'BEGIN { printf "ratio hamail/nsd %.2f   hamail/hickory %.2f   hickory/nsd %.2f\n", (n > 0 ? h/n : 0), (k > 0 ? h/k : 0), (n > 0 ? k/n : 0) }'
