#!/usr/bin/env bash
# tests/support/rspamd.sh: a private rspamd instance in milter mode, as a
# real milter for hamail's tests (and for Postfix in benchmarks).
#
#   tests/support/rspamd.sh start DIR [PORT]
#   tests/support/rspamd.sh stop DIR
#
# start: installs rspamd if missing (Debian's package, without letting it
# start a system rspamd), writes DIR/rspamd.conf and DIR/local.d/, starts
# rspamd with one worker "rspamd_proxy" in milter mode on 127.0.0.1:PORT
# (default 11332) that scans by itself (self_scan = yes: no "normal"
# worker, no controller), waits (at most 60 s: the first start compiles
# its regular expressions) until the port accepts connections, then prints
#   READY 127.0.0.1:PORT
#   PIDFILE DIR/run/rspamd.pid
# stop: SIGTERM to the main process named in that pid file; waits (at most
# 20 s) for it to exit (SIGKILL after that). Stopping an instance that is
# not running is not an error.
#
# Rules: Debian's stock rules (GTUBE is rejected: "554 5.7.1 Gtube
# pattern"; other spam "554 5.7.1 Spam message rejected"), and milter_headers adding X-Spamd-Result, X-Spam-Status,
# X-Spam-Level and X-Rspamd-Queue-Id to every message it lets through, also
# for mail from loopback and authenticated clients (skip_local = false,
# skip_authenticated = false: tests send from 127.0.0.x). No Redis, so the
# modules that need it (greylisting, ratelimit, bayes) stay off. Its DNS
# goes to 127.0.0.1:9 (nothing answers; lookups fail at once), so a scan
# never waits on the network.
#
# Everything of the instance is under DIR (owned by _rspamd, the package's
# user, which the workers run as): rspamd.conf, local.d/, db/ (its DBDIR:
# compiled hyperscan cache, history), run/ (pid file), rspamd.log,
# start.err. Nothing under /etc/rspamd is changed; its stock files are read
# through `.include`. Needs root (install, switching to _rspamd).
set -euo pipefail

me="tests/support/rspamd.sh"
. "$(dirname "$0")/lib.sh"
usage() { echo "usage: $me start DIR [PORT] | stop DIR" >&2; exit 2; }

install_rspamd() {
    command -v rspamd >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "rspamd is missing and only root can install it"
    echo "$me: installing rspamd" >&2
    # The package's maintainer scripts start (invoke-rc.d) a system rspamd;
    # a policy-rc.d that exits 101 forbids that. Ours is created only when
    # none exists, and removed again after the install.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, %s: no service starts during the install\nexit 101\n' "$me" > "$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -q rspamd >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q rspamd >/dev/null; }
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    command -v rspamd >/dev/null 2>&1 || die "rspamd did not install"
}

# Whether 127.0.0.1:$1 accepts a connection.
listening() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

start() {
    local dir="$1" port="$2"
    install_rspamd
    id _rspamd >/dev/null 2>&1 || die "the package's user _rspamd is missing"
    mkdir -p "$dir/local.d" "$dir/db" "$dir/run"
    dir="$(cd "$dir" && pwd)"
    if pid="$(running_pid_from "$dir/run/rspamd.pid")"; then
        die "an rspamd already runs for $dir (pid $pid); stop it first"
    fi
    if listening "$port"; then
        die "127.0.0.1:$port is taken by another process"
    fi
    cat > "$dir/rspamd.conf" <<EOF
# Written by $me: Debian's stock rules, one milter-mode proxy that scans
# by itself, everything else of the instance under $dir.
.include "\$CONFDIR/common.conf"
options {
    pidfile = "\$RUNDIR/rspamd.pid";
    .include "\$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "\$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "\$LOGDIR/rspamd.log";
    level = "info";
}
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:$port";
    milter = yes;
    timeout = 120s;
    upstream "local" {
        default = yes;
        self_scan = yes;
    }
    count = 1;
    max_retries = 5;
    discard_on_reject = false;
    quarantine_on_reject = false;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}
EOF
    cat > "$dir/local.d/milter_headers.conf" <<'EOF'
use = ["x-spamd-result", "x-spam-status", "x-spam-level", "x-rspamd-queue-id"];
extended_spam_headers = true;
skip_local = false;
skip_authenticated = false;
EOF
    cat > "$dir/local.d/options.inc" <<'EOF'
dns {
    nameserver = ["127.0.0.1:9"];
    timeout = 0.2s;
    retransmits = 1;
}
EOF
    chown -R _rspamd:_rspamd "$dir"
    rspamd -c "$dir/rspamd.conf" \
        --var="LOCAL_CONFDIR=$dir" --var="DBDIR=$dir/db" \
        --var="RUNDIR=$dir/run" --var="LOGDIR=$dir" \
        -u _rspamd -g _rspamd > "$dir/start.err" 2>&1 \
        || { cat "$dir/start.err" >&2; die "rspamd did not start"; }
    local _
    for _ in $(seq 1 600); do
        if listening "$port" && running_pid_from "$dir/run/rspamd.pid" >/dev/null; then
            echo "READY 127.0.0.1:$port"
            echo "PIDFILE $dir/run/rspamd.pid"
            return 0
        fi
        sleep 0.1
    done
    echo "$me: rspamd is not listening on 127.0.0.1:$port within 60 s; log ends:" >&2
    tail -10 "$dir/rspamd.log" >&2 2>/dev/null || true
    stop "$dir" >/dev/null 2>&1 || true
    exit 1
}

stop() {
    local dir="$1" pid
    pid="$(running_pid_from "$dir/run/rspamd.pid")" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 200; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || die "rspamd (pid $pid) does not exit"
    fi
}

case "${1:-}" in
    start) [ $# -ge 2 ] || usage; start "$2" "${3:-11332}" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
