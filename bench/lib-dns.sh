# Sourced by bench/dns.sh and bench/dns-flood.sh: the hamail binary they
# measure and a one-node hamail serving a zone file. Expects $here, $work
# and the array pids (killed by the caller's cleanup) to be set.

# Sets $bin: $HAMAIL_BIN, else the release build (built here), and says
# which profile it is. Usage: dns_hamail_binary BENCH-NAME
dns_hamail_binary() {
    bin="${HAMAIL_BIN:-$CARGO_TARGET_DIR/release/hamail}"
    [ -n "${HAMAIL_BIN:-}" ] || release_build
    case "$bin" in
        */release/*) echo "$1: hamail $bin (release profile)" ;;
        *) echo "$1: hamail $bin (NOT the release profile: figures are not comparable)" ;;
    esac
}

# Starts a one-node hamail with DNS on 127.0.0.1:PORT, waits for it to lead,
# and loads ZONE-FILE as bench.example. Sets $hamail_pid.
# Usage: dns_hamail_start PORT ZONE-FILE
dns_hamail_start() {
    cat > "$work/hamail.toml" <<EOT
[node]
data_dir = "$work/hamail"
log = "warn"
[cluster]
bootstrap = true
[rpc]
listen = "127.0.0.1:0"
[dns]
listen = ["127.0.0.1:$1"]
[metrics]
listen = "127.0.0.1:0"
EOT
    "$bin" --config "$work/hamail.toml" serve 2>"$work/hamail.log" &
    hamail_pid=$!
    pids+=("$hamail_pid")
    local _
    for _ in $(seq 1 600); do
        "$bin" --config "$work/hamail.toml" status --json 2>/dev/null | grep -q '"leader": [0-9]' && break
        sleep 0.1
    done
    "$bin" --config "$work/hamail.toml" zone add bench.example --file "$2" >/dev/null
}

# Writes the bench zone: bench.example with NAMES names host0..hostN-1 (the
# query files of bench/dns-queries.py ask for them), and any extra lines.
# Usage: dns_bench_zone FILE NAMES [LINE...]
dns_bench_zone() {
    local file=$1 n=$2
    shift 2
    {
        echo '$ORIGIN bench.example.'
        echo '$TTL 3600'
        echo '@ IN SOA ns1.bench.example. hostmaster.bench.example. 1 3600 900 1209600 300'
        echo '@ IN NS ns1'
        echo 'ns1 IN A 192.0.2.53'
        local line
        for line in "$@"; do echo "$line"; done
        awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "host%d IN A 10.%d.%d.%d\n", i, int(i/65536)%256, int(i/256)%256, i%256 }'
    } > "$file"
}
