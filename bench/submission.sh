#!/usr/bin/env bash
# bench/submission: mail submission by authenticated users (port 587:
# STARTTLS, AUTH PLAIN) of Postfix + Dovecot SASL beside hamail on one node,
# in one run, with the same load and the same password hash, each relaying
# to smtp-sink. Two figures per server, from bench/src/submission.rs
# (submission-bench):
#   msg/s     SESSIONS sessions at once, each STARTTLS, AUTH PLAIN once,
#             MSGS_PER_SESSION messages of SIZE bytes, QUIT; ROUNDS rounds
#             (SESSIONS x ROUNDS sessions in all): messages answered 250
#             per second of the whole run;
#   logins/s  LOGINS sessions, SESSIONS at once, each STARTTLS, AUTH PLAIN,
#             ONE message, QUIT: successful AUTHs per second.
# A reply other than the expected one (any 4xx/5xx) is a failure: it is
# counted and shown (with the server's log), never counted as sent, and
# makes the script exit 1 after the table.
#
# Usage: bench/submission.sh
#   ONLY=postfix|hamail  run one side only (default: both, with ratios)
#   HAMAIL_BIN=PATH      a prebuilt hamail (default: the release build)
#   SESSIONS=50 MSGS_PER_SESSION=20 SIZE=4096 ROUNDS=5 LOGINS=500
#   HASH=ARGON2ID|SHA512-CRYPT   the stored scheme (default ARGON2ID)
#   AUTH_CACHE_TTL=0     the auth cache's lifetime in seconds on BOTH sides:
#                        hamail's auth_cache_ttl_secs and Dovecot's
#                        auth_cache_ttl (with auth_cache_size = 10M); 0,
#                        the default, is Dovecot's default (no cache), so
#                        both verify the hash at every login
#
# The password hash: one `doveadm pw -s $HASH` string, the same in Dovecot's
# passwd-file (tests/support/dovecot-auth.sh, AUTH_USERS_FILE) and in
# hamail's user table (`hamail user import` of the same file), so both
# verify the same scheme at the same cost. ARGON2ID is Dovecot 2.3's
# m=64 MiB, t=3, p=1, which hamail keeps as current (no rehash at login);
# hamail would re-hash an imported SHA512-CRYPT to Argon2id at the first
# login, so HASH=SHA512-CRYPT compares different costs after that.
# The TLS certificate: one self-signed RSA-2048 key and certificate
# (openssl) for both. The load client does no TLS session resumption.
#
# Addresses: Postfix submission on 127.0.0.20:1587 (its relay MX listener,
# unused, on :2525), hamail submission on 127.0.0.21:1587 (SMTP :2525, RPC
# :17500), smtp-sink on 127.0.0.30:2526; as the other MTA benches: run one
# at a time. Work files in /var/tmp/hamail-bench-submission.XXXXXX, removed
# on exit. Needs root. Shared parts: bench/lib-mta.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="bench/submission"
sink_addr="127.0.0.30"
sink_port=2526
sub_port=1587
# The hamail side's route to the sink (Postfix transport_maps syntax).
hamail_transport="smtp:[$sink_addr]:$sink_port"
# shellcheck source=bench/lib-mta.sh
. "$here/bench/lib-mta.sh"

num() { # NAME VALUE MIN MAX: VALUE, an integer in [MIN, MAX], else exit 2
    case $2 in "" | *[!0-9]*) echo "$bench: $1 must be a number, not '$2'" >&2; exit 2 ;; esac
    [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || { echo "$bench: $1 must be $3 to $4, not $2" >&2; exit 2; }
    echo "$2"
}
sessions="$(num SESSIONS "$sessions" 1 1000)"
size="$(num SIZE "$size" 256 10485760)"
per_session="$(num MSGS_PER_SESSION "${MSGS_PER_SESSION:-20}" 1 10000)"
rounds="$(num ROUNDS "${ROUNDS:-5}" 1 1000)"
logins="$(num LOGINS "${LOGINS:-500}" 1 1000000)"
cache_ttl="$(num AUTH_CACHE_TTL "${AUTH_CACHE_TTL:-0}" 0 86400)"
hash_scheme="${HASH:-ARGON2ID}"
case "$hash_scheme" in ARGON2ID | SHA512-CRYPT) ;; *) echo "$bench: HASH must be ARGON2ID or SHA512-CRYPT" >&2; exit 2 ;; esac
user="user@bench.example"
pf_sub="$pf_addr:$sub_port"
hamail_sub="127.0.0.21:$sub_port"
dovecot_auth="$here/tests/support/dovecot-auth.sh"

mta_prepare

# ---------------------------------------------------------------- load client
# submission-bench, release profile (the workspace build above made it when
# hamail runs; a quick cargo call otherwise).
# shellcheck source=scripts/deps.sh
. "$here/scripts/deps.sh"
(cd "$here" && cargo build --release --quiet -p hamail-bench --bin submission-bench)
client="$CARGO_TARGET_DIR/release/submission-bench"

declare -A result   # NAME/msgs, NAME/logins -> the client's JSON line
server_log=""       # the log of the server under load, shown on a failure

# run_client NAME/KIND ADDR ARGS...: one load; keeps its JSON in result[].
# No JSON at all fails the script at once; a load with failed messages or
# sessions (counted, never as sent) is kept, shown with the server's log,
# and makes the script exit 1 at the end.
any_failed=""
run_client() {
    local key=$1 addr=$2 out rc=0
    shift 2
    out="$(timeout 900 "$client" --addr "$addr" --starttls --sessions "$sessions" --size "$size" \
        --user "$user" --password-file "$work/password" --rcpt "$rcpt" "$@")" || rc=$?
    echo "  $key: $out"
    case $out in "{"*) ;; *) echo "$bench: FAILED: $key: submission-bench exit $rc, no figures" >&2; exit 1 ;; esac
    if [ "$rc" != 0 ]; then
        any_failed=1
        echo "$bench: $key: FAILURES (see \"failures\" above); from $server_log:" >&2
        { grep -Ei 'fatal|panic' "$server_log" | head -3; grep -Ei 'warn|error' "$server_log" | tail -3; } >&2 2>/dev/null || true
    fi
    result[$key]="$out"
}

# The two loads against ADDR, kept under NAME.
measure() { # NAME ADDR
    run_client "$1/msgs" "$2" --messages-per-session "$per_session" --total $((sessions * rounds))
    run_client "$1/logins" "$2" --messages-per-session 1 --total "$logins"
}

# ---------------------------------------------------------------- shared setup
# The user's password, its hash (the same string for both servers), the
# passwd-file, and the TLS key and certificate.
# doveadm comes with dovecot-core, which tests/support/dovecot-auth.sh
# installs (no system Dovecot started): start and stop it once if missing.
if ! command -v doveadm >/dev/null 2>&1; then
    bash "$dovecot_auth" start "$work/dovecot" >/dev/null
    bash "$dovecot_auth" stop "$work/dovecot" >/dev/null
fi
openssl rand -hex 16 > "$work/password"
hash="$(doveadm pw -s "$hash_scheme" -p "$(cat "$work/password")")"
case "$hash" in "{$hash_scheme}"*) ;; *) echo "$bench: doveadm pw made no {$hash_scheme} hash: $hash" >&2; exit 1 ;; esac
printf '%s:%s\n' "$user" "$hash" > "$work/users"
chmod 644 "$work/users"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=submission.bench.invalid" \
    -addext "subjectAltName=DNS:submission.bench.invalid,IP:127.0.0.20,IP:127.0.0.21" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/cert.pem"
chmod 600 "$work/key.pem"

# ---------------------------------------------------------------- smtp-sink
# The final destination of both: accepts everything, counts nothing (the
# figures are 250s to the client, not deliveries). Event-driven, up to 1000
# sessions; bounded by timeout in case the script dies before its cleanup.
sink_start() {
    timeout 3600 /usr/sbin/smtp-sink -4 -u nobody -m 1000 "$sink_addr:$sink_port" 1024 \
        >/dev/null 2>"$work/sink.err" &
    sink_pid=$!
    helper_pids+=("$sink_pid")
    wait_smtp "$sink_addr" "$sink_port"
}

# ---------------------------------------------------------------- Postfix
dovecot_started=""
stop_dovecot() { [ -z "$dovecot_started" ] || bash "$dovecot_auth" stop "$work/dovecot" >/dev/null || true; dovecot_started=""; }
# lib-mta's cleanup, then Dovecot's.
# Dovecot first: cleanup removes the work directory, its pid file with it.
trap 'stop_dovecot; cleanup' EXIT

bench_postfix() {
    local sock
    dovecot_started=1
    # Its output to a file, not a pipe: the daemon must not hold our stdout.
    local cache=""
    [ "$cache_ttl" = 0 ] || cache="auth_cache_size = 10M
auth_cache_ttl = ${cache_ttl}s
auth_cache_negative_ttl = 0"
    AUTH_EXTRA_CONF="$cache" AUTH_USERS_FILE="$work/users" bash "$dovecot_auth" start "$work/dovecot" >"$work/dovecot.start" </dev/null
    sock="$(sed -n 's/^SOCKET //p' "$work/dovecot.start")"
    [ -S "$sock" ] || { echo "$bench: Dovecot's auth service gave no socket" >&2; exit 1; }
    echo "== Postfix $(postconf -dh mail_version) + Dovecot $(dovecot --version | awk '{ print $1 }') SASL, submission on $pf_sub"
    pf_started=1
    PF_RELAY_RECIPIENTS="$rcpt" PF_SUBMISSION="$pf_sub" PF_TLS_CERT="$work/cert.pem" \
        PF_TLS_KEY="$work/key.pem" PF_SASL_PATH="$sock" \
        PF_MAIN_CF="transport_maps = inline:{ bench.example=smtp:[$sink_addr]:$sink_port }" \
        bash "$postfix_dest" start "$pf" "$pf_addr:$smtp_port" bench.example >/dev/null
    server_log="$pf/maillog"
    measure postfix "$pf_sub"
    bash "$postfix_dest" stop "$pf" >/dev/null
    pf_started=""
    stop_dovecot
}

# ---------------------------------------------------------------- hamail
# lib-mta's node configuration, with TLS on (the same key and certificate),
# submission on :1587, no auth cache unless AUTH_CACHE_TTL, and no
# per-client connection cap (Postfix exempts mynetworks from its own).
eval "lib_$(declare -f hamail_config)"
hamail_config() {
    local dir=$1 i=$2 f
    lib_hamail_config "$@"
    f="$dir/hamail.toml"
    sed -i -e '/^submission_listen = \[\]$/d' -e "s|^tls = false\$|tls = true\\
smtpd_tls_cert_file = \"$work/cert.pem\"\\
smtpd_tls_key_file = \"$work/key.pem\"\\
submission_listen = [\"127.0.0.2$i:$sub_port\"]\\
auth_cache_ttl_secs = $cache_ttl\\
smtpd_client_connection_count_limit = 100000|" "$f"
    grep -q "^submission_listen = \[\"127.0.0.2$i:$sub_port\"\]\$" "$f" \
        || { echo "$bench: lib-mta.sh's [smtp] section changed (no 'tls = false' line to turn on): see hamail_config in $0" >&2; exit 1; }
}

bench_hamail_single() {
    echo "== hamail, one node, submission on $hamail_sub"
    local d="$work/hamail1/n1"
    hamail_single_up "$d"
    hcli "$d/hamail.toml" user import "$work/users" >/dev/null
    hamail_poll "$d" "$user" "never listed $user" user list
    wait_smtp 127.0.0.21 "$sub_port"
    server_log="$d/serve.log"
    measure hamail1 "$hamail_sub"
    stop_hamail
}
# One node only: the issue's comparison.
bench_hamail_cluster() { :; }

# ---------------------------------------------------------------- run
echo "$bench: $sessions sessions at once; msg/s: $((sessions * rounds)) sessions x $per_session messages of $size bytes; logins/s: $logins sessions of 1 message; hash {$hash_scheme}; hamail auth cache ${cache_ttl}s; $(nproc) cores"
sink_start
mta_run_all

echo
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
printf "%-16s %10s %10s %22s\n" server "msg/s" "logins/s" "failed msgs/sessions"
for name in postfix hamail1; do
    [ -n "${result[$name/msgs]:-}" ] || continue
    m="${result[$name/msgs]}" l="${result[$name/logins]}"
    printf "%-16s %10s %10s %22s\n" "$(server_label "$name")" "$(field "$m" msgs_per_s)" "$(field "$l" logins_per_s)" \
        "$(( $(field "$m" failed) + $(field "$l" failed) ))/$(( $(field "$m" session_errors) + $(field "$l" session_errors) ))"
done
if [ -n "${result[postfix/msgs]:-}" ] && [ -n "${result[hamail1/msgs]:-}" ]; then
    awk -v pm="$(field "${result[postfix/msgs]}" msgs_per_s)" -v hm="$(field "${result[hamail1/msgs]}" msgs_per_s)" \
        -v pl="$(field "${result[postfix/logins]}" logins_per_s)" -v hl="$(field "${result[hamail1/logins]}" logins_per_s)" \
        'BEGIN { printf "ratio hamail-1node/postfix: msg/s %.2f   logins/s %.2f\n", hm / pm, hl / pl }'
fi
echo "hamail binary: ${bin:-none} ($(case "${bin:-}" in */release/*) echo release profile ;; */debug/*) echo "dev profile: not comparable" ;; "") echo "not run" ;; *) echo "profile unknown" ;; esac))"
if [ -n "$any_failed" ]; then
    echo "$bench: some messages or sessions FAILED (column above): those rates count only the 250s" >&2
    exit 1
fi
