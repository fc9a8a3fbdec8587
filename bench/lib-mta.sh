# shellcheck shell=bash
# bench/lib-mta.sh: what bench/smtp.sh and bench/relay.sh share, sourced by
# both: settings, package install, the hamail binary, the work directory and
# its cleanup, the private Postfix instance (tests/support/postfix-dest.sh
# sets it up), hamail nodes (config, start, stop, one node or a three-node
# cluster) and the smtp-source load.
#
# The sourcing script sets first:
#   here    the repository root
#   bench   its name in messages ("bench/smtp"); also names the work dir
# and may set, before calling the functions that read them:
#   hamail_transport   a transport for bench.example on the hamail side
#                      (`hamail transport set`); empty: none
#   hamail_extra_config  lines appended to every node's hamail.toml
#   hamail_smtp_extra    lines added to every node's [smtp] section
#   hamail_header_checks a Postfix regexp table hamail_mail_setup imports
#                        (`hamail checks import header`); empty: none
# then calls mta_prepare (packages, binary, work dir, cleanup trap).
#
# Addresses, the same for both scripts (never run two at once): Postfix on
# 127.0.0.20:2525, hamail on 127.0.0.21-23:2525 (RPC on :17500). Needs root
# (Postfix runs its daemons as the postfix user).

: "${here:?set by the sourcing script}" "${bench:?set by the sourcing script}"
only="${ONLY:-}"
case "$only" in "" | postfix | hamail) ;; *) echo "$bench: ONLY must be postfix or hamail" >&2; exit 2 ;; esac
msgs="${MSGS:-5000}"
sessions="${SESSIONS:-50}"
size="${SIZE:-4096}"
sender="sender@client.example"
rcpt="rcpt@bench.example"
pf_addr="127.0.0.20"
smtp_port=2525
rpc_port=17500
bin="${HAMAIL_BIN:-}"
hamail_transport="${hamail_transport:-}"
# Mail with no transport must not go looking for MX records on the real
# network (the machine is loopback only): by default it is deferred to a
# closed loopback port.
hamail_extra_config="${hamail_extra_config-[delivery]
resolver = \"127.0.0.1:9\"
relayhost = \"[127.0.0.1]:9\"}"
# Raft timing lines for [cluster] (loopback "sites" by default), the DNS
# port, and a port to advertise for RPC (bench/geo puts a proxy there).
hamail_cluster_timing="${hamail_cluster_timing-heartbeat_interval_ms = 50
election_timeout_min_ms = 300
election_timeout_max_ms = 600}"
hamail_dns_port="${hamail_dns_port:-0}"
hamail_smtp_extra="${hamail_smtp_extra:-}"
hamail_header_checks="${hamail_header_checks:-}"
hamail_advertise_port="${hamail_advertise_port:-}"
run_postfix() { [ "$only" != hamail ]; }
run_hamail() { [ "$only" != postfix ]; }

[ "$(id -u)" = 0 ] || { echo "$bench: run as root (private Postfix needs it)" >&2; exit 1; }

# ---------------------------------------------------------------- packages
apt_get() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" >/dev/null; }
}

mta_packages() {
    if [ ! -x /usr/sbin/smtp-source ] || ! command -v postfix >/dev/null 2>&1; then
        echo "$bench: installing postfix (for smtp-source and the baseline)" >&2
        # "No configuration": no /etc/postfix/main.cf, and the system instance
        # is not started; only our private instance below runs.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        apt_get postfix
    fi
    command -v python3 >/dev/null 2>&1 || apt_get python3
}

# ---------------------------------------------------------------- hamail binary
mta_hamail_binary() {
    run_hamail || return 0
    if [ -z "$bin" ]; then
        # shellcheck source=scripts/deps.sh
        . "$here/scripts/deps.sh"   # clang for RocksDB; CARGO_TARGET_DIR
        # The optimized build scripts/run serves (release profile).
        release_build
        bin="$CARGO_TARGET_DIR/release/hamail"
    fi
    if [ ! -x "$bin" ]; then
        echo "$bench: no hamail binary at $bin" >&2
        exit 1
    fi
    case "$bin" in
        */release/*) echo "$bench: hamail $bin (release profile)" ;;
        */debug/*) echo "$bench: hamail $bin (dev profile: figures are not comparable)" ;;
        *) echo "$bench: hamail $bin" ;;
    esac
}

# ---------------------------------------------------------------- work dir, cleanup
pf_started=""
hamail_pids=()
declare -A hamail_dir   # pid -> node directory (for its log)
helper_pids=()          # other background processes of the script (smtp-sink)

# Waits up to $2 deciseconds for process $1 to exit.
wait_gone() { local i; for i in $(seq 1 "$2"); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }

# SIGTERM to every hamail node started, then reap them; an unclean exit is
# reported with the end of its log (the work directory is removed after).
stop_hamail() {
    local p s
    for p in "${hamail_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${hamail_pids[@]}"; do
        wait_gone "$p" 200 || { echo "$bench: hamail pid $p ignores SIGTERM, killing it" >&2; kill -KILL "$p" 2>/dev/null || true; }
        s=0
        wait "$p" 2>/dev/null || s=$?
        if [ "$s" != 0 ]; then
            echo "$bench: WARNING: hamail ${hamail_dir[$p]} (pid $p) exited with status $s; its log ends:" >&2
            tail -5 "${hamail_dir[$p]}/serve.log" >&2 || true
        fi
    done
    hamail_pids=()
}

# SIGTERM to process $1 (one of helper_pids), then reap it.
stop_helper() {
    local p=$1 q rest=()
    kill -TERM "$p" 2>/dev/null || true
    wait_gone "$p" 50 || kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${helper_pids[@]}"; do [ "$q" = "$p" ] || rest+=("$q"); done
    helper_pids=("${rest[@]}")
}

cleanup() {
    local p
    stop_hamail
    for p in "${helper_pids[@]}"; do stop_helper "$p"; done
    # Waits for the master and its children to be gone before the queue is
    # removed under them.
    [ -z "$pf_started" ] || bash "$postfix_dest" stop "$pf" >/dev/null || true
    rm -rf "$work"
}

# Packages, the hamail binary (when hamail runs), the work directory
# (/var/tmp/hamail-bench-NAME.XXXXXX, removed on exit) and the cleanup trap.
mta_prepare() {
    mta_packages
    mta_hamail_binary
    work="$(mktemp -d "/var/tmp/hamail-bench-${bench#bench/}.XXXXXX")"
    # mktemp makes it 0700; Postfix daemons run as the postfix user and must
    # reach the queue and log below it.
    chmod 755 "$work"
    pf="$work/postfix"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# ---------------------------------------------------------------- load
declare -A best      # name -> best msg/s

# Messages that load sends over $1 targets: MSGS split evenly, rounded up.
load_total() { echo $(( (msgs + $1 - 1) / $1 * $1 )); }

# smtp-source load over one or more HOST:PORT targets in parallel: MSGS
# messages and SESSIONS sessions split evenly between them. smtp-source
# opens a new connection per message (no -d), as most MTAs sending to an MX
# do. Prints msg/s = messages sent / wall time of the slowest.
load() {
    local per_m=$(( (msgs + $# - 1) / $# )) per_s=$(( (sessions + $# - 1) / $# ))
    local t0 t1 t pids=() rc=0 i=0 total
    total="$(load_total $#)"
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
        echo "$bench: smtp-source failed (exit $rc):" >&2
        cat "$work"/smtp-source.*.err | head -20 >&2
        return 1
    fi
    awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", n / (b - a) }'
}

# Keeps the larger of two rates in best[$1].
keep_best() { best[$1]="$(awk -v a="${best[$1]:-0}" -v b="$2" 'BEGIN { print (b > a ? b : a) }')"; }

# The summary's name of a server.
server_label() {
    case $1 in postfix) echo "postfix" ;; hamail1) echo "hamail 1 node" ;; hamail3) echo "hamail 3 nodes" ;; *) echo "$1" ;; esac
}

# Waits (at most 30 s) for an SMTP greeting on $1:$2.
wait_smtp() {
    local i
    for i in $(seq 1 300); do
        timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 3 <&3" 2>/dev/null | grep -q 220 && return 0
        sleep 0.1
    done
    echo "$bench: nothing greets on $1:$2" >&2
    return 1
}

# ---------------------------------------------------------------- Postfix
# The baseline is the tests' own private instance (tests/support/
# postfix-dest.sh) in $pf, as a relay MX for bench.example whose only
# recipient is $rcpt: relay_domains and relay_recipient_maps, what hamail's
# domain and recipient tables say on the other side. Its queue files are
# fsynced (Postfix's default): the point is durable acceptance.
postfix_dest="$here/tests/support/postfix-dest.sh"

# postfix_setup [EXTRA]: starts the instance on $pf_addr:$smtp_port with the
# lines EXTRA added to its main.cf (what mail does once accepted: deferred,
# or relayed); returns once it greets.
postfix_setup() {
    pf_started=1
    PF_RELAY_RECIPIENTS="$rcpt" PF_MAIN_CF="${1:-}" \
        bash "$postfix_dest" start "$pf" "$pf_addr:$smtp_port" bench.example >/dev/null
}

# Messages in the private queue (incoming, active, deferred, hold): distinct
# queue IDs, not the "N Requests" total, which counts a message twice when
# qmgr moves it (incoming -> active -> deferred) while showq scans.
postfix_queued() {
    postqueue -c "$pf/etc" -p |
        awk '/^Mail queue is empty/ { next } /^[0-9A-Za-z]+[*!]?[ \t]/ { sub(/[*!]$/, "", $1); print $1 }' |
        sort -u | wc -l
}

# empty_queue WHAT DELETE COUNT...: runs the command DELETE until the
# command COUNT... prints 0, at most 20 times 0.5 s apart, so that each run
# starts alike: no backlog, and no deferral or delivery work of the previous
# run left to compete for the CPU. Repeated because a delete can miss a
# message that moves (Postfix: active -> deferred) while it scans.
empty_queue() {
    local what=$1 delete=$2 i
    shift 2
    for i in $(seq 1 20); do
        "$delete" >/dev/null 2>&1 || true
        [ "$("$@")" = 0 ] && return 0
        sleep 0.5
    done
    echo "$bench: WARNING: $what queue does not empty" >&2
}

postfix_delete_all() { postsuper -c "$pf/etc" -d ALL; }
postfix_empty_queue() { empty_queue Postfix postfix_delete_all postfix_queued; }

# ---------------------------------------------------------------- hamail
# ==== hamail node configuration: adjust HERE as the [smtp] section settles ====
# hamail_config DIR I BOOTSTRAP: node I (1-3) on 127.0.0.2I, SMTP on :2525,
# cluster RPC on :17500, DNS and metrics on ephemeral ports (unused here).
# [smtp] listen is a list, as in config/hamail.example.toml; hostname,
# mynetworks and tls are the keys of the SMTP work in progress. No
# [delivery] section: its defaults (opportunistic TLS) suit smtp-sink,
# which offers no STARTTLS; a script can add one in hamail_extra_config.
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
$hamail_cluster_timing

[rpc]
listen = "127.0.0.2$i:$rpc_port"
$([ -z "$hamail_advertise_port" ] || echo "advertise = \"127.0.0.2$i:$hamail_advertise_port\"")

[dns]
listen = ["127.0.0.2$i:$hamail_dns_port"]

[smtp]
listen = ["127.0.0.2$i:$smtp_port"]
hostname = "n$i.hamail.bench.invalid"
mynetworks = ["127.0.0.0/8"]
# No STARTTLS, as on the Postfix side (neither load client would use it),
# and so no submission (it needs TLS); bench/submission.sh sets its own.
tls = false
submission_listen = []
submissions_listen = []
$hamail_smtp_extra

[metrics]
listen = "127.0.0.2$i:0"
EOT
    [ -z "$hamail_extra_config" ] || printf '\n%s\n' "$hamail_extra_config" >> "$dir/hamail.toml"
}
# ==== end of hamail node configuration ====

hcli() { local cfg=$1; shift; timeout 60 "$bin" --config "$cfg" "$@"; }

# SMTP targets of the load: one node, and all three of the cluster.
# shellcheck disable=SC2034  # used by the sourcing scripts
single_target="127.0.0.21:$smtp_port"
# shellcheck disable=SC2034
cluster_targets=("127.0.0.21:$smtp_port" "127.0.0.22:$smtp_port" "127.0.0.23:$smtp_port")

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
            echo "$bench: hamail serve ($dir) exited:" >&2
            tail -20 "$dir/serve.log" >&2
            wait "$pid" 2>/dev/null || true
            unset 'hamail_pids[-1]'   # reaped: nothing for stop_hamail to do
            return 1
        fi
        hcli "$dir/hamail.toml" status --json >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$bench: hamail serve ($dir) does not answer status" >&2
    return 1
}

# Polls (at most 30 s, every 0.1 s) until PATTERN shows in the output of
# `hamail ARGS...` on node DIR; else says WHAT did not happen.
hamail_poll() { # DIR PATTERN WHAT ARGS...
    local dir=$1 pattern=$2 what=$3 i
    shift 3
    for i in $(seq 1 300); do
        hcli "$dir/hamail.toml" "$@" 2>/dev/null | grep -q "$pattern" && return 0
        sleep 0.1
    done
    echo "$bench: hamail ($dir) $what" >&2
    return 1
}

# Waits until the node knows a raft leader.
hamail_wait_leader() { hamail_poll "$1" '"leader": [0-9]' "sees no leader" status --json; }

# Waits until the node has applied the benchmark recipient.
hamail_wait_recipient() { hamail_poll "$1" "\"$rcpt\"" "never saw $rcpt" recipient list --json; }

# The same mail setup as the Postfix side: bench.example relayed, one known
# recipient (what relay_domains and relay_recipient_maps say there), and
# hamail_transport as its transport when set (transport_maps there). The
# recipient goes last: a node that has it has applied the rest.
hamail_mail_setup() {
    hcli "$1/hamail.toml" domain add bench.example --kind relay >/dev/null
    [ -z "$hamail_transport" ] || hcli "$1/hamail.toml" transport set bench.example "$hamail_transport" >/dev/null
    [ -z "$hamail_header_checks" ] || hcli "$1/hamail.toml" checks import header "$hamail_header_checks" >/dev/null
    hcli "$1/hamail.toml" recipient add "$rcpt" >/dev/null
}

# Messages in a node's queue table (its applied copy of the cluster queue).
hamail_queued() {
    hcli "$1/hamail.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tables"]["queue"])'
}

# hamail_single_up DIR: one node in DIR, bootstrapped, mail set up, greeting.
hamail_single_up() {
    local d=$1
    hamail_config "$d" 1 true
    hamail_start "$d"
    hamail_wait_leader "$d"
    hamail_mail_setup "$d"
    hamail_wait_recipient "$d"
    wait_smtp 127.0.0.21 "$smtp_port"
}

# hamail_cluster_up BASE: three nodes in BASE/n1..n3. All three wait; node 1
# is made the cluster with `cluster init`, the others join it with a token
# each (the runbook's commands). Then mail set up, seen by all, greetings.
hamail_cluster_up() {
    local base=$1 i token
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
}

# Runs the sourcing script's bench_postfix, bench_hamail_single and
# bench_hamail_cluster, as ONLY says.
mta_run_all() {
    if run_postfix; then bench_postfix; fi
    if run_hamail; then
        bench_hamail_single
        bench_hamail_cluster
    fi
}
