#!/usr/bin/env bash
# tests/support/postfix-dest.sh: a private Postfix instance as the final
# destination of a domain, delivering to Maildir, for hamail's tests; or,
# with PF_RELAY_RECIPIENTS, a relay MX for it (the benches' baseline).
#
#   tests/support/postfix-dest.sh start DIR HOST:PORT DOMAIN
#   tests/support/postfix-dest.sh stop DIR
#
# start: installs postfix if missing (with "No configuration": no system
# instance is configured or started), writes DIR/etc/main.cf, master.cf,
# vmailbox (texthash) and vmailbox.regexp, starts `postfix -c DIR/etc
# start`, waits (at most 20 s) for the "220" greeting on HOST:PORT (an IPv4
# address), then prints on stdout:
#   READY HOST:PORT
#   PIDFILE DIR/queue/pid/master.pid
# stop: `postfix -c DIR/etc stop`; waits (at most 20 s) for the master and
# the children it had to exit (SIGKILL after that). Stopping an instance that
# is not running is not an error.
#
# What it accepts: any recipient @DOMAIN (exactly DOMAIN, not subdomains),
# from any client (mynetworks = 127.0.0.0/8 is set, but nothing is relayed:
# a recipient in another domain gets "554 5.7.1 Relay access denied").
# PF_REJECT_USERS="nosuchuser ..." (default: none) names local parts that
# are refused at RCPT TO with "550 5.1.1 ... User unknown in virtual mailbox
# table" (with or without a +detail).
#
# Where mail goes (virtual(8), Maildir, one file per message and recipient,
# each starting with Return-Path:, X-Original-To:, Delivered-To: headers):
#   DIR/mail/DOMAIN/all/new/<file>    every recipient, by default: one
#       shared Maildir (virtual(8) takes no per-user path out of a pattern
#       table, so "any local part" cannot mean one Maildir each);
#   DIR/mail/DOMAIN/LOCAL/new/<file>  for each LOCAL named in PF_USERS
#       ("box other": local parts of [a-z0-9._-], not "all"), also reached
#       as LOCAL+detail@DOMAIN and in any letter case.
# The DIR/mail tree belongs to nobody:nogroup (virtual(8) never delivers as
# root): directories 0700, files 0600, which root, running the tests, reads.
#
# Also under DIR: queue/ (queue_directory), data/ (data_directory), maillog
# (maillog_file: Postfix's log). Nothing under /etc/postfix is read or
# changed. Nothing leaves the machine: default_transport and relay_transport
# are error:, so a bounce to any sender is not sent. No chroot, no TLS,
# no DNS (smtpd_peername_lookup = no); queue files and Maildir files are
# fsynced (Postfix's default, left as is). Needs root. DIR is made 0755;
# the directories above it must be searchable by others (o+x), else start
# fails saying which (chmod 755 a mktemp -d or tempdir parent first).
#
# As a relay MX instead (the Postfix baseline of bench/smtp.sh and
# bench/relay.sh): PF_RELAY_RECIPIENTS="a@DOMAIN ..." (default: none, i.e.
# the final destination above) makes DOMAIN a relay domain (relay_domains)
# whose only valid recipients are these addresses (relay_recipient_maps;
# any other @DOMAIN gets "550 5.1.1 ... User unknown in relay recipient
# table"), the way a backup MX or mail gateway is set up. Nothing goes to
# Maildir: accepted mail is passed to the relay transport, which would look
# up DOMAIN's MX unless the extra lines below route or defer it.
# PF_MAIN_CF (default: none): lines appended to main.cf, e.g.
# "defer_transports = relay smtp" (accepted mail stays in the queue) or
# "transport_maps = inline:{ DOMAIN=smtp:[HOST]:PORT }" (relayed there).
#
# A submission service too (the Postfix + Dovecot baseline of
# bench/submission.sh): PF_SUBMISSION="HOST:PORT" (default: none) adds a
# second smtpd on HOST:PORT in master.cf with the -o overrides of Debian's
# stock "submission" entry: TLS required (smtpd_tls_security_level =
# encrypt) with the certificate and key in PF_TLS_CERT and PF_TLS_KEY (PEM
# files), SASL through Dovecot (smtpd_sasl_auth_enable = yes,
# smtpd_sasl_type = dovecot, smtpd_sasl_path = PF_SASL_PATH, the auth
# client socket of tests/support/dovecot-auth.sh), AUTH only inside TLS
# (smtpd_tls_auth_only = yes), and only authenticated clients may send
# (client and relay restrictions permit_sasl_authenticated, reject), to any
# domain the instance would deliver or relay. A tlsmgr service is added
# (TLS session keys and PRNG). start waits for HOST:PORT's greeting too.
# The listener on the start arguments' HOST:PORT is left as described above.
set -euo pipefail

me="tests/support/postfix-dest.sh"
. "$(dirname "$0")/lib.sh"
usage() { echo "usage: $me start DIR HOST:PORT DOMAIN | stop DIR" >&2; exit 2; }

# ---------------------------------------------------------------- packages
install_postfix() {
    command -v postfix >/dev/null 2>&1 && return 0
    echo "$me: installing postfix" >&2
    # "No configuration": no /etc/postfix/main.cf, and the system instance
    # is neither configured nor started; only the private instance runs.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -q postfix >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q postfix >/dev/null; }
    command -v postfix >/dev/null 2>&1 || die "postfix install failed"
}

# `postfix -c DIR/etc ARGS`. Postfix commands print errors on stderr only
# when it is a terminal (else to syslog or the maillog_file, neither of which
# exists yet on a configuration error, so they would fail silently): give
# them a pty when script(1) is there.
pfx() {
    local etc=$1
    shift
    if command -v script >/dev/null 2>&1; then
        script -qec "postfix -c $etc $*" /dev/null
    else
        postfix -c "$etc" "$@"
    fi
}

# ---------------------------------------------------------------- config
# write_conf DIR HOST PORT DOMAIN
write_conf() {
    local dir=$1 host=$2 port=$3 domain=$4 compat=2 re_domain uid gid u alt=""
    # 3.6 is the level the current defaults belong to; older releases reject it.
    awk -v v="$(postconf -dh mail_version)" 'BEGIN { split(v, p, "."); exit !(p[1] > 3 || (p[1] == 3 && p[2] >= 6)) }' && compat=3.6
    uid="$(id -u nobody)"
    gid="$(id -g nobody)"
    cat > "$dir/etc/main.cf" <<EOT
# Written by $me: a private test instance with its own configuration, queue
# and data directory; /etc/postfix/main.cf is never used.
compatibility_level = $compat
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
# postlogd writes here; maillog_file must be under one of these prefixes.
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
syslog_name = postfix-dest
# Not $host: Postfix insists that inet_interfaces addresses are configured
# on an interface, and lo carries only 127.0.0.1/8. master.cf binds smtpd
# to $host:$port explicitly, which needs no such check.
inet_interfaces = loopback-only
inet_protocols = ipv4
# Fixed names: no DNS or hostname lookups (the net is loopback only).
myhostname = postfix-dest.invalid
mydomain = invalid
myorigin = \$myhostname
append_dot_mydomain = no
biff = no
smtpd_peername_lookup = no
# Nothing is local: $domain is the only domain mail is accepted for.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
# And nothing leaves: mail (bounces included) to any other domain fails here.
default_transport = error:5.7.1 postfix-dest delivers only to $domain
smtpd_tls_security_level = none
smtp_tls_security_level = none
EOT
    if [ -z "${PF_RELAY_RECIPIENTS:-}" ]; then
        cat >> "$dir/etc/main.cf" <<EOT
# Nothing is relayed.
relay_domains =
relay_transport = error:5.7.1 postfix-dest delivers only to $domain
# $domain: Maildirs under $dir/mail; the users of PF_USERS first (a fixed
# table: +detail and case handled), every other local part to $domain/all/.
virtual_mailbox_domains = $domain
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = texthash:$dir/etc/vmailbox, regexp:$dir/etc/vmailbox.regexp
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = 100
virtual_mailbox_limit = 0
recipient_delimiter = +
EOT
    else
        # PF_RELAY_RECIPIENTS: a relay MX for $domain, with its recipients in
        # a built-in map (no postmap step).
        local rcpts=""
        for u in $PF_RELAY_RECIPIENTS; do
            [[ "$u" =~ ^[^@[:space:],{}=]+@${domain//./\\.}$ ]] \
                || die "PF_RELAY_RECIPIENTS: '$u' is not an address @$domain"
            rcpts="${rcpts:+$rcpts, }$u=ok"
        done
        cat >> "$dir/etc/main.cf" <<EOT
# $domain is relayed (PF_RELAY_RECIPIENTS), by the relay transport.
relay_domains = $domain
relay_recipient_maps = inline:{ $rcpts }
EOT
    fi
    [ -z "${PF_MAIN_CF:-}" ] || printf '# PF_MAIN_CF:\n%s\n' "$PF_MAIN_CF" >> "$dir/etc/main.cf"
    # vmailbox: one line per PF_USERS local part (texthash: no postmap).
    : > "$dir/etc/vmailbox"
    for u in ${PF_USERS:-}; do
        u="$(printf '%s' "$u" | tr '[:upper:]' '[:lower:]')"
        if ! [[ "$u" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || [ "$u" = all ]; then
            die "PF_USERS: '$u' is not a local part of [a-z0-9._-] other than 'all'"
        fi
        echo "$u@$domain $domain/$u/" >> "$dir/etc/vmailbox"
        alt="${alt:+$alt|}${u//./\\.}"
    done
    # vmailbox.regexp: everyone else. A pattern table is asked with the whole
    # address only (no retry without +detail, unlike vmailbox) and its result
    # can hold no $1 (virtual(8) forbids it), so: one Maildir for all, with
    # PF_USERS and PF_REJECT_USERS (and any +detail) left out. No result:
    # 550 at RCPT.
    re_domain="${domain//./\\.}"
    for u in ${PF_REJECT_USERS:-}; do
        alt="${alt:+$alt|}$(printf '%s' "$u" | sed 's/[^A-Za-z0-9_-]/\\&/g')"
    done
    {
        echo "# Written by $me: recipient address -> Maildir (relative to"
        echo "# virtual_mailbox_base; the trailing / means Maildir)."
        [ -z "$alt" ] || echo "if !/^($alt)(\+[^@]*)?@$re_domain\$/"
        echo "/@$re_domain\$/ $domain/all/"
        [ -z "$alt" ] || echo "endif"
    } > "$dir/etc/vmailbox.regexp"
    # Only the services that accept, queue and deliver mail need, none
    # chrooted (a chroot would need copies of /etc files in the queue).
    cat > "$dir/etc/master.cf" <<EOT
$host:$port inet n - n - - smtpd
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
virtual   unix  - n n - - virtual
relay     unix  - - n - - smtp
smtp      unix  - - n - - smtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOT
}

# write_submission DIR: PF_SUBMISSION's service appended to master.cf.
write_submission() {
    local dir=$1 host port f
    host="${PF_SUBMISSION%:*}"
    port="${PF_SUBMISSION##*:}"
    if ! [[ "$host" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
        die "PF_SUBMISSION: bad HOST:PORT '$PF_SUBMISSION' (an IPv4 address and a port)"
    fi
    for f in PF_TLS_CERT PF_TLS_KEY PF_SASL_PATH; do
        [ -n "${!f:-}" ] || die "PF_SUBMISSION needs $f"
        # No spaces or commas: each value is one master.cf -o word.
        [[ "${!f}" =~ ^[^[:space:],]+$ ]] || die "$f: '${!f}' holds spaces or commas"
    done
    [ -r "$PF_TLS_CERT" ] || die "PF_TLS_CERT: cannot read $PF_TLS_CERT"
    [ -r "$PF_TLS_KEY" ] || die "PF_TLS_KEY: cannot read $PF_TLS_KEY"
    [ -S "$PF_SASL_PATH" ] || die "PF_SASL_PATH: $PF_SASL_PATH is not a socket (is Dovecot's auth service running?)"
    cat >> "$dir/etc/master.cf" <<EOT
$host:$port inet n - n - - smtpd
  -o syslog_name=postfix-dest/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_cert_file=$PF_TLS_CERT
  -o smtpd_tls_key_file=$PF_TLS_KEY
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=$PF_SASL_PATH
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
tlsmgr    unix  - - n 1000? 1 tlsmgr
EOT
}

# ---------------------------------------------------------------- start/stop
# Master pid of the instance in DIR, when it runs.
running_pid() { running_pid_from "$1/queue/pid/master.pid"; }

start() {
    [ $# = 3 ] || usage
    local dir=$1 hp=$2 domain=$3 host port up
    host="${hp%:*}"
    port="${hp##*:}"
    if ! [[ "$host" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
        die "bad HOST:PORT '$hp' (an IPv4 address and a port)"
    fi
    domain="$(printf '%s' "$domain" | tr '[:upper:]' '[:lower:]')"
    [[ "$domain" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "bad DOMAIN '$3'"
    [ "$(id -u)" = 0 ] || die "run as root (Postfix's master and virtual delivery need it)"
    install_postfix
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    # The postfix user (queue) and nobody (mail) must reach DIR: every
    # directory above it must be searchable by others.
    up=$dir
    while [ "$up" != / ]; do
        up="$(dirname "$up")"
        (( 8#$(stat -c %a "$up") & 1 )) \
            || die "$up is not searchable by others (mode $(stat -c %a "$up")); Postfix could not reach $dir: chmod o+x $up"
    done
    if [ -n "$(running_pid "$dir")" ]; then
        die "a Postfix instance already runs in $dir (stop it first)"
    fi
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data" "$dir/mail"
    chmod 755 "$dir" "$dir/etc"
    chown "$(id -u nobody):$(id -g nobody)" "$dir/mail"
    write_conf "$dir" "$host" "$port" "$domain"
    [ -z "${PF_SUBMISSION:-}" ] || write_submission "$dir"
    # Creates the queue subdirectories with their owners and modes (maildrop
    # and public are group postdrop), checks, then starts the master.
    pfx "$dir/etc" set-permissions >/dev/null || die "postfix set-permissions failed (see above)"
    pfx "$dir/etc" check || die "postfix check failed (see above)"
    pfx "$dir/etc" start >/dev/null || { tail -5 "$dir/maillog" >&2 2>/dev/null || true; die "postfix did not start"; }
    if [ -n "${PF_SUBMISSION:-}" ] && ! wait_greeting "${PF_SUBMISSION%:*}" "${PF_SUBMISSION##*:}"; then
        echo "$me: no 220 greeting on $PF_SUBMISSION (submission) within 20 s; log ends:" >&2
        tail -10 "$dir/maillog" >&2 2>/dev/null || true
        stop "$dir" >/dev/null 2>&1 || true
        exit 1
    fi
    announce_ready "$host" "$port" "$dir/maillog" "$dir" "$dir/queue/pid/master.pid"
}

stop() {
    [ $# = 1 ] || usage
    local dir=$1 pid kids p left=""
    pid="$(running_pid "$dir" || true)"
    [ -n "$pid" ] || return 0
    # The master's children, by parent pid, to wait for them too.
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -s ' \n' ' ' || true)"
    # `postfix stop` only signals the master; wait for it to be gone.
    pfx "$dir/etc" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 200; then
        echo "$me: postfix master $pid still runs, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 50 || true
    fi
    for p in $kids; do
        wait_gone "$p" 100 || { kill -KILL "$p" 2>/dev/null || true; left="$left $p"; }
    done
    [ -z "$left" ] || echo "$me: killed leftover postfix processes:$left" >&2
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) usage ;;
esac
