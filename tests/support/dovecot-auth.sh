#!/usr/bin/env bash
# tests/support/dovecot-auth.sh: a private Dovecot instance serving only the
# auth service, as a real SASL backend for hamail's tests and for Postfix
# (`smtpd_sasl_type = dovecot`) in the benchmarks.
#
#   tests/support/dovecot-auth.sh start DIR
#   tests/support/dovecot-auth.sh stop DIR
#
# start: installs dovecot-core if missing (without letting the package start
# a system Dovecot), writes DIR/dovecot.conf and DIR/users, starts
# `dovecot -c DIR/dovecot.conf`, waits (at most 20 s) for the auth client
# socket, then prints three lines on stdout:
#   READY DIR/run/auth-client
#   SOCKET DIR/run/auth-client
#   PIDFILE DIR/run/master.pid
# stop: SIGTERM to the master named in that pid file; waits (at most 20 s)
# for it and the children it had to exit (SIGKILL after that). Stopping an
# instance that is not running is not an error.
#
# The socket DIR/run/auth-client (mode 0666) speaks Dovecot's auth client
# protocol (VERSION 1): hamail's hamail_auth::dovecot::DovecotAuth and
# Postfix (smtpd_sasl_type = dovecot, smtpd_sasl_path = that path; a
# chrooted smtpd needs the path inside its chroot) both use it. Mechanisms:
# PLAIN and LOGIN. Plaintext authentication is allowed without TLS
# (disable_plaintext_auth = no): the test clients talk to it over loopback
# and say themselves whether their own client connection was secured.
# Dovecot's defaults otherwise: a failed authentication is answered after
# auth_failure_delay (2 s), and repeated failures from one remote IP (rip=)
# are delayed further (auth penalty).
#
# Users: the passwd-file named by AUTH_USERS_FILE (user:{SCHEME}hash lines,
# as hamail imports them) is copied to DIR/users; without it DIR/users
# holds one user, user@example.com with password "secret" stored as
# {SHA512-CRYPT}. Any other user name fails authentication.
#
# AUTH_EXTRA_CONF: lines added to dovecot.conf as they are (bench/submission
# turns Dovecot's auth cache on with auth_cache_size and auth_cache_ttl).
#
# Everything of the instance is under DIR: dovecot.conf, users, run/ (its
# base_dir: sockets, master.pid), state/, dovecot.log, start.err (the
# master's own stdout/stderr, so stdout of this script may be a pipe). Nothing under
# /etc/dovecot is read or changed, no TCP port is opened and no system
# instance is started. DIR is made 0755; the directories above it must be
# searchable by others (o+x), else start fails saying which (Dovecot's auth
# process, user dovecot, reads DIR/users; Postfix reaches the socket). Keep
# DIR short (at most 70 characters): Unix socket paths are limited to 107
# bytes. Needs root (install, Dovecot master). Written for the Dovecot 2.3
# configuration syntax (Debian 12); 2.4's is written when `dovecot
# --version` says 2.4 or later.
set -euo pipefail

me="tests/support/dovecot-auth.sh"
. "$(dirname "$0")/lib.sh"
usage() { echo "usage: $me start DIR | stop DIR" >&2; exit 2; }

# doveadm pw -s SHA512-CRYPT -p secret
default_hash='{SHA512-CRYPT}$6$j/VLdUa0IMh7Hyox$Eg0nwF3j7xKLKxSw7SYuz4bCFb2qgwJQJrALT4Ljpd4k1W5bCsrjn0jSCk2ClivXM.5tNKEbKj1kZEQm4NDXD0'

# ---------------------------------------------------------------- packages
install_dovecot() {
    if command -v dovecot >/dev/null 2>&1 && command -v doveconf >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "dovecot-core is missing and only root can install it"
    echo "$me: installing dovecot-core" >&2
    # The package's maintainer scripts start (invoke-rc.d) a system Dovecot;
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
    apt-get -o DPkg::Lock::Timeout=600 install -y -q dovecot-core >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q dovecot-core >/dev/null; }
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    command -v dovecot >/dev/null 2>&1 || die "dovecot install failed"
}

# ---------------------------------------------------------------- config
# "2.3" or "2.4" (2.4 and later share the new syntax).
dovecot_series() {
    local v
    v="$(dovecot --version | awk '{ print $1 }')"
    awk -v v="$v" 'BEGIN { split(v, p, "."); print ((p[1] > 2 || (p[1] == 2 && p[2] >= 4)) ? "2.4" : "2.3") }'
}

# write_users DIR: DIR/users from AUTH_USERS_FILE, or the default user.
write_users() {
    local dir=$1
    if [ -n "${AUTH_USERS_FILE:-}" ]; then
        [ -r "$AUTH_USERS_FILE" ] || die "AUTH_USERS_FILE '$AUTH_USERS_FILE' is not readable"
        cp "$AUTH_USERS_FILE" "$dir/users"
    else
        printf '%s\n' "user@example.com:$default_hash" > "$dir/users"
    fi
    chmod 644 "$dir/users"
}

# write_conf DIR
write_conf() {
    local dir=$1 series common uid gid
    series="$(dovecot_series)"
    # The static userdb answers for every user (nologin authentications
    # never use it, but Dovecot's auth process refuses to run without one).
    uid="$(id -u nobody)"
    gid="$(id -g nobody)"
    common="instance_name = hamail-test-auth
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
debug_log_path = $dir/dovecot.log
# Only the auth service: no IMAP/POP3/LMTP, so no TCP listener (were one
# configured, it would bind loopback only).
protocols = none
listen = 127.0.0.1
ssl = no
hostname = auth.test.invalid
auth_mechanisms = plain login
service auth {
  unix_listener auth-client {
    mode = 0666
  }
}
${AUTH_EXTRA_CONF:-}"
    if [ "$series" = 2.4 ]; then
        cat > "$dir/dovecot.conf" <<EOT
# Written by $me (Dovecot 2.4 syntax). Private test instance: nothing
# under /etc/dovecot is read.
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
$common
auth_allow_cleartext = yes
passdb passwd-file {
  passwd_file_path = $dir/users
}
userdb static {
  fields {
    uid = $uid
    gid = $gid
    home = $dir/home/%{user}
  }
}
EOT
    else
        cat > "$dir/dovecot.conf" <<EOT
# Written by $me (Dovecot 2.3 syntax). Private test instance: nothing
# under /etc/dovecot is read.
$common
disable_plaintext_auth = no
passdb {
  driver = passwd-file
  args = username_format=%u $dir/users
}
userdb {
  driver = static
  args = uid=$uid gid=$gid home=$dir/home/%u allow_all_users=yes
}
EOT
    fi
}

# ---------------------------------------------------------------- start/stop
running_pid() { running_pid_from "$1/run/master.pid"; }

start() {
    [ $# = 1 ] || usage
    local dir=$1 up _
    [ "$(id -u)" = 0 ] || die "run as root (the Dovecot master needs it)"
    install_dovecot
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ "${#dir}" -le 70 ] || die "DIR path too long for Dovecot's sockets (${#dir} > 70): $dir"
    up=$dir
    while [ "$up" != / ]; do
        up="$(dirname "$up")"
        (( 8#$(stat -c %a "$up") & 1 )) \
            || die "$up is not searchable by others (mode $(stat -c %a "$up")); Dovecot's auth process could not read $dir/users: chmod o+x $up"
    done
    if [ -n "$(running_pid "$dir")" ]; then
        die "a Dovecot instance already runs in $dir (stop it first)"
    fi
    mkdir -p "$dir/run" "$dir/state" "$dir/home"
    chmod 755 "$dir"
    write_users "$dir"
    write_conf "$dir"
    doveconf -c "$dir/dovecot.conf" >/dev/null || die "bad configuration in $dir/dovecot.conf"
    # The master binds every listener, the auth client socket included,
    # before it forks into the background; the auth process itself starts
    # on the first connection.
    # Its descriptors go to a file, not to ours: the daemon keeps them, and
    # a caller reading our stdout through a pipe would never see it close.
    if ! dovecot -c "$dir/dovecot.conf" </dev/null >"$dir/start.err" 2>&1; then
        cat "$dir/start.err" >&2 2>/dev/null || true
        tail -5 "$dir/dovecot.log" >&2 2>/dev/null || true
        die "dovecot did not start"
    fi
    for _ in $(seq 1 200); do
        [ -S "$dir/run/auth-client" ] && break
        sleep 0.1
    done
    if [ ! -S "$dir/run/auth-client" ]; then
        echo "$me: no auth client socket $dir/run/auth-client within 20 s; log ends:" >&2
        tail -10 "$dir/dovecot.log" >&2 2>/dev/null || true
        stop "$dir" >/dev/null 2>&1 || true
        exit 1
    fi
    echo "READY $dir/run/auth-client"
    echo "SOCKET $dir/run/auth-client"
    echo "PIDFILE $dir/run/master.pid"
}

stop() {
    [ $# = 1 ] || usage
    local dir=$1 pid kids p left=""
    pid="$(running_pid "$dir" || true)"
    if [ -z "$pid" ]; then
        rm -f "$dir/run/master.pid"
        return 0
    fi
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -s ' \n' ' ' || true)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 200; then
        echo "$me: dovecot master $pid ignores SIGTERM, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || true
    fi
    for p in $kids; do
        wait_gone "$p" 100 || { kill -KILL "$p" 2>/dev/null || true; left="$left $p"; }
    done
    [ -z "$left" ] || echo "$me: killed leftover dovecot processes:$left" >&2
    rm -f "$dir/run/master.pid"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) usage ;;
esac
