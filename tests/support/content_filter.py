#!/usr/bin/env python3
"""content_filter: a small after-queue content filter in amavis's manner, for
hamail's tests (Python 3.11+ stdlib only).

    python3 tests/support/content_filter.py --listen 127.0.0.1:18541 \
        --reinject 127.0.0.1:18542 [--mode pass|tempfail|reject|drop] [--lmtp]

It takes each message by SMTP (or LMTP with --lmtp), adds the header
`X-Filtered: yes` on top and re-injects it by SMTP, same envelope, into the
MTA's re-injection listener (--reinject; given more than once, the first
that takes the message, as for a cluster). Like amavis it answers the end of
DATA only after the re-injection: 250 with the MTA's own reply
("250 2.0.0 from MTA(smtp:[HOST]:PORT): 250 2.0.0 Ok: queued as ID"), the
MTA's 5xx likewise when it refused the message for good, or 451 when it
could not be reached or answered 4xx.

Modes (--mode), for the failure cases:
    pass      filter and re-inject (the default)
    tempfail  answer 451 4.5.0 to the end of DATA, re-inject nothing
    reject    answer 554 5.7.0 to the end of DATA, re-inject nothing
    drop      answer 250 and re-inject nothing (a filter that loses mail)
    hang      never answer the end of DATA, re-inject nothing (a filter
              stuck on the message; the session ends when the MTA gives up)

One line "READY HOST:PORT" goes to stdout at startup; one line per message to
stderr. SIGTERM/SIGINT exit with status 0.
"""

import argparse
import asyncio
import signal
import smtplib
import sys

MAX_LINE = 8192
MAX_SIZE = 64 * 1024 * 1024


def log(text):
    print(f"content_filter: {text}", file=sys.stderr, flush=True)


def host_port(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def path_of(arg):
    """The address inside <...> of a MAIL FROM / RCPT TO argument."""
    start, end = arg.find("<"), arg.find(">")
    if start < 0 or end < start:
        return None
    return arg[start + 1:end]


def reinject(target, sender, recipients, message):
    """Sends the filtered message back; returns the MTA's final reply or
    raises smtplib's exception."""
    host, port = target
    with smtplib.SMTP(host, port, local_hostname="content-filter.test", timeout=60) as s:
        s.ehlo()
        options = []
        if any(b >= 0x80 for b in message) and s.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not all(a.isascii() for a in [sender, *recipients]) and s.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        code, text = s.mail(sender, options)
        if code >= 400:
            raise smtplib.SMTPSenderRefused(code, text, sender)
        for r in recipients:
            code, text = s.rcpt(r)
            if code >= 400:
                raise smtplib.SMTPRecipientsRefused({r: (code, text)})
        code, text = s.data(message)
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return f"{code} {text.decode('utf-8', 'replace')}"


class Session:
    def __init__(self, reader, writer, args):
        self.reader = reader
        self.writer = writer
        self.args = args
        self.reset()

    def reset(self):
        self.sender = None
        self.recipients = []

    async def reply(self, line):
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def read_line(self):
        line = await self.reader.readuntil(b"\n")
        if len(line) > MAX_LINE:
            raise ValueError("line too long")
        return line

    async def read_data(self):
        out = bytearray()
        while True:
            line = await self.read_line()
            if line in (b".\r\n", b".\n"):
                return bytes(out)
            if line.startswith(b"."):
                line = line[1:]
            out += line
            if len(out) > MAX_SIZE:
                raise ValueError("message too big")

    async def run(self):
        greeting = "LMTP" if self.args.lmtp else "ESMTP"
        await self.reply(f"220 content-filter.test {greeting} filter ready")
        while True:
            try:
                raw = await self.read_line()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "LHLO"):
                self.reset()
                await self.reply("250-content-filter.test")
                for ext in ("PIPELINING", "8BITMIME", "SMTPUTF8"):
                    await self.reply(f"250-{ext}")
                await self.reply("250 ENHANCEDSTATUSCODES")
            elif verb == "HELO":
                self.reset()
                await self.reply("250 content-filter.test")
            elif verb == "MAIL":
                self.reset()
                self.sender = path_of(arg)
                await self.reply("250 2.1.0 Ok" if self.sender is not None
                                 else "501 5.1.7 bad sender")
            elif verb == "RCPT":
                rcpt = path_of(arg)
                if self.sender is None or not rcpt:
                    await self.reply("503 5.5.1 need MAIL, or bad recipient")
                else:
                    self.recipients.append(rcpt)
                    await self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not self.recipients:
                    await self.reply("503 5.5.1 need RCPT")
                    continue
                await self.reply("354 End data with <CR><LF>.<CR><LF>")
                body = await self.read_data()
                answer = await self.filter(body)
                count = len(self.recipients) if self.args.lmtp else 1
                for _ in range(count):
                    await self.reply(answer)
                self.reset()
            elif verb == "RSET":
                self.reset()
                await self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                await self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            else:
                await self.reply("502 5.5.2 command not recognized")

    async def filter(self, body):
        mode = self.args.mode
        who = f"from=<{self.sender}> to={self.recipients}"
        if mode == "tempfail":
            log(f"tempfail {who}")
            return "451 4.5.0 content filter busy, try again later"
        if mode == "reject":
            log(f"reject {who}")
            return "554 5.7.0 Rejected by content filter: looks like a virus"
        if mode == "drop":
            log(f"drop {who}")
            return "250 2.0.0 Ok, discarded"
        if mode == "hang":
            log(f"hang {who}")
            await self.reader.read()
            raise ConnectionError("the MTA gave up waiting")
        message = b"X-Filtered: yes\r\n" + body
        failure = "no re-injection target"
        for target in self.args.reinject:
            host, port = target
            try:
                answer = await asyncio.to_thread(
                    reinject, target, self.sender, self.recipients, message)
            except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as e:
                code, text = (e.smtp_code, e.smtp_error) if isinstance(
                    e, smtplib.SMTPResponseException) else next(iter(e.recipients.values()))
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
                log(f"re-injection into {target} refused {who}: {code} {text}")
                if code >= 500:
                    return f"554 5.6.0 from MTA(smtp:[{host}]:{port}): {code} {text}"
                failure = f"{code} {text}"[:200]
                continue
            except (smtplib.SMTPException, OSError) as e:
                log(f"re-injection into {target} failed {who}: {e}")
                failure = str(e)[:200]
                continue
            log(f"passed {who}: {answer}")
            return f"250 2.0.0 from MTA(smtp:[{host}]:{port}): {answer}"
        return f"451 4.6.0 re-injection failed: {failure}"


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, type=host_port)
    p.add_argument("--reinject", required=True, type=host_port, action="append")
    p.add_argument("--mode", choices=["pass", "tempfail", "reject", "drop", "hang"], default="pass")
    p.add_argument("--lmtp", action="store_true", help="speak LMTP instead of SMTP")
    args = p.parse_args()

    async def handle(reader, writer):
        try:
            await Session(reader, writer, args).run()
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError,
                ConnectionError) as e:
            log(f"session ended: {e}")
        finally:
            writer.close()

    host, port = args.listen
    server = await asyncio.start_server(handle, host, port, limit=MAX_LINE * 2)
    sock = server.sockets[0].getsockname()
    print(f"READY {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
