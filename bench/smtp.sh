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
# (RPC on :17500), as bench/relay.sh: run one at a time. Work files in
# /var/tmp/hamail-bench-smtp.XXXXXX, removed on exit. Needs root (Postfix
# runs its daemons as the postfix user). Shared parts: bench/lib-mta.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="bench/smtp"
# shellcheck source=bench/lib-mta.sh
. "$here/bench/lib-mta.sh"

lat_msgs="${LAT_MSGS:-2000}"
lat_sessions="${LAT_SESSIONS:-50}"

mta_prepare

declare -A latency   # name -> smtp_latency.py output line

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

# ---------------------------------------------------------------- Postfix
bench_postfix() {
    echo "== Postfix $(postconf -dh mail_version), private instance on $pf_addr:$smtp_port"
    # Mail for a relay domain goes through the "relay" transport, not
    # "smtp": defer both, so that accepted mail stays in the queue and
    # nothing leaves.
    postfix_setup "defer_transports = relay smtp"
    local run rate q
    for run in 1 2; do
        postfix_empty_queue
        rate="$(load "$pf_addr:$smtp_port")"
        q="$(postfix_queued)"
        echo "  run $run: $rate msg/s; queue holds $q messages (sent $msgs)"
        # A figure for mail that was not taken is no figure: fail the run.
        [ "$q" -ge $((msgs * 99 / 100)) ] || { echo "bench/smtp: FAILED: Postfix queue holds $q, not ~$msgs: the mail was not accepted" >&2; exit 1; }
        keep_best postfix "$rate"
    done
    postfix_empty_queue
    measure_latency postfix "$pf_addr:$smtp_port"
    echo "  queue after latency run: $(postfix_queued) messages (sent $lat_msgs)"
}

# ---------------------------------------------------------------- hamail
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
        [ "$((q1 - q0))" -ge "$msgs" ] || { echo "bench/smtp: FAILED: hamail queued $((q1 - q0)), not $msgs" >&2; exit 1; }
        keep_best "$name" "$rate"
    done
    measure_latency "$name" "$@"
}

bench_hamail_single() {
    echo "== hamail, one node on 127.0.0.21:$smtp_port"
    local d="$work/hamail1/n1"
    hamail_single_up "$d"
    bench_hamail hamail1 "$d" "$single_target"
    stop_hamail
}

bench_hamail_cluster() {
    echo "== hamail, three nodes on 127.0.0.21-23:$smtp_port, load spread over all three"
    local base="$work/hamail3"
    hamail_cluster_up "$base"
    bench_hamail hamail3 "$base/n1" "${cluster_targets[@]}"
    stop_hamail
}

# ---------------------------------------------------------------- run
echo "bench/smtp: smtp-source -s $sessions -m $msgs -l $size, best of 2; latency: $lat_sessions sessions, $lat_msgs messages; $(nproc) cores"
mta_run_all

echo
printf "%-16s %12s %10s %10s %14s\n" server "msg/s(best)" p50_ms p99_ms "lat-run msg/s"
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$l"; }   # KEY=value out of $l
for name in postfix hamail1 hamail3; do
    [ -n "${best[$name]:-}" ] || continue
    l="${latency[$name]:-}"
    label="$(server_label "$name")"
    printf "%-16s %12s %10s %10s %14s\n" "$label" "${best[$name]}" "$(field p50_ms)" "$(field p99_ms)" "$(field msgs_per_s)"
done
if [ -n "${best[postfix]:-}" ] && [ -n "${best[hamail1]:-}" ]; then
    awk -v p="${best[postfix]}" -v h1="${best[hamail1]}" -v h3="${best[hamail3]:-0}" \
        'BEGIN { printf "ratio hamail-1node/postfix %.2f   hamail-3node/postfix %.2f\n", h1 / p, h3 / p }'
fi
