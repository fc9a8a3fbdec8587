#!/usr/bin/env bash
# bench/relay: end-to-end relay throughput, smtp-source -> MTA -> smtp-sink,
# of a private Postfix instance beside hamail on one node and on a
# three-node local cluster, in one run, with the same load: smtp-source,
# 50 sessions, 5000 messages of 4 KB, best of two runs each. The rate is
# messages DELIVERED: messages the sink received / time from the start of
# the load until the sink has received the last of them. So it includes
# what happens after the 250 (Postfix: qmgr picking the mail up; hamail:
# its delivery side), not only acceptance (that is bench/smtp.sh).
#
# Usage: bench/relay.sh
#   ONLY, HAMAIL_BIN, MSGS, SESSIONS, SIZE   as for bench/smtp.sh
#   DELIVER_WAIT=600     seconds to wait, after the load ends, for the sink
#                        to have every message; past that the run is
#                        reported INCOMPLETE with the count reached
#   POLICY=1             content policy on both MTAs (issue 15's speed goal):
#                        a header_checks table of RULES (default 1000)
#                        regexp rules that match no message of the load, and
#                        one milter, tests/support/test_milter.py (pymilter
#                        over the real libmilter), which adds a header to
#                        every message. Postfix: header_checks =
#                        regexp:FILE, smtpd_milters; hamail: `hamail checks
#                        import header FILE` (replicated) and [smtp] milters.
# Exit status 0 when every run delivered everything, 1 when one did not.
#
# The final destination is smtp-sink (from the postfix package) on
# 127.0.0.30:2526, restarted for each run; `-c` makes it print running
# counters (sess= quit= mesg=, mesg counting each message's final ".")
# to its stdout, a file here, whose last complete record is the count.
# Both MTAs route bench.example to it: Postfix by transport_maps, hamail by
# `hamail transport set`. Addresses: Postfix on 127.0.0.20:2525, hamail on
# 127.0.0.21-23:2525 (RPC on :17500), as bench/smtp.sh: run one at a time.
# Work files in /var/tmp/hamail-bench-relay.XXXXXX, removed on exit. Needs
# root. Shared parts: bench/lib-mta.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="bench/relay"
sink_addr="127.0.0.30"
sink_port=2526
# The hamail side's route to the sink (Postfix transport_maps syntax).
hamail_transport="smtp:[$sink_addr]:$sink_port"
# shellcheck source=bench/lib-mta.sh
. "$here/bench/lib-mta.sh"

deliver_wait="${DELIVER_WAIT:-600}"
case "$deliver_wait" in "" | *[!0-9]*) echo "$bench: DELIVER_WAIT must be a number of seconds" >&2; exit 2 ;; esac
policy="${POLICY:-}"
case "$policy" in "" | 0 | 1) ;; *) echo "$bench: POLICY must be 1 (content policy on) or 0" >&2; exit 2 ;; esac
[ "$policy" != 0 ] || policy=""
rules="${RULES:-1000}"
case "$rules" in "" | *[!0-9]* | 0) echo "$bench: RULES must be a positive number of rules" >&2; exit 2 ;; esac
milter_port=18590
if [ -n "$policy" ]; then
    hamail_smtp_extra="milters = [\"inet:127.0.0.1:$milter_port\"]
milter_default_action = \"tempfail\""
fi

mta_prepare

# ---------------------------------------------------------------- content policy
# The header_checks table both MTAs load: RULES rules over the headers a
# message of smtp-source has (From, To, Subject, Date, Message-Id) and
# others, each with a distinct pattern, none matching the load (its Subject
# is "test"), so every rule is tried on every header of every message. A mix
# of actions, as a real table has.
policy_table() {
    local f="$work/header_checks" i
    : > "$f"
    for ((i = 1; i <= rules; i++)); do
        case $((i % 5)) in
            0) echo "/^Subject:.*cheap-pills-$i\$/ REJECT Spam rule $i" ;;
            1) echo "/^From:.*@spam-$i\\.example>?\$/ REJECT Sender rule $i" ;;
            2) echo "/^X-Mailer: bulk-mailer-$i( |\$)/ DISCARD" ;;
            3) echo "/^Content-Type:.*name=\"?[^\"]*\\.(exe|scr)-$i\"?/ REJECT Attachment rule $i" ;;
            4) echo "/^Received: from unknown-$i\\b/ WARN rule $i" ;;
        esac
    done >> "$f"
    chmod 644 "$f"
}

# The milter, for the whole run (both MTAs, one after the other): pymilter's
# libmilter, one thread per connection.
milter_start() {
    local i
    /usr/bin/python3 -c 'import Milter' 2>/dev/null || apt_get python3-milter
    timeout 7200 /usr/bin/python3 "$here/tests/support/test_milter.py" bench "inet:$milter_port@127.0.0.1" \
        >"$work/milter.log" 2>&1 &
    helper_pids+=("$!")
    for i in $(seq 1 100); do
        timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$milter_port" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$bench: the test milter does not listen on 127.0.0.1:$milter_port" >&2
    cat "$work/milter.log" >&2
    exit 1
}

# Proves the policy is on for an MTA before it is timed: on each target, a
# message whose Subject one header_checks rule rejects, and one the milter
# rejects ("reject-code"), must both be refused with 550.
policy_probe() {
    local t
    for t in "$@"; do
        /usr/bin/python3 - "$t" "$sender" "$rcpt" <<'PY' || { echo "$bench: content policy is not in force on $t" >&2; exit 1; }
import smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
for subject, who in (("cheap-pills-5", "header_checks"), ("reject-code", "the milter")):
    msg = f"From: <{sys.argv[2]}>\r\nTo: <{sys.argv[3]}>\r\nSubject: {subject}\r\n\r\nprobe\r\n"
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        try:
            s.sendmail(sys.argv[2], [sys.argv[3]], msg)
        except smtplib.SMTPDataError as e:
            if e.smtp_code == 550:
                continue
            sys.exit(f"{host}:{port}: {who}: {e.smtp_code} {e.smtp_error!r}")
        sys.exit(f"{host}:{port}: {who} let the probe through")
PY
    done
    echo "  policy in force on $*: header_checks and the milter each refused their probe"
}

if [ -n "$policy" ]; then
    policy_table
    milter_start
    # hamail_mail_setup imports it on the node that sets mail up.
    hamail_header_checks="$work/header_checks"
fi

declare -A complete   # name -> "K/2" runs that delivered everything
declare -A reached    # name -> most messages delivered in an incomplete run
incomplete_runs=0

# ---------------------------------------------------------------- smtp-sink
sink_pid=""
sink_out=""
sink_runs=0

# A new sink, so its count starts at 0. Event-driven; up to 1000 sessions at
# once and a backlog of 1024, far above what either MTA opens (Postfix: 20
# per destination), so it is never what waits. Bounded by timeout in case
# this script is killed before its cleanup runs. As root it needs -u.
sink_start() {
    sink_runs=$((sink_runs + 1))
    sink_out="$work/sink.$sink_runs.out"
    timeout $((600 + deliver_wait + 120)) /usr/sbin/smtp-sink -4 -c -u nobody -m 1000 \
        "$sink_addr:$sink_port" 1024 >"$sink_out" 2>"$work/sink.$sink_runs.err" &
    sink_pid=$!
    helper_pids+=("$sink_pid")
    wait_smtp "$sink_addr" "$sink_port"
}

sink_stop() { [ -z "$sink_pid" ] || stop_helper "$sink_pid"; sink_pid=""; }

# Messages the sink has received: the mesg= of the last record that is
# complete (records end in a carriage return; the one being written may not).
sink_count() {
    local s
    s="$(tail -c 256 "$sink_out" 2>/dev/null)" || s=""
    case $s in *$'\r'*) ;; *) echo 0; return ;; esac
    s="${s%$'\r'*}"
    s="${s##*mesg=}"
    case $s in "" | *[!0-9]*) echo 0 ;; *) echo "$s" ;; esac
}

# ---------------------------------------------------------------- runs
# relay_runs NAME RESET LEFT TARGET...: two runs of the load over the
# targets, each against a fresh sink after RESET (empties the MTA's queue);
# LEFT prints what the MTA still holds (reported when a run is incomplete).
# Keeps the best delivered rate of the complete runs in best[NAME], the best
# acceptance rate (smtp-source's own) in best[NAME/acc].
relay_runs() {
    local name=$1 reset=$2 left=$3 run total t0 t1 acc n last changed report now ended done_runs=0
    shift 3
    total="$(load_total $#)"
    reached[$name]=0
    [ -z "$policy" ] || policy_probe "$@"
    for run in 1 2; do
        "$reset"
        sink_start
        t0=${EPOCHREALTIME/,/.}   # the locale may write a decimal comma
        acc="$(load "$@")"
        ended=$SECONDS
        keep_best "$name/acc" "$acc"
        # Poll the count every 50 ms until all are in or deliver_wait s
        # pass after the load; say so every 10 s without progress.
        last=-1
        changed=$SECONDS
        report=$((SECONDS + 10))
        while :; do
            n="$(sink_count)"
            t1=${EPOCHREALTIME/,/.}
            [ "$n" -lt "$total" ] || break
            now=$SECONDS
            if [ "$n" != "$last" ]; then
                last=$n changed=$now report=$((now + 10))
            elif [ "$now" -ge "$report" ]; then
                echo "  ... $n of $total delivered, none for $((now - changed)) s" >&2
                report=$((now + 10))
            fi
            [ "$((now - ended))" -lt "$deliver_wait" ] || break
            sleep 0.05
        done
        sink_stop
        if [ "$n" -ge "$total" ]; then
            t1="$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f %.1f", b - a, n / (b - a) }')"
            echo "  run $run: $n delivered in ${t1% *} s: ${t1#* } msg/s delivered (accepted at $acc msg/s)"
            keep_best "$name" "${t1#* }"
            done_runs=$((done_runs + 1))
        else
            echo "  run $run: INCOMPLETE: $n of $total delivered, $deliver_wait s after the load ended (accepted at $acc msg/s; the MTA still holds $("$left") messages)"
            [ "$n" -le "${reached[$name]}" ] || reached[$name]=$n
            incomplete_runs=$((incomplete_runs + 1))
        fi
    done
    complete[$name]="$done_runs/2"
}

# ---------------------------------------------------------------- Postfix
bench_postfix() {
    echo "== Postfix $(postconf -dh mail_version), private instance on $pf_addr:$smtp_port, relaying to smtp-sink"
    # Mail leaves: no defer_transports. bench.example goes by the smtp
    # transport straight to the sink (no MX lookup for a [literal]), at the
    # default concurrency (default_destination_concurrency_limit, 20).
    local extra="transport_maps = inline:{ bench.example=smtp:[$sink_addr]:$sink_port }"
    [ -z "$policy" ] || extra="$extra
header_checks = regexp:$work/header_checks
smtpd_milters = inet:127.0.0.1:$milter_port
milter_default_action = tempfail"
    postfix_setup "$extra"
    relay_runs postfix postfix_empty_queue postfix_queued "$pf_addr:$smtp_port"
}

# ---------------------------------------------------------------- hamail
hnode=""   # the node whose CLI empties and counts the (cluster's) queue
hamail_delete_all() { hcli "$hnode/hamail.toml" queue delete --all; }
hamail_left() { hamail_queued "$hnode"; }
hamail_empty_queue() { empty_queue hamail hamail_delete_all hamail_left; }

bench_hamail_single() {
    echo "== hamail, one node on 127.0.0.21:$smtp_port, relaying to smtp-sink"
    hnode="$work/hamail1/n1"
    hamail_single_up "$hnode"
    relay_runs hamail1 hamail_empty_queue hamail_left "$single_target"
    stop_hamail
}

bench_hamail_cluster() {
    echo "== hamail, three nodes on 127.0.0.21-23:$smtp_port, load spread over all three, relaying to smtp-sink"
    hnode="$work/hamail3/n1"
    hamail_cluster_up "$work/hamail3"
    relay_runs hamail3 hamail_empty_queue hamail_left "${cluster_targets[@]}"
    stop_hamail
}

# ---------------------------------------------------------------- run
echo "bench/relay: smtp-source -s $sessions -m $msgs -l $size -> MTA -> smtp-sink $sink_addr:$sink_port, best of 2; delivery wait ${deliver_wait} s; $(nproc) cores"
[ -z "$policy" ] || echo "bench/relay: content policy on both MTAs: header_checks of $rules rules, one milter (test_milter.py on 127.0.0.1:$milter_port)"
mta_run_all

echo
printf "%-16s %18s %17s %9s\n" server "delivered msg/s" "accepted msg/s" complete
for name in postfix hamail1 hamail3; do
    [ -n "${complete[$name]:-}" ] || continue
    rate="${best[$name]:-}"
    [ -n "$rate" ] || rate="INCOMPLETE(${reached[$name]})"
    printf "%-16s %18s %17s %9s\n" "$(server_label "$name")" "$rate" "${best[$name/acc]}" "${complete[$name]}"
done
# hamail's delivered rate over Postfix's; n/a unless both completed a run.
ratio() {
    if [ -n "${best[$1]:-}" ] && [ -n "${best[postfix]:-}" ]; then
        awk -v h="${best[$1]}" -v p="${best[postfix]}" 'BEGIN { printf "%.2f", h / p }'
    else
        echo "n/a"
    fi
}
if run_postfix && run_hamail; then
    echo "ratio hamail-1node/postfix $(ratio hamail1)   hamail-3node/postfix $(ratio hamail3)"
fi
if [ "$incomplete_runs" != 0 ]; then
    echo "$bench: $incomplete_runs run(s) did not deliver every message within ${deliver_wait} s" >&2
    exit 1
fi
