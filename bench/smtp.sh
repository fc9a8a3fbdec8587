#!/usr/bin/env bash
# bench/smtp: inbound SMTP acceptance (mail accepted with a 250 and safely
# queued) of a private Postfix instance beside hamail on one node and on a
# three-node local cluster, in one run, with the same load: smtp-source,
# 50 sessions, 5000 messages of 4 KB, best of two runs each. Then the
# end-of-DATA -> 250 latency of each (bench/smtp_latency.py).
#
# Usage: bench/smtp.sh
#   ONLY=postfix|hamail  run one side only (default: both, with ratios)
#   HAMAIL_BIN=PATH      a prebuilt hamail (default: build the workspace as
#                        the other benches do, and use its binary)
#   MSGS=5000 SESSIONS=50 SIZE=4096   smtp-source load
#   LAT_MSGS=2000 LAT_SESSIONS=50     smtp_latency.py load
#
# Addresses: Postfix on 127.0.0.20:2525, hamail on 127.0.0.21-23:2525
# (RPC on :17500). Work files in /var/tmp/hamail-bench-smtp.XXXXXX, removed
# on exit. Needs root (Postfix runs its daemons as the postfix user).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

only="${ONLY:-}"
case "$only" in "" | postfix | hamail) ;; *) echo "bench/smtp: ONLY must be postfix or hamail" >&2; exit 2 ;; esac
msgs="${MSGS:-5000}"
sessions="${SESSIONS:-50}"
size="${SIZE:-4096}"
lat_msgs="${LAT_MSGS:-2000}"
lat_sessions="${LAT_SESSIONS:-50}"
sender="sender@client.example"
rcpt="rcpt@bench.example"
pf_addr="127.0.0.20"
smtp_port=2525
rpc_port=17500
bin="${HAMAIL_BIN:-}"
run_postfix() { [ "$only" != hamail ]; }
run_hamail() { [ "$only" != postfix ]; }

[ "$(id -u)" = 0 ] || { echo "bench/smtp: run as root (private Postfix needs it)" >&2; exit 1; }

# ---------------------------------------------------------------- packages
apt_get() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}
if [ ! -x /usr/sbin/smtp-source ] || ! command -v postfix >/dev/null 2>&1; then
    echo "bench/smtp: installing postfix (for smtp-source and the baseline)" >&2
    # "No configuration": no /etc/postfix/main.cf, and the system instance is
    # not started; only our private instance below runs.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_get postfix
fi
command -v python3 >/dev/null 2>&1 || apt_get python3

# ---------------------------------------------------------------- hamail binary
if run_hamail; then
    if [ -z "$bin" ]; then
        . "$here/scripts/deps.sh"   # clang for RocksDB; CARGO_TARGET_DIR
        # The whole workspace, as the tests build it: a narrower build
        # changes features and rebuilds RocksDB.
        (cd "$here" && cargo build --quiet --workspace --all-targets)
        bin="$CARGO_TARGET_DIR/debug/hamail"
    fi
    if [ ! -x "$bin" ]; then
        echo "bench/smtp: no hamail binary at $bin" >&2
        exit 1
    fi
fi

# ---------------------------------------------------------------- work dir, cleanup
work="$(mktemp -d /var/tmp/hamail-bench-smtp.XXXXXX)"
# mktemp makes it 0700; Postfix daemons run as the postfix user and must
# reach the queue and log below it.
chmod 755 "$work"
pf="$work/postfix"
pf_started=""
hamail_pids=()

# Waits up to $2 deciseconds for process $1 to exit.
wait_gone() { local i; for i in $(seq 1 "$2"); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }

declare -A hamail_dir   # pid -> node directory (for its log)

# SIGTERM to every hamail node started, then reap them; an unclean exit is
# reported with the end of its log (the work directory is removed after).
stop_hamail() {
    local p s
    for p in "${hamail_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${hamail_pids[@]}"; do
        wait_gone "$p" 200 || { echo "bench/smtp: hamail pid $p ignores SIGTERM, killing it" >&2; kill -KILL "$p" 2>/dev/null || true; }
        s=0
        wait "$p" 2>/dev/null || s=$?
        if [ "$s" != 0 ]; then
            echo "bench/smtp: WARNING: hamail ${hamail_dir[$p]} (pid $p) exited with status $s; its log ends:" >&2
            tail -5 "${hamail_dir[$p]}/serve.log" >&2 || true
        fi
    done
    hamail_pids=()
}

cleanup() {
    stop_hamail
    if [ -n "$pf_started" ]; then
        # `postfix stop` only signals the master; wait for it (and so its
        # children) to be gone before the queue is removed under them.
        local mpid
        mpid="$(tr -d ' ' < "$pf/queue/pid/master.pid" 2>/dev/null || true)"
        postfix -c "$pf/etc" stop >/dev/null 2>&1 || true
        [ -z "$mpid" ] || wait_gone "$mpid" 200 || echo "bench/smtp: postfix master $mpid still running" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- load
declare -A best      # name -> best msg/s of smtp-source
declare -A latency   # name -> smtp_latency.py output line

# smtp-source load over one or more HOST:PORT targets in parallel: MSGS
# messages and SESSIONS sessions split evenly between them. smtp-source
# opens a new connection per message (no -d), as most MTAs sending to an MX
# do. Prints msg/s = messages sent / wall time of the slowest.
load() {
    local n=$# per_m=$(( (msgs + $# - 1) / $# )) per_s=$(( (sessions + $# - 1) / $# ))
    local t0 t1 t pids=() rc=0 i=0
    t0="$(date +%s.%N)"
    for t in "$@"; do
        timeout 600 /usr/sbin/smtp-source -s "$per_s" -m "$per_m" -l "$size" \
            -f "$sender" -t "$rcpt" "$t" 2>"$work/smtp-source.$i.err" &
        pids+=($!)
        i=$((i + 1))
    done
    for t in "${pids[@]}"; do wait "$t" || rc=$?; done
    t1="$(date +%s.%N)"
    if [ "$rc" != 0 ]; then
        echo "bench/smtp: smtp-source failed (exit $rc):" >&2
        cat "$work"/smtp-source.*.err | head -20 >&2
        return 1
    fi
    awk -v n="$((per_m * n))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", n / (b - a) }'
}

# Keeps the larger of two rates in best[$1].
keep_best() { best[$1]="$(awk -v a="${best[$1]:-0}" -v b="$2" 'BEGIN { print (b > a ? b : a) }')"; }

# Latency of a server (one or more targets); kept in latency[$1].
measure_latency() {
    local name=$1 out
    shift
    if ! out="$(timeout 600 python3 "$here/bench/smtp_latency.py" -c "$lat_sessions" -n "$lat_msgs" -s "$size" "$@")"; then
        echo "bench/smtp: smtp_latency.py against $name failed: $out" >&2
        return 1
    fi
    latency[$name]="$out"
    echo "  $name latency: $out"
}

# Waits (at most 30 s) for an SMTP greeting on $1:$2.
wait_smtp() {
    local i
    for i in $(seq 1 300); do
        timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 3 <&3" 2>/dev/null | grep -q 220 && return 0
        sleep 0.1
    done
    echo "bench/smtp: nothing greets on $1:$2" >&2
    return 1
}

# ---------------------------------------------------------------- Postfix
# `postfix -c DIR ARGS`. Postfix commands print errors on stderr only when
# it is a terminal (else to syslog or maillog_file, neither of which exists
# yet on a config error, so they would fail silently): give them a pty.
pfx() {
    if command -v script >/dev/null 2>&1; then
        script -qec "postfix -c $pf/etc $*" /dev/null
    else
        postfix -c "$pf/etc" "$@"
    fi
}

postfix_setup() {
    mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
    local compat=2
    # 3.6 is the level the current defaults belong to; older releases reject it.
    awk -v v="$(postconf -dh mail_version)" 'BEGIN { split(v, p, "."); exit !(p[1] > 3 || (p[1] == 3 && p[2] >= 6)) }' && compat=3.6
    cat > "$pf/etc/main.cf" <<EOT
# Private benchmark instance: its own config, queue and data directory;
# the system instance and /etc/postfix/main.cf are never used.
compatibility_level = $compat
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
# postlogd writes here (must be under maillog_file_prefixes, i.e. /var).
maillog_file = $pf/maillog
syslog_name = postfix-bench
# Not $pf_addr: Postfix insists that inet_interfaces addresses are configured
# on an interface, and lo carries only 127.0.0.1/8. master.cf binds the
# listener to $pf_addr:$smtp_port explicitly, which needs no such check.
inet_interfaces = loopback-only
inet_protocols = ipv4
# Fixed names: no DNS or hostname lookups at start (the net is loopback only).
myhostname = postfix.bench.invalid
mydomain = bench.invalid
myorigin = \$myhostname
append_dot_mydomain = no
biff = no
# Nothing is local: no aliases, no local recipients to look up.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
# Accept for bench.example from loopback clients; check the recipient like
# hamail does (its recipient table), with a built-in map (no postmap step).
relay_domains = bench.example
relay_recipient_maps = inline:{ $rcpt=ok }
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
# Mail for a relay domain goes through the "relay" transport, not "smtp":
# defer both, so that accepted mail stays in the queue and nothing leaves.
defer_transports = relay smtp
# No reverse DNS of clients: hamail does none, and with no resolver it could
# only stall.
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
# fsync of queue files stays on (the default); the point is durable acceptance.
EOT
    # Only the services accepting and queueing mail needs, none chrooted
    # (a chroot would need copies of /etc files in the queue directory).
    cat > "$pf/etc/master.cf" <<EOT
$pf_addr:$smtp_port inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
relay     unix  - - n - - smtp
smtp      unix  - - n - - smtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOT
    # Creates the queue subdirectories with their owners and modes
    # (maildrop and public are group postdrop), then starts the master.
    pfx set-permissions >/dev/null
    pfx check
    pf_started=1
    pfx start >/dev/null
    wait_smtp "$pf_addr" "$smtp_port"
}

# Messages in the private queue (incoming, active, deferred, hold): distinct
# queue IDs, not the "N Requests" total, which counts a message twice when
# qmgr moves it (incoming -> active -> deferred) while showq scans.
postfix_queued() {
    postqueue -c "$pf/etc" -p |
        awk '/^Mail queue is empty/ { next } /^[0-9A-Za-z]+[*!]?[ \t]/ { sub(/[*!]$/, "", $1); print $1 }' |
        sort -u | wc -l
}

# Empties the queue, so that each run starts alike: no backlog, and no
# deferral work of the previous run left to compete for the CPU. Repeated
# because postsuper can miss a message that qmgr moves (active -> deferred)
# while it scans.
postfix_empty_queue() {
    local i
    for i in $(seq 1 20); do
        postsuper -c "$pf/etc" -d ALL >/dev/null 2>&1 || true
        [ "$(postfix_queued)" = 0 ] && return 0
        sleep 0.5
    done
    echo "bench/smtp: WARNING: Postfix queue does not empty" >&2
}

bench_postfix() {
    echo "== Postfix $(postconf -dh mail_version), private instance on $pf_addr:$smtp_port"
    postfix_setup
    local run rate q
    for run in 1 2; do
        postfix_empty_queue
        rate="$(load "$pf_addr:$smtp_port")"
        q="$(postfix_queued)"
        echo "  run $run: $rate msg/s; queue holds $q messages (sent $msgs)"
        [ "$q" -ge $((msgs * 99 / 100)) ] || echo "  WARNING: Postfix queue holds $q, not ~$msgs: was the mail accepted?" >&2
        keep_best postfix "$rate"
    done
    postfix_empty_queue
    measure_latency postfix "$pf_addr:$smtp_port"
    echo "  queue after latency run: $(postfix_queued) messages (sent $lat_msgs)"
}

# ---------------------------------------------------------------- hamail
# ==== hamail node configuration: adjust HERE as the [smtp] section settles ====
# hamail_config DIR I BOOTSTRAP: node I (1-3) on 127.0.0.2I, SMTP on :2525,
# cluster RPC on :17500, DNS and metrics on ephemeral ports (unused here).
# [smtp] listen is a list, as in config/hamail.example.toml; hostname,
# mynetworks and tls are the keys of the SMTP work in progress.
hamail_config() {
    local dir=$1 i=$2 boot=$3
    mkdir -p "$dir"
    cat > "$dir/hamail.toml" <<EOT
[node]
name = "n$i"
site = "site$i"
data_dir = "$dir/data"
# Postfix logs every message too: same work on both sides.
log = "info,openraft=warn"

[cluster]
bootstrap = $boot
# Loopback "sites": short raft timeouts are safe (cluster/local-3node).
heartbeat_interval_ms = 50
election_timeout_min_ms = 300
election_timeout_max_ms = 600

[rpc]
listen = "127.0.0.2$i:$rpc_port"

[dns]
listen = ["127.0.0.2$i:0"]

[smtp]
listen = ["127.0.0.2$i:$smtp_port"]
submission_listen = ["127.0.0.2$i:1587"]
hostname = "n$i.hamail.bench.invalid"
mynetworks = ["127.0.0.0/8"]
# No STARTTLS, as on the Postfix side (neither load client would use it).
tls = false

[metrics]
listen = "127.0.0.2$i:0"
EOT
}
# ==== end of hamail node configuration ====

hcli() { local cfg=$1; shift; timeout 60 "$bin" --config "$cfg" "$@"; }

# Starts `hamail serve` on DIR/hamail.toml; waits (at most 30 s) until its
# admin socket answers.
hamail_start() {
    local dir=$1 pid i
    "$bin" --config "$dir/hamail.toml" serve 2>"$dir/serve.log" &
    pid=$!
    hamail_pids+=("$pid")
    hamail_dir[$pid]="$dir"
    for i in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench/smtp: hamail serve ($dir) exited:" >&2
            tail -20 "$dir/serve.log" >&2
            wait "$pid" 2>/dev/null || true
            unset 'hamail_pids[-1]'   # reaped: nothing for stop_hamail to do
            return 1
        fi
        hcli "$dir/hamail.toml" status --json >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench/smtp: hamail serve ($dir) does not answer status" >&2
    return 1
}

# Waits (at most 30 s) until the node knows a raft leader.
hamail_wait_leader() {
    local i
    for i in $(seq 1 300); do
        hcli "$1/hamail.toml" status --json 2>/dev/null | grep -q '"leader": [0-9]' && return 0
        sleep 0.1
    done
    echo "bench/smtp: hamail ($1) sees no leader" >&2
    return 1
}

# Waits (at most 30 s) until the node has applied the benchmark recipient.
hamail_wait_recipient() {
    local i
    for i in $(seq 1 300); do
        hcli "$1/hamail.toml" recipient list --json 2>/dev/null | grep -q "\"$rcpt\"" && return 0
        sleep 0.1
    done
    echo "bench/smtp: hamail ($1) never saw $rcpt" >&2
    return 1
}

# The same mail setup as the Postfix side: bench.example relayed, one known
# recipient (what relay_domains and relay_recipient_maps say there).
hamail_mail_setup() {
    hcli "$1/hamail.toml" domain add bench.example --kind relay >/dev/null
    hcli "$1/hamail.toml" recipient add "$rcpt" >/dev/null
}

# Messages in a node's queue table (its applied copy of the cluster queue).
hamail_queued() {
    hcli "$1/hamail.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tables"]["queue"])'
}

bench_hamail() { # NAME NODE_DIR TARGET...
    local name=$1 dir=$2 run rate q0 q1
    shift 2
    for run in 1 2; do
        q0="$(hamail_queued "$dir")"
        rate="$(load "$@")"
        # A follower may apply the last entries a moment after their 250.
        for _ in $(seq 1 50); do
            q1="$(hamail_queued "$dir")"
            [ "$((q1 - q0))" -lt "$msgs" ] || break
            sleep 0.2
        done
        echo "  run $run: $rate msg/s; queue grew by $((q1 - q0)) messages (sent $msgs)"
        [ "$((q1 - q0))" -ge "$msgs" ] || echo "  WARNING: hamail queued $((q1 - q0)), not $msgs" >&2
        keep_best "$name" "$rate"
    done
    measure_latency "$name" "$@"
}

bench_hamail_single() {
    echo "== hamail, one node on 127.0.0.21:$smtp_port"
    local d="$work/hamail1/n1"
    hamail_config "$d" 1 true
    hamail_start "$d"
    hamail_wait_leader "$d"
    hamail_mail_setup "$d"
    hamail_wait_recipient "$d"
    wait_smtp 127.0.0.21 "$smtp_port"
    bench_hamail hamail1 "$d" "127.0.0.21:$smtp_port"
    stop_hamail
}

bench_hamail_cluster() {
    echo "== hamail, three nodes on 127.0.0.21-23:$smtp_port, load spread over all three"
    local base="$work/hamail3" i token
    # All three wait; node 1 is made the cluster with `cluster init`, the
    # others join it with a token each (the runbook's commands).
    for i in 1 2 3; do
        hamail_config "$base/n$i" "$i" false
        hamail_start "$base/n$i"
    done
    hcli "$base/n1/hamail.toml" cluster init >/dev/null
    hamail_wait_leader "$base/n1"
    for i in 2 3; do
        token="$(hcli "$base/n1/hamail.toml" cluster token --ttl 10m)"
        hcli "$base/n$i/hamail.toml" cluster join "127.0.0.21:$rpc_port" --token "$token" >/dev/null
        hamail_wait_leader "$base/n$i"
    done
    hamail_mail_setup "$base/n1"
    for i in 1 2 3; do
        hamail_wait_recipient "$base/n$i"
        wait_smtp "127.0.0.2$i" "$smtp_port"
    done
    bench_hamail hamail3 "$base/n1" "127.0.0.21:$smtp_port" "127.0.0.22:$smtp_port" "127.0.0.23:$smtp_port"
    stop_hamail
}

# ---------------------------------------------------------------- run
echo "bench/smtp: smtp-source -s $sessions -m $msgs -l $size, best of 2; latency: $lat_sessions sessions, $lat_msgs messages; $(nproc) cores"
if run_postfix; then bench_postfix; fi
if run_hamail; then
    bench_hamail_single
    bench_hamail_cluster
fi

echo
printf "%-16s %12s %10s %10s %14s\n" server "msg/s(best)" p50_ms p99_ms "lat-run msg/s"
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$l"; }   # KEY=value out of $l
for name in postfix hamail1 hamail3; do
    [ -n "${best[$name]:-}" ] || continue
    l="${latency[$name]:-}"
    case $name in postfix) label="postfix" ;; hamail1) label="hamail 1 node" ;; hamail3) label="hamail 3 nodes" ;; esac
    printf "%-16s %12s %10s %10s %14s\n" "$label" "${best[$name]}" "$(field p50_ms)" "$(field p99_ms)" "$(field msgs_per_s)"
done
if [ -n "${best[postfix]:-}" ] && [ -n "${best[hamail1]:-}" ]; then
    awk -v p="${best[postfix]}" -v h1="${best[hamail1]}" -v h3="${best[hamail3]:-0}" \
        'BEGIN { printf "ratio hamail-1node/postfix %.2f   hamail-3node/postfix %.2f\n", h1 / p, h3 / p }'
fi
