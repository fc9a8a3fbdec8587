#!/usr/bin/env bash
# tests/support/dovecot-lmtp.sh: a private Dovecot instance serving LMTP over
# TCP, delivering to Maildir, as a real LMTP destination for hamail's tests.
#
#   tests/support/dovecot-lmtp.sh start DIR HOST:PORT
#   tests/support/dovecot-lmtp.sh stop DIR
#
# start: installs dovecot-core and dovecot-lmtpd if missing (without letting
# the package start a system Dovecot), writes DIR/dovecot.conf and
# DIR/users, starts `dovecot -c DIR/dovecot.conf`, waits (at most 20 s) for
# the "220" greeting on HOST:PORT, then prints two lines on stdout:
#   READY HOST:PORT
#   PIDFILE DIR/run/master.pid
# stop: SIGTERM to the master named in that pid file; waits (at most 20 s)
# for it and the children it had to exit (SIGKILL after that). Stopping an
# instance that is not running is not an error.
#
# LMTP over a Unix socket: Dovecot's default listener, DIR/run/lmtp (mode
# 0666, Dovecot's built-in `service lmtp { unix_listener lmtp }`), serves
# the same LMTP as HOST:PORT; it exists once start has printed READY.
#
# Recipients: LMTP_USERS, space separated addresses (default
# "box@lmtp.example other@lmtp.example"), are the only users; any other
# recipient (e.g. nosuchuser@lmtp.example) is refused at RCPT TO with
# "550 5.1.1 ... User doesn't exist". Addresses are lowercased (Dovecot
# lowercases the looked-up name). A "+detail" in the local part is dropped
# before the lookup (recipient_delimiter), so box+x@lmtp.example is box.
#
# Mail for local@domain is a Maildir at DIR/mail/domain/local/ (each message
# a file in DIR/mail/domain/local/new/; Dovecot also keeps its dovecot-uidlist
# and dovecot.index* files there). Dovecot refuses to deliver as root, so
# the mail is owned by the system user "mail" (Debian's base-passwd, uid 8;
# LMTP_MAIL_USER names another): directories 0700, files 0600, which root,
# running the tests, reads. Needs root (install, Dovecot master).
#
# Everything of the instance is under DIR: dovecot.conf, users, run/ (its
# base_dir: sockets, master.pid), state/, dovecot.log, mail/, home/. Nothing
# under /etc/dovecot is read or changed, and no system instance is started.
# DIR is made 0755; the directories above it must already be searchable by
# others (o+x), else start fails saying which (chmod 755 a mktemp -d or
# tempdir parent first). Keep DIR short (at most 70 characters): Unix socket
# paths in DIR/run are limited to 107 bytes. Dovecot 2.3 (Debian 12) and 2.4 configuration syntax
# are both written, chosen by `dovecot --version`.
set -euo pipefail

me="tests/support/dovecot-lmtp.sh"
mail_user="${LMTP_MAIL_USER:-mail}"
. "$(dirname "$0")/lib.sh"
usage() { echo "usage: $me start DIR HOST:PORT | stop DIR" >&2; exit 2; }

# ---------------------------------------------------------------- packages
install_dovecot() {
    if command -v dovecot >/dev/null 2>&1 && [ -x /usr/lib/dovecot/lmtp ]; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "dovecot-core/dovecot-lmtpd are missing and only root can install them"
    echo "$me: installing dovecot-core dovecot-lmtpd" >&2
    # The packages' maintainer scripts start (invoke-rc.d) a system Dovecot
    # on imap/pop3 ports; a policy-rc.d that exits 101 forbids that. Ours is
    # created only when none exists, and removed again after the install.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, %s: no service starts during the install\nexit 101\n' "$me" > "$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -q dovecot-core dovecot-lmtpd >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q dovecot-core dovecot-lmtpd >/dev/null; }
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    if ! command -v dovecot >/dev/null 2>&1 || [ ! -x /usr/lib/dovecot/lmtp ]; then
        die "dovecot install failed"
    fi
}

# ---------------------------------------------------------------- config
# "2.3" or "2.4" (2.4 and later share the new syntax).
dovecot_series() {
    local v
    v="$(dovecot --version | awk '{ print $1 }')"
    awk -v v="$v" 'BEGIN { split(v, p, "."); print ((p[1] > 2 || (p[1] == 2 && p[2] >= 4)) ? "2.4" : "2.3") }'
}

# write_users DIR: DIR/users, a passwd-file with one line per LMTP_USERS
# address: user:password:uid:gid:gecos:home:shell (no password: nobody can
# log in; LMTP needs only the userdb lookup).
write_users() {
    local dir=$1 addr uid gid
    uid="$(id -u "$mail_user")"
    gid="$(id -g "$mail_user")"
    : > "$dir/users"
    for addr in ${LMTP_USERS:-box@lmtp.example other@lmtp.example}; do
        addr="$(printf '%s' "$addr" | tr '[:upper:]' '[:lower:]')"
        case "$addr" in
            *@*@* | @* | *@ | *:* | *@*/* | */*@*) die "LMTP_USERS: bad address '$addr'" ;;
            *@*) ;;
            *) die "LMTP_USERS: '$addr' has no @domain" ;;
        esac
        echo "$addr::$uid:$gid::$dir/home/${addr#*@}/${addr%@*}::" >> "$dir/users"
    done
    chmod 644 "$dir/users"
}

# write_conf DIR HOST PORT
write_conf() {
    local dir=$1 host=$2 port=$3 series common
    series="$(dovecot_series)"
    # The settings both syntaxes share.
    common="instance_name = hamail-test-lmtp
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
debug_log_path = $dir/dovecot.log
protocols = lmtp
# The only TCP listener is LMTP's, on this address.
listen = $host
ssl = no
# Fixed name: no lookups of the machine's own name.
hostname = lmtp.test.invalid
# Mail is delivered as $mail_user (uid/gid in the users file); Dovecot
# never delivers as root.
first_valid_uid = 1
first_valid_gid = 1"
    if [ "$series" = 2.4 ]; then
        cat > "$dir/dovecot.conf" <<EOT
# Written by $me (Dovecot 2.4 syntax). Private test instance: nothing
# under /etc/dovecot is read.
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
$common
mail_driver = maildir
mail_path = $dir/mail/%{user | domain}/%{user | username}
passdb passwd-file {
  passwd_file_path = $dir/users
}
userdb passwd-file {
  passwd_file_path = $dir/users
}
service lmtp {
  inet_listener lmtp {
    port = $port
  }
}
EOT
    else
        cat > "$dir/dovecot.conf" <<EOT
# Written by $me (Dovecot 2.3 syntax). Private test instance: nothing
# under /etc/dovecot is read.
$common
mail_location = maildir:$dir/mail/%d/%n
# Only the users listed in the file exist: any other recipient gets 550.
passdb {
  driver = passwd-file
  args = username_format=%u $dir/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/users
}
service lmtp {
  inet_listener lmtp {
    address = $host
    port = $port
  }
}
EOT
    fi
}

# ---------------------------------------------------------------- start/stop
# Master pid of the instance in DIR, when it runs.
running_pid() { running_pid_from "$1/run/master.pid"; }

start() {
    [ $# = 2 ] || usage
    local dir=$1 hp=$2 host port
    host="${hp%:*}"
    port="${hp##*:}"
    if [ -z "$host" ] || [ "$host" = "$hp" ] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
        die "bad HOST:PORT '$hp'"
    fi
    [ "$(id -u)" = 0 ] || die "run as root (the Dovecot master needs it)"
    id -u "$mail_user" >/dev/null 2>&1 || die "no user '$mail_user' to own the mail (LMTP_MAIL_USER)"
    [ "$(id -u "$mail_user")" != 0 ] || die "LMTP_MAIL_USER must not be root: Dovecot refuses to deliver as root"
    install_dovecot
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ "${#dir}" -le 70 ] || die "DIR path too long for Dovecot's sockets (${#dir} > 70): $dir"
    # The mail user and Dovecot's auth process (user dovecot) must reach
    # DIR: every directory above it must be searchable by others (o+x). A
    # mktemp -d or Rust tempdir is 0700: chmod 755 it first.
    local up=$dir
    while [ "$up" != / ]; do
        up="$(dirname "$up")"
        (( 8#$(stat -c %a "$up") & 1 )) \
            || die "$up is not searchable by others (mode $(stat -c %a "$up")); Dovecot's mail user could not reach $dir: chmod o+x $up"
    done
    if [ -n "$(running_pid "$dir")" ]; then
        die "a Dovecot instance already runs in $dir (stop it first)"
    fi
    mkdir -p "$dir/run" "$dir/state" "$dir/mail" "$dir/home"
    # The mail user writes under DIR/mail and DIR/home, and Dovecot's
    # unprivileged auth process (user dovecot) reads DIR/users: DIR must be
    # searchable by them (a mktemp -d directory is 0700).
    chmod 755 "$dir"
    chown "$(id -u "$mail_user"):$(id -g "$mail_user")" "$dir/mail" "$dir/home"
    write_users "$dir"
    write_conf "$dir" "$host" "$port"
    # Configuration errors on stderr, before anything starts.
    doveconf -c "$dir/dovecot.conf" >/dev/null || die "bad configuration in $dir/dovecot.conf"
    # The master forks into the background once its listeners are bound
    # (a busy address fails here, with the reason on stderr).
    dovecot -c "$dir/dovecot.conf" || { tail -5 "$dir/dovecot.log" >&2 2>/dev/null || true; die "dovecot did not start"; }
    announce_ready "$host" "$port" "$dir/dovecot.log" "$dir" "$dir/run/master.pid"
}

stop() {
    [ $# = 1 ] || usage
    local dir=$1 pid kids p left=""
    pid="$(running_pid "$dir" || true)"
    if [ -z "$pid" ]; then
        rm -f "$dir/run/master.pid"
        return 0
    fi
    # The master's children, by parent pid, to wait for them too: they get
    # SIGTERM from the master and may outlive it briefly.
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
