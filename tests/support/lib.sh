# Shell helpers shared by the tests/support scripts that run private
# daemons (Dovecot, Postfix). Sourced; sets nothing up by itself.

die() { echo "$me: $*" >&2; exit 1; }

# Whether process $1 runs (a zombie does not: the daemonized master's
# parent is init, which may reap it only later).
alive() {
    local s
    s="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    s="${s// /}"
    [ -n "$s" ] && [ "${s:0:1}" != Z ]
}

# Waits up to $2 deciseconds for process $1 to exit.
wait_gone() {
    local _
    for _ in $(seq 1 "$2"); do alive "$1" || return 0; sleep 0.1; done
    ! alive "$1"
}

# The pid in pid file $1 when that process runs.
running_pid_from() {
    local pid
    pid="$(tr -d ' \n' 2>/dev/null < "$1" || true)"
    [ -n "$pid" ] && alive "$pid" && echo "$pid"
}

# Waits (at most 20 s) for an "220" greeting on HOST PORT.
wait_greeting() {
    local _
    for _ in $(seq 1 200); do
        timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 3 <&3" 2>/dev/null | grep -q 220 && return 0
        sleep 0.1
    done
    return 1
}

# After a daemon's master started: waits for its 220 on HOST PORT, then
# announces "READY HOST:PORT" and "PIDFILE FILE" to the test; if no greeting
# comes, shows the end of LOG, stops the daemon in DIR (the calling
# script's `stop`) and exits 1.
announce_ready() { # HOST PORT LOG DIR PIDFILE
    if ! wait_greeting "$1" "$2"; then
        echo "$me: no 220 greeting on $1:$2 within 20 s; log ends:" >&2
        tail -10 "$3" >&2 2>/dev/null || true
        stop "$4" >/dev/null 2>&1 || true
        exit 1
    fi
    echo "READY $1:$2"
    echo "PIDFILE $5"
}
