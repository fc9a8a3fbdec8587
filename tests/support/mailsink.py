#!/usr/bin/env python3
"""mailsink: a small, dependency-free SMTP/LMTP sink used as the destination
in hamail's delivery tests (Python 3.11+ stdlib only).

    python3 tests/support/mailsink.py --listen 127.0.0.31:2627 --dir /tmp/out [options]

Every accepted message is stored atomically as DIR/<id>.eml plus a JSON sidecar
DIR/<id>.json.  The .eml is renamed into place first and the .json last, so a
test that sees the .json can rely on the .eml being complete.  Sidecar keys:

    id, mail_from, rcpt_to, tls, tls_version, auth_user, size, helo, esmtp,
    lmtp, listen, peer, mail_params, rcpt_params, body_8bit, bare_lf, answered

The stored .eml is exactly the DATA payload as received (dot-unstuffed, the
terminating CRLF.CRLF removed, line endings untouched).  "size" is its length.
"answered" is false when the client never got a proper reply to the final dot
(--hang-after-data, --drop-after-data, --garbage-reply dot).

Hostile-server modes (--hang-greeting, --hang-after-data, --drop-after-data,
--garbage-reply, --bad-starttls; at most one) and --slow-reply exist to test
how hamail's SMTP client copes with broken destinations.

On startup one line "READY HOST:PORT" is printed to stdout (with the real port
when --listen used port 0).  SIGTERM/SIGINT exit cleanly with status 0.
Run with --help for all options.
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time

MAX_LINE = 65536          # longest command / data line we accept
DEFAULT_MAX_SIZE = 50 * 1024 * 1024

# --garbage-reply: which replies belong to which stage, and what is sent instead.
STAGES = {"EHLO": "ehlo", "HELO": "ehlo", "LHLO": "ehlo",
          "MAIL": "mail", "RCPT": "rcpt", "DATA": "data"}
GARBAGE = {"text": b"HELLO THERE\r\n",
           "multiline": b"250-ok\r\n250-\x00\x01junk\r\nxyz\r\n"}
NOT_TLS = b"this is not TLS\r\n" * 16


class LineTooLong(Exception):
    pass


class Conn:
    """Line-oriented reader that keeps its own buffer, so we always know
    whether the client has pipelined more input than it was allowed to."""

    def __init__(self, reader, writer, timeout):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def pending(self):
        # Also look at the StreamReader's own buffer (CPython private attribute,
        # checked defensively): bytes there would otherwise survive STARTTLS.
        return len(self.buf) > 0 or len(getattr(self.reader, "_buffer", b"")) > 0

    async def _fill(self):
        data = await asyncio.wait_for(self.reader.read(65536), self.timeout)
        if not data:
            self.eof = True
        else:
            self.buf += data

    async def readline(self):
        """Return one line including its LF (b"" at EOF). Raises LineTooLong."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise LineTooLong()
            if self.eof:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            start = len(self.buf)
            await self._fill()

    def discard_buffer(self):
        self.buf.clear()


def parse_listen(s):
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % s)
    return host, int(port)


def fmt_listen(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def parse_code(s):
    if not (s.isdigit() and len(s) == 3 and s[0] in "2345"):
        raise argparse.ArgumentTypeError("expected a 3-digit SMTP code, got %r" % s)
    return int(s)


def parse_secs(s):
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise argparse.ArgumentTypeError("expected seconds >= 0, got %r" % s)
    return v


def parse_userpass(s):
    user, sep, pw = s.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return user, pw


def parse_code_addr(s):
    code, sep, addr = s.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected CODE:ADDR")
    c = parse_code(code)
    if c < 400:
        raise argparse.ArgumentTypeError("CODE must be 4xx or 5xx")
    return c, addr.lower()


def rcpt_reject_text(code, addr):
    if code == 450:
        return "450 4.2.0 <%s>: try again later" % addr
    if code == 451:
        return "451 4.3.0 <%s>: Temporary lookup failure" % addr
    if code == 452:
        return "452 4.5.3 <%s>: Insufficient system storage" % addr
    if code in (550, 551, 553):
        return "%d 5.1.1 <%s>: Recipient address rejected: User unknown" % (code, addr)
    if code == 552:
        return "552 5.2.2 <%s>: Mailbox full" % addr
    if code == 421:
        return "421 4.3.2 <%s>: Service not available" % addr
    if code < 500:
        return "%d 4.0.0 <%s>: try again later" % (code, addr)
    return "%d 5.7.1 <%s>: Recipient address rejected" % (code, addr)


def lmtp_fail_text(code, addr):
    if code < 500:
        return "%d 4.2.2 <%s>: Mailbox temporarily unavailable" % (code, addr)
    return "%d 5.2.2 <%s>: Mailbox unavailable" % (code, addr)


def parse_path(rest):
    """Parse '<addr> PARAMS...'.  Returns (addr, params) or None on bad syntax.
    params is a list of (KEY-upper, value-or-None)."""
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        return None
    i, quoted, end = 1, False, -1
    while i < len(rest):
        c = rest[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            end = i
            break
        i += 1
    if end < 0:
        return None
    addr = rest[1:end]
    tail = rest[end + 1:]
    if tail and not tail.startswith(" "):
        return None
    params = []
    for p in tail.split():
        k, sep, v = p.partition("=")
        params.append((k.upper(), v if sep else None))
    return addr, params


class Sink:
    def __init__(self, args):
        self.args = args
        self.counter = 0
        self.tempfails_left = args.tempfail_data
        self.ssl_ctx = None
        self.listen_str = None
        self.conns = set()
        self.conn_seq = 0
        self.reject_only = set(a.lower() for a in (args.reject_rcpt_only or []))
        self.lmtp_fail = dict((a, c) for c, a in (args.lmtp_fail_rcpt or []))

    # ---------------------------------------------------------------- util
    def new_id(self):
        self.counter += 1
        return "%d-%d-%d" % (time.time_ns(), os.getpid(), self.counter)

    def store(self, mid, data, meta):
        d = self.args.dir
        for name, payload in ((mid + ".eml", data),
                              (mid + ".json", (json.dumps(meta, indent=1) + "\n").encode())):
            tmp = os.path.join(d, ".tmp-" + name)
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                if self.args.fsync:
                    os.fsync(f.fileno())
            os.rename(tmp, os.path.join(d, name))

    def log(self, cid, direction, text):
        if self.args.verbose:
            sys.stderr.write("[%d] %s %s\n" % (cid, direction, text))
            sys.stderr.flush()

    async def hang(self, cid, conn):
        """Say nothing more, ignoring --timeout; swallow input until the client closes."""
        self.log(cid, "--", "hanging until the client closes")
        while await conn.reader.read(65536):
            pass
        self.log(cid, "--", "client closed connection")

    # ----------------------------------------------------------- handler
    async def handle(self, reader, writer):
        self.conn_seq += 1
        cid = self.conn_seq
        task = asyncio.current_task()
        self.conns.add(task)
        try:
            await self.session(cid, Conn(reader, writer, self.args.timeout))
        except (asyncio.TimeoutError, TimeoutError):
            self.log(cid, "--", "timeout")
            try:
                writer.write(b"421 4.4.2 %s Error: timeout exceeded\r\n" % self.args.name.encode())
            except Exception:
                pass
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as e:
            self.log(cid, "--", "connection error: %r" % (e,))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # never let one session kill the server
            sys.stderr.write("mailsink: session %d crashed: %r\n" % (cid, e))
            import traceback
            traceback.print_exc()
        finally:
            self.conns.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def session(self, cid, conn):
        a = self.args
        name = a.name
        w = conn.writer
        peer = w.get_extra_info("peername")
        peer_s = fmt_listen(peer[0], peer[1]) if peer else None
        stage = "greeting"  # for --garbage-reply: which stage replies belong to

        async def reply(*lines):
            if a.slow_reply:
                await asyncio.sleep(a.slow_reply)
            if a.garbage_reply is not None and stage == a.garbage_reply:
                junk = GARBAGE[a.garbage_style]
                self.log(cid, "S:", "(garbage instead of %s) %r" % (lines[0][:3], junk))
                w.write(junk)
                await w.drain()
                return
            out = []
            for idx, l in enumerate(lines):
                if idx < len(lines) - 1:
                    l = l[:3] + "-" + l[4:]
                self.log(cid, "S:", l)
                out.append(l.encode("utf-8") + b"\r\n")
            w.write(b"".join(out))
            await w.drain()

        self.log(cid, "--", "connect from %s" % peer_s)
        if a.hang_greeting:
            await self.hang(cid, conn)
            return

        # -------------------------------------------------------- greeting
        if a.greeting is not None and a.greeting >= 400:
            if a.greeting < 500:
                await reply("%d 4.3.2 %s Service not available" % (a.greeting, name))
                return
            await reply("%d 5.3.2 %s Service not available" % (a.greeting, name))
            stage = None
            while True:
                line = await conn.readline()
                if not line:
                    return
                if line.strip().upper() == b"QUIT":
                    await reply("221 2.0.0 Bye")
                    return
                await reply("503 5.5.0 Error: service not available")
        greet = a.greeting if a.greeting is not None else 220
        await reply("%d %s %s" % (greet, name, "LMTP" if a.lmtp else "ESMTP mailsink"))

        tls = False
        tls_version = None
        helo = None
        esmtp = False
        auth_user = None
        mail_from = None
        mail_params = None
        rcpts = []
        rcpt_params = []

        def reset_txn():
            nonlocal mail_from, mail_params, rcpts, rcpt_params
            mail_from = None
            mail_params = None
            rcpts = []
            rcpt_params = []

        def save(rcpt_to, data, bare_lf, answered):
            """Store one message; its id, or None if storing failed."""
            mid = self.new_id()
            meta = {
                "id": mid,
                "mail_from": mail_from,
                "rcpt_to": rcpt_to,
                "tls": tls,
                "tls_version": tls_version,
                "auth_user": auth_user,
                "size": len(data),
                "helo": helo,
                "esmtp": esmtp,
                "lmtp": a.lmtp,
                "listen": self.listen_str,
                "peer": peer_s,
                "mail_params": mail_params,
                "rcpt_params": rcpt_params,
                "body_8bit": any(b >= 0x80 for b in data),
                "bare_lf": bare_lf,
                "answered": answered,
            }
            try:
                self.store(mid, data, meta)
                return mid
            except OSError as e:
                sys.stderr.write("mailsink: store failed: %r\n" % (e,))
                return None

        def auth_offered():
            if not a.auth:
                return False
            if self.ssl_ctx is not None and not tls:
                return False  # like smtpd_tls_auth_only = yes
            return True

        while True:
            stage = None
            try:
                raw = await conn.readline()
            except LineTooLong:
                await reply("500 5.5.2 Error: line too long")
                return
            if not raw:
                self.log(cid, "--", "client closed connection")
                return
            line = raw.rstrip(b"\r\n")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = line.decode("latin-1")
            self.log(cid, "C:", text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            stage = STAGES.get(verb)

            # A client may only pipeline when PIPELINING was advertised, and
            # never past these commands (RFC 2920 / RFC 3207).
            if conn.pending():
                must_be_last = verb in ("EHLO", "HELO", "LHLO", "DATA")
                if verb == "STARTTLS":
                    await reply("554 5.5.1 Error: command pipelining after STARTTLS")
                    return
                if must_be_last or (not a.pipelining and verb != "QUIT"):
                    conn.discard_buffer()
                    await reply("503 5.5.0 Error: improper command pipelining after %s" % verb)
                    continue

            if verb in ("EHLO", "HELO", "LHLO"):
                if (verb == "LHLO") != a.lmtp:
                    await reply("502 5.5.2 Error: command not recognized")
                    continue
                if not arg.strip():
                    await reply("501 5.5.4 Syntax: %s hostname" % verb)
                    continue
                helo = arg.strip()
                esmtp = verb != "HELO"
                reset_txn()
                if not esmtp:
                    await reply("250 %s" % name)
                    continue
                lines = ["250 %s" % name]
                if a.pipelining:
                    lines.append("250 PIPELINING")
                lines.append("250 SIZE %d" % a.max_size)
                if (self.ssl_ctx is not None or a.bad_starttls) and not tls:
                    lines.append("250 STARTTLS")
                if auth_offered():
                    lines.append("250 AUTH PLAIN LOGIN")
                lines.append("250 ENHANCEDSTATUSCODES")
                if a.eightbitmime:
                    lines.append("250 8BITMIME")
                if a.smtputf8:
                    lines.append("250 SMTPUTF8")
                await reply(*lines)
                continue

            if verb == "NOOP":
                await reply("250 2.0.0 Ok")
                continue
            if verb == "RSET":
                reset_txn()
                await reply("250 2.0.0 Ok")
                continue
            if verb == "QUIT":
                await reply("221 2.0.0 Bye")
                return

            if verb == "STARTTLS":
                if self.ssl_ctx is None and not a.bad_starttls:
                    await reply("502 5.5.1 Error: command not implemented")
                    continue
                if tls:
                    await reply("554 5.5.1 Error: TLS already active")
                    continue
                if helo is None or not esmtp:
                    await reply("503 5.5.1 Error: send EHLO first")
                    continue
                if arg.strip():
                    await reply("501 5.5.4 Syntax: STARTTLS")
                    continue
                await reply("220 2.0.0 Ready to start TLS")
                if a.bad_starttls:
                    # Take the ClientHello (so closing sends FIN, not RST),
                    # answer it with plain text and hang up.
                    try:
                        await asyncio.wait_for(conn.reader.read(65536), a.timeout)
                    except (asyncio.TimeoutError, TimeoutError):
                        pass
                    self.log(cid, "S:", "(not TLS) %r x16" % NOT_TLS[:17])
                    w.write(NOT_TLS)
                    await w.drain()
                    return
                try:
                    await asyncio.wait_for(
                        w.start_tls(self.ssl_ctx, ssl_handshake_timeout=a.timeout),
                        a.timeout + 5)
                except Exception as e:
                    self.log(cid, "--", "TLS handshake failed: %r" % (e,))
                    return
                tls = True
                sslobj = w.get_extra_info("ssl_object")
                tls_version = sslobj.version() if sslobj is not None else None
                self.log(cid, "--", "TLS established: %s %s" % (
                    tls_version, sslobj.cipher()[0] if sslobj else "?"))
                # RFC 3207: forget everything learned before TLS.
                helo = None
                esmtp = False
                auth_user = None
                reset_txn()
                continue

            if verb == "AUTH":
                if helo is None or not esmtp:
                    await reply("503 5.5.1 Error: send EHLO first")
                    continue
                if not auth_offered():
                    await reply("503 5.5.1 Error: authentication not enabled")
                    continue
                if auth_user is not None:
                    await reply("503 5.5.1 Error: already authenticated")
                    continue
                if mail_from is not None:
                    await reply("503 5.5.1 Error: MAIL transaction in progress")
                    continue
                user = await self.do_auth(conn, reply, arg)
                if user is not None:
                    auth_user = user
                continue

            if verb == "MAIL":
                if helo is None:
                    await reply("503 5.5.1 Error: send %s first" % ("LHLO" if a.lmtp else "HELO/EHLO"))
                    continue
                if mail_from is not None:
                    await reply("503 5.5.1 Error: nested MAIL command")
                    continue
                if a.require_tls and not tls:
                    await reply("530 5.7.0 Must issue a STARTTLS command first")
                    continue
                if a.auth and auth_user is None:
                    await reply("530 5.7.0 Authentication required")
                    continue
                if arg[:5].upper() != "FROM:":
                    await reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                    continue
                parsed = parse_path(arg[5:])
                if parsed is None:
                    await reply("501 5.1.7 Bad sender address syntax")
                    continue
                addr, params = parsed
                if params and not esmtp:
                    await reply("555 5.5.4 Unsupported option: %s" % params[0][0])
                    continue
                err = None
                utf8 = False
                for k, v in params:
                    if k == "SIZE":
                        if v is None or not v.isdigit():
                            err = "501 5.5.4 Bad SIZE syntax"
                        elif int(v) > a.max_size:
                            err = "552 5.3.4 Message size exceeds fixed limit"
                    elif k == "BODY":
                        vv = (v or "").upper()
                        if vv == "7BIT" or (vv == "8BITMIME" and a.eightbitmime):
                            pass
                        else:
                            err = "555 5.5.4 Unsupported option: BODY=%s" % v
                    elif k == "SMTPUTF8" and a.smtputf8 and v is None:
                        utf8 = True
                    elif k == "AUTH" and auth_offered():
                        pass
                    else:
                        err = "555 5.5.4 Unsupported option: %s" % k
                    if err:
                        break
                if err:
                    await reply(err)
                    continue
                if not addr.isascii() and not utf8:
                    await reply("553 5.6.7 Must declare SMTPUTF8 to send unicode address")
                    continue
                mail_from = addr
                mail_params = [k if v is None else "%s=%s" % (k, v) for k, v in params]
                rcpts = []
                rcpt_params = []
                await reply("250 2.1.0 Ok")
                continue

            if verb == "RCPT":
                if mail_from is None:
                    await reply("503 5.5.1 Error: need MAIL command")
                    continue
                if arg[:3].upper() != "TO:":
                    await reply("501 5.5.4 Syntax: RCPT TO:<address>")
                    continue
                parsed = parse_path(arg[3:])
                if parsed is None or parsed[0] == "":
                    await reply("501 5.1.3 Bad recipient address syntax")
                    continue
                addr, params = parsed
                if params:
                    await reply("555 5.5.4 Unsupported option: %s" % params[0][0])
                    continue
                if not addr.isascii() and "SMTPUTF8" not in mail_params:
                    await reply("553 5.6.7 Must declare SMTPUTF8 to send unicode address")
                    continue
                if a.reject_rcpt is not None and (
                        not self.reject_only or addr.lower() in self.reject_only):
                    await reply(rcpt_reject_text(a.reject_rcpt, addr))
                    continue
                rcpts.append(addr)
                rcpt_params.append([])
                await reply("250 2.1.5 Ok")
                continue

            if verb == "DATA":
                if mail_from is None:
                    await reply("503 5.5.1 Error: need MAIL command")
                    continue
                if not rcpts:
                    await reply("554 5.5.1 Error: no valid recipients")
                    continue
                if arg.strip():
                    await reply("501 5.5.4 Syntax: DATA")
                    continue
                await reply("354 End data with <CR><LF>.<CR><LF>")
                if stage == a.garbage_reply:
                    reset_txn()  # the client got no 354: no message follows
                    continue
                data, too_big, bare_lf = await self.read_data(conn)
                if data is None:
                    return  # EOF inside DATA
                self.log(cid, "--", "received %d bytes" % len(data))
                stage = "dot"
                if a.hang_after_data or a.drop_after_data:
                    if not too_big:
                        save(rcpts, data, bare_lf, False)
                    if a.drop_after_data:
                        self.log(cid, "--", "closing without a reply")
                        return
                    await self.hang(cid, conn)
                    return
                if too_big:
                    for _ in (rcpts if a.lmtp else [None]):
                        await reply("552 5.3.4 Message size exceeds fixed limit")
                    reset_txn()
                    continue
                if self.tempfails_left > 0:
                    self.tempfails_left -= 1
                    msg = "451 4.3.0 Error: try again later"
                    for _ in (rcpts if a.lmtp else [None]):
                        await reply(msg)
                    reset_txn()
                    continue
                replies = []
                delivered = []
                for r in rcpts:
                    fc = self.lmtp_fail.get(r.lower()) if a.lmtp else None
                    if fc is not None:
                        replies.append(lmtp_fail_text(fc, r))
                    else:
                        delivered.append(r)
                        replies.append(None)
                mid = None
                if delivered:
                    mid = save(delivered, data, bare_lf, a.garbage_reply != "dot")
                    if mid is None:
                        for _ in (rcpts if a.lmtp else [None]):
                            await reply("451 4.3.0 Error: local storage failure")
                        reset_txn()
                        continue
                ok = "250 2.0.0 Ok: queued as %s" % mid
                if a.lmtp:
                    for r in replies:
                        await reply(r if r is not None else ok)
                else:
                    await reply(ok)
                reset_txn()
                continue

            if not verb:
                await reply("500 5.5.2 Error: bad syntax")
                continue
            await reply("502 5.5.2 Error: command not recognized")

    async def read_data(self, conn):
        """Read a DATA payload up to CRLF.CRLF. Returns (bytes|None, too_big, bare_lf)."""
        chunks = []
        size = 0
        too_big = False
        bare_lf = False
        prev_crlf = True  # the DATA command line itself ended the previous line
        while True:
            try:
                line = await conn.readline()
            except LineTooLong:
                # a very long line: take it in pieces, it can't be the terminator
                line = bytes(conn.buf[:MAX_LINE])
                del conn.buf[:MAX_LINE]
                if prev_crlf and line.startswith(b"."):
                    line = line[1:]
                if not too_big:
                    chunks.append(line)
                    size += len(line)
                prev_crlf = False
                if size > self.args.max_size:
                    too_big = True
                    chunks = []
                continue
            if not line or not line.endswith(b"\n"):
                return None, False, bare_lf  # EOF
            if line == b".\r\n" and prev_crlf:
                break
            is_crlf = line.endswith(b"\r\n")
            if not is_crlf:
                bare_lf = True
            if line.startswith(b".") and prev_crlf:
                line = line[1:]
            prev_crlf = is_crlf
            if not too_big:
                chunks.append(line)
                size += len(line)
                if size > self.args.max_size:
                    too_big = True
                    chunks = []
        return b"".join(chunks), too_big, bare_lf

    async def do_auth(self, conn, reply, arg):
        parts = arg.split()
        if not parts:
            await reply("501 5.5.4 Syntax: AUTH mechanism")
            return None
        mech = parts[0].upper()
        initial = parts[1] if len(parts) > 1 else None
        want_user, want_pass = self.args.auth

        async def challenge(prompt):
            await reply("334 " + prompt)
            l = await conn.readline()
            if not l:
                raise ConnectionError("EOF during AUTH")
            return l.rstrip(b"\r\n").decode("latin-1")

        def b64(s):
            if s == "=":
                return b""
            return base64.b64decode(s.encode("ascii"), validate=True)

        try:
            if mech == "PLAIN":
                resp = initial if initial is not None else await challenge("")
                if resp == "*":
                    await reply("501 5.7.0 Error: authentication aborted")
                    return None
                fields = b64(resp).split(b"\0")
                if len(fields) != 3:
                    raise ValueError("bad PLAIN response")
                _authz, user, pw = (f.decode("utf-8") for f in fields)
            elif mech == "LOGIN":
                if initial is not None:
                    u = initial
                else:
                    u = await challenge("VXNlcm5hbWU6")
                if u == "*":
                    await reply("501 5.7.0 Error: authentication aborted")
                    return None
                user = b64(u).decode("utf-8")
                p = await challenge("UGFzc3dvcmQ6")
                if p == "*":
                    await reply("501 5.7.0 Error: authentication aborted")
                    return None
                pw = b64(p).decode("utf-8")
            else:
                await reply("535 5.7.8 Error: authentication failed: Invalid authentication mechanism")
                return None
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            await reply("501 5.5.2 Error: invalid base64 data")
            return None
        if user == want_user and pw == want_pass:
            await reply("235 2.7.0 Authentication successful")
            return user
        await reply("535 5.7.8 Error: authentication failed: authentication failure")
        return None


def ensure_cert(args, host):
    cert, key = args.tls_cert, args.tls_key
    if os.path.exists(cert) and os.path.exists(key):
        return
    import fcntl
    for f in (cert, key):
        if os.path.dirname(f):
            os.makedirs(os.path.dirname(f), exist_ok=True)
    # Serialise concurrent generators (several sinks started at once sharing
    # one cert path) by locking the cert's directory; no stray lock file.
    lock = os.open(os.path.dirname(os.path.abspath(cert)), os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(cert) and os.path.exists(key):
            return
        san = "DNS:%s,DNS:localhost" % args.name
        try:
            import ipaddress
            ipaddress.ip_address(host)
            san += ",IP:%s" % host
        except ValueError:
            pass
        tmp_cert = "%s.tmp-%d" % (cert, os.getpid())
        tmp_key = "%s.tmp-%d" % (key, os.getpid())
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-subj", "/CN=%s" % args.name, "-days", "2",
             "-addext", "subjectAltName=" + san,
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "extendedKeyUsage=serverAuth",
             "-keyout", tmp_key, "-out", tmp_cert],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        os.rename(tmp_key, key)
        os.rename(tmp_cert, cert)
    finally:
        os.close(lock)


async def main_async(args):
    host, port = args.listen
    sink = Sink(args)
    if args.tls_cert:
        ensure_cert(args, host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        sink.ssl_ctx = ctx

    server = await asyncio.start_server(sink.handle, host, port, reuse_address=True,
                                        backlog=1024, limit=MAX_LINE * 2)
    sock = server.sockets[0]
    real_port = sock.getsockname()[1]
    sink.listen_str = fmt_listen(host, real_port)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sys.stdout.write("READY %s\n" % sink.listen_str)
    sys.stdout.flush()

    await stop.wait()
    server.close()
    for t in list(sink.conns):
        t.cancel()
    if sink.conns:
        await asyncio.wait(list(sink.conns), timeout=2)


def main():
    p = argparse.ArgumentParser(description="SMTP/LMTP sink for hamail tests")
    p.add_argument("--listen", required=True, type=parse_listen, metavar="HOST:PORT",
                   help="address to listen on (port 0 = pick one; see READY line)")
    p.add_argument("--dir", required=True, help="directory for <id>.eml + <id>.json")
    p.add_argument("--name", default="sink.test", help="host name for banner/EHLO")
    p.add_argument("--tls-cert", help="PEM cert; generated (self-signed) if missing")
    p.add_argument("--tls-key", help="PEM key (default: CERT.key)")
    p.add_argument("--require-tls", action="store_true",
                   help="530 to MAIL before STARTTLS (needs --tls-cert)")
    p.add_argument("--auth", type=parse_userpass, metavar="USER:PASS",
                   help="offer AUTH PLAIN LOGIN (after STARTTLS if TLS is configured) "
                        "and require it before MAIL")
    p.add_argument("--reject-rcpt", type=parse_code, metavar="CODE",
                   help="answer RCPT with CODE (e.g. 550, 450)")
    p.add_argument("--reject-rcpt-only", action="append", metavar="ADDR",
                   help="limit --reject-rcpt to these addresses (repeatable)")
    p.add_argument("--lmtp-fail-rcpt", action="append", type=parse_code_addr,
                   metavar="CODE:ADDR",
                   help="LMTP: after DATA answer CODE for ADDR (repeatable)")
    p.add_argument("--tempfail-data", type=int, default=0, metavar="N",
                   help="451 at end of DATA for the first N messages")
    p.add_argument("--no-8bitmime", dest="eightbitmime", action="store_false")
    p.add_argument("--no-pipelining", dest="pipelining", action="store_false")
    p.add_argument("--no-smtputf8", dest="smtputf8", action="store_false")
    p.add_argument("--greeting", type=parse_code, metavar="CODE",
                   help="greet with CODE (4xx: reply and close; 5xx: 503 to all but QUIT)")
    p.add_argument("--lmtp", action="store_true", help="speak LMTP (LHLO, per-rcpt DATA replies)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="SIZE limit in bytes")
    p.add_argument("--timeout", type=float, default=300.0, help="idle timeout in seconds")
    p.add_argument("--fsync", action="store_true", help="fsync stored files")
    p.add_argument("-v", "--verbose", action="store_true", help="log the dialogue to stderr")
    h = p.add_argument_group("hostile remote server (at most one of these)")
    x = h.add_mutually_exclusive_group()
    x.add_argument("--hang-greeting", action="store_true",
                   help="accept the connection, never greet; keep it open (ignoring "
                        "--timeout) until the client closes")
    x.add_argument("--hang-after-data", action="store_true",
                   help="read the message to the final dot, store it with "
                        "\"answered\": false, never reply; keep the connection open "
                        "(ignoring --timeout) until the client closes")
    x.add_argument("--drop-after-data", action="store_true",
                   help="read the message to the final dot, store it with "
                        "\"answered\": false, close the connection without a reply")
    x.add_argument("--garbage-reply", choices=("greeting", "ehlo", "mail", "rcpt", "data", "dot"),
                   metavar="WHEN",
                   help="send garbage instead of every reply at stage WHEN: greeting, "
                        "ehlo (EHLO/HELO/LHLO), mail, rcpt, data (the reply to DATA; no "
                        "message is read then), dot (after the final dot; the message is "
                        "stored with \"answered\": false); other replies stay normal")
    x.add_argument("--bad-starttls", action="store_true",
                   help="advertise STARTTLS; on STARTTLS reply 220, then send plain-text "
                        "junk instead of a TLS handshake and close. Plain sessions "
                        "are served normally. Not with --tls-cert")
    h.add_argument("--garbage-style", choices=sorted(GARBAGE),
                   help="for --garbage-reply: text = %r (default), multiline = %r"
                        % (GARBAGE["text"].decode(), GARBAGE["multiline"].decode()))
    h.add_argument("--slow-reply", type=parse_secs, default=0.0, metavar="SECS",
                   help="wait SECS (float) before every reply, garbage included")
    args = p.parse_args()

    if args.tls_key and not args.tls_cert:
        p.error("--tls-key needs --tls-cert")
    if args.tls_cert and not args.tls_key:
        args.tls_key = args.tls_cert + ".key"
    if args.require_tls and not args.tls_cert:
        p.error("--require-tls needs --tls-cert")
    if args.reject_rcpt_only and args.reject_rcpt is None:
        p.error("--reject-rcpt-only needs --reject-rcpt")
    if args.lmtp_fail_rcpt and not args.lmtp:
        p.error("--lmtp-fail-rcpt needs --lmtp")
    if args.reject_rcpt is not None and args.reject_rcpt < 400:
        p.error("--reject-rcpt CODE must be 4xx or 5xx")
    if args.garbage_style and not args.garbage_reply:
        p.error("--garbage-style needs --garbage-reply")
    args.garbage_style = args.garbage_style or "text"
    if args.bad_starttls and args.tls_cert:
        p.error("--bad-starttls and --tls-cert are exclusive")
    os.makedirs(args.dir, exist_ok=True)

    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    except subprocess.CalledProcessError as e:
        sys.stderr.write("mailsink: openssl failed: %s\n" % (e.stderr or b"").decode(errors="replace"))
        sys.exit(1)
    except OSError as e:
        sys.stderr.write("mailsink: %s\n" % e)
        sys.exit(1)


if __name__ == "__main__":
    main()
