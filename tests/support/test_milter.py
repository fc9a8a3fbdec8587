#!/usr/bin/python3
"""tests/support/test_milter.py: a milter written with pymilter (Debian's
python3-milter, over the real libmilter) that takes every milter action,
chosen by the first word of the message's Subject:

  reject-code     550 5.7.1 Rejected by the test milter (setreply + REJECT)
  reject          REJECT without text
  tempfail-code   451 4.7.0 Greylisted by the test milter
  tempfail        TEMPFAIL without text
  discard         DISCARD
  quarantine      quarantine("held by the test milter"), then ACCEPT
  headers         add X-Milter-Added, insert X-Milter-Top at 0, change
                  X-Change-Me, delete X-Remove-Me
  body            replace the body
  bigbody         replace the body with BIGBODY bytes (default 300000)
  addrcpt         add the recipient extra@example.com
  delrcpt         delete the recipient other@example.com
  chgfrom         change the sender to changed@client.example
  accept          ACCEPT at the Subject header: no more callbacks, no change
  accept-NAME     the same, only in the milter called NAME
  progress        five SMFIR_PROGRESS one second apart, then on as usual

Any message it does not accept early gets "X-Test-Milter-NAME: passed"
with the macros it saw (i, j, {daemon_name}, {mail_addr}, {rcpt_addr},
{auth_authen}) and "saw=..." naming the X-Test-Milter-* headers already
present (another milter's, earlier in the chain).

  /usr/bin/python3 tests/support/test_milter.py NAME SOCKET
  e.g. test_milter.py first inet:18530@127.0.0.1

The connect and MAIL callbacks are @noreply (SMFIP_NR_CONN, NR_MAIL) and
the unknown/data callbacks @nocallback: the MTA must honour both.
"""

import os
import sys
import time

import Milter

NAME = sys.argv[1] if len(sys.argv) > 1 else "first"
SOCKET = sys.argv[2] if len(sys.argv) > 2 else "inet:18530@127.0.0.1"
BIGBODY = int(os.environ.get("BIGBODY", "300000"))


def text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")


class TestMilter(Milter.Base):
    def __init__(self):
        self.reset()

    def reset(self):
        self.subject = ""
        self.rcpts = []
        self.seen = []
        self.macros = {}

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        self.macros["j"] = text(self.getsymval("j"))
        self.macros["daemon_name"] = text(self.getsymval("{daemon_name}"))
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *args):
        self.reset_message()
        self.macros["mail_addr"] = text(self.getsymval("{mail_addr}"))
        self.macros["auth_authen"] = text(self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    def reset_message(self):
        j = self.macros.get("j", "")
        d = self.macros.get("daemon_name", "")
        self.reset()
        self.macros["j"] = j
        self.macros["daemon_name"] = d

    def envrcpt(self, to, *args):
        self.rcpts.append(text(self.getsymval("{rcpt_addr}")))
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self):
        return Milter.CONTINUE

    @Milter.nocallback
    def unknown(self, cmd):
        return Milter.CONTINUE

    def header(self, name, value):
        if name.lower().startswith("x-test-milter-"):
            self.seen.append(name)
        if name.lower() == "subject":
            self.subject = value.strip()
            if self.subject.split(" ")[0] in ("accept", "accept-" + NAME):
                return Milter.ACCEPT
        return Milter.CONTINUE

    def eoh(self):
        self.macros["i"] = text(self.getsymval("i"))
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        words = self.subject.split(" ")
        cmd = words[0] if words else ""
        if cmd == "reject-code":
            self.setreply("550", "5.7.1", "Rejected by the test milter")
            return Milter.REJECT
        if cmd == "reject":
            return Milter.REJECT
        if cmd == "tempfail-code":
            self.setreply("451", "4.7.0", "Greylisted by the test milter")
            return Milter.TEMPFAIL
        if cmd == "tempfail":
            return Milter.TEMPFAIL
        if cmd == "discard":
            return Milter.DISCARD
        if cmd == "progress":
            for _ in range(5):
                time.sleep(1)
                self.progress()
        if cmd == "quarantine":
            self.quarantine("held by the test milter")
        if cmd == "headers":
            self.addheader("X-Milter-Added", "yes")
            self.addheader("X-Milter-Top", "first", 0)
            self.chgheader("X-Change-Me", 1, "changed")
            self.chgheader("X-Remove-Me", 1, "")
        if cmd == "body":
            self.replacebody(b"Body replaced by the test milter\r\n")
        if cmd == "bigbody":
            left = BIGBODY
            while left > 0:
                n = min(left, 60000)
                self.replacebody(b"x" * (n - 2) + b"\r\n")
                left -= n
        if cmd == "addrcpt":
            self.addrcpt("<extra@example.com>")
        if cmd == "delrcpt":
            self.delrcpt("<other@example.com>")
        if cmd == "chgfrom":
            self.chgfrom("<changed@client.example>")
        m = self.macros
        self.addheader(
            "X-Test-Milter-" + NAME,
            "passed i=%s j=%s daemon=%s mail=%s rcpt=%s auth=%s saw=%s"
            % (
                m.get("i", ""),
                m.get("j", ""),
                m.get("daemon_name", ""),
                m.get("mail_addr", ""),
                ",".join(self.rcpts),
                m.get("auth_authen", "") or "-",
                ",".join(self.seen) or "-",
            ),
        )
        return Milter.ACCEPT

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(
        Milter.ADDHDRS
        | Milter.CHGHDRS
        | Milter.CHGBODY
        | Milter.ADDRCPT
        | Milter.DELRCPT
        | Milter.QUARANTINE
        | Milter.CHGFROM
    )
    sys.stdout.write("READY %s %s\n" % (NAME, SOCKET))
    sys.stdout.flush()
    Milter.runmilter("hamail-test-" + NAME, SOCKET, 60)


if __name__ == "__main__":
    main()
