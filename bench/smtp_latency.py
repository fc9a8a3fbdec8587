#!/usr/bin/env python3
"""bench/smtp_latency: end-of-DATA -> 250 latency of an SMTP server.

Opens N concurrent sessions (spread round-robin over the given targets),
sends M messages in total, each of about SIZE bytes, and measures for every
message the time from sending the final CRLF.CRLF to receiving the reply.
Each connection says EHLO once, then repeats MAIL/RCPT/DATA without RSET:
a server must accept a new transaction after a 250 to DATA (RFC 5321 4.1.4).

Prints one line:  p50_ms=.. p99_ms=.. msgs_per_s=.. msgs=.. errors=..
and exits 1 if any message was not accepted with a 250.

Usage: smtp_latency.py HOST:PORT [HOST:PORT ...] [-c 50] [-n 2000] [-s 4096]
Standard library only, so that it runs wherever python3 does.
"""

import argparse
import socket
import sys
import threading
import time


class SmtpError(Exception):
    pass


class Session:
    """One SMTP connection: blocking socket, line-buffered replies."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        # The end of DATA is one small write; without NODELAY, Nagle could
        # hold it back behind the unacknowledged body and add to the latency.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def reply(self):
        """Reads a (possibly multi-line) reply; returns (code, last line)."""
        while True:
            line = self.rfile.readline(4096)
            if not line:
                raise SmtpError("connection closed by server")
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), line.decode("latin-1").rstrip()

    def expect(self, code, what):
        got, line = self.reply()
        if got != code:
            raise SmtpError(f"{what}: expected {code}, got {line!r}")

    def command(self, text, code):
        self.sock.sendall(text.encode("ascii") + b"\r\n")
        self.expect(code, text.split(" ", 1)[0])

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except (OSError, SmtpError):
            pass
        self.sock.close()


def make_body(size, sender, rcpt):
    """Headers plus 76-character text lines up to about `size` bytes, CRLF
    line ends, no line starting with '.' (so no dot-stuffing is needed)."""
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: smtp_latency\r\n"
        "Message-ID: <bench@client.example>\r\n\r\n"
    )
    line = ("0123456789" * 8)[:76] + "\r\n"
    lines = max(0, (size - len(head)) // len(line))
    return (head + line * lines).encode("ascii")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="+", help="HOST:PORT, one or more")
    ap.add_argument("-c", "--sessions", type=int, default=50)
    ap.add_argument("-n", "--messages", type=int, default=2000)
    ap.add_argument("-s", "--size", type=int, default=4096)
    ap.add_argument("-f", "--sender", default="sender@client.example")
    ap.add_argument("-t", "--rcpt", default="rcpt@bench.example")
    ap.add_argument("--timeout", type=float, default=60.0, help="per reply, seconds")
    args = ap.parse_args()

    targets = []
    for t in args.targets:
        host, _, port = t.rpartition(":")
        targets.append((host, int(port)))
    # The body ends with CRLF, so ".\r\n" after it completes "\r\n.\r\n".
    body = make_body(args.size, args.sender, args.rcpt)
    eod = b".\r\n"

    lock = threading.Lock()
    left = [args.messages]  # messages not yet claimed by a session
    latencies = []
    errors = []

    def claim():
        with lock:
            if left[0] <= 0:
                return False
            left[0] -= 1
            return True

    def worker(host, port):
        mine = []
        try:
            s = Session(host, port, args.timeout)
            s.expect(220, "greeting")
            s.command("EHLO client.example", 250)
            while claim():
                s.command(f"MAIL FROM:<{args.sender}>", 250)
                s.command(f"RCPT TO:<{args.rcpt}>", 250)
                s.command("DATA", 354)
                s.sock.sendall(body)
                t0 = time.perf_counter()
                s.sock.sendall(eod)
                s.expect(250, "end of DATA")
                mine.append(time.perf_counter() - t0)
            s.close()
        except (OSError, SmtpError) as e:
            with lock:
                errors.append(f"{host}:{port}: {e}")
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=worker, args=targets[i % len(targets)], daemon=True)
        for i in range(args.sessions)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    for e in errors[:5]:
        print(f"smtp_latency: {e}", file=sys.stderr)
    if len(errors) > 5:
        print(f"smtp_latency: ... {len(errors) - 5} more errors", file=sys.stderr)
    lat = sorted(latencies)

    def pct(p):  # nearest rank
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, max(0, int(round(p / 100.0 * len(lat))) - 1))] * 1000.0

    print(
        f"min_ms={(lat[0] * 1000.0 if lat else float('nan')):.2f} p50_ms={pct(50):.2f} p99_ms={pct(99):.2f} "
        f"msgs_per_s={len(lat) / wall:.1f} msgs={len(lat)} errors={len(errors)}"
    )
    # A failed session loses the message it was on (the other sessions take
    # the rest), so a shortfall is a failure too.
    return 1 if errors or len(lat) < args.messages else 0


if __name__ == "__main__":
    sys.exit(main())
