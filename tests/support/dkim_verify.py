#!/usr/bin/python3
"""Verifies every DKIM-Signature of a message with dkimpy (Debian's
python3-dkim), an independent verifier, its key lookups sent over TCP to
one DNS server (a hamail node) with dnspython. Prints one line per
signature, topmost first:

    d=example.com s=r20261206 a=rsa-sha256 pass
    d=example.com s=e20261206 a=ed25519-sha256 fail (reason)

and `signatures=N` last. Exit status 0 when there is at least one
signature and every one passes, 1 otherwise.

usage: dkim_verify.py --server 127.0.0.11 --port 19600 MESSAGE_FILE
"""

import argparse
import sys

import dkim
import dns.message
import dns.query
import dns.rdatatype


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("message")
    a = p.parse_args()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        # TCP: an RSA-2048 key record is close to the 512-byte UDP limit.
        r = dns.query.tcp(q, a.server, port=a.port, timeout=timeout)
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(list(rrset)[0].strings)
        return None

    with open(a.message, "rb") as f:
        message = f.read()
    d = dkim.DKIM(message)
    count = len([1 for (k, _) in d.headers if k.lower() == b"dkim-signature"])
    ok = count > 0
    for i in range(count):
        v = dkim.DKIM(message)
        try:
            passed = v.verify(idx=i, dnsfunc=dnsfunc)
            reason = ""
        except dkim.DKIMException as e:
            passed = False
            reason = " (%s)" % e
        f = v.signature_fields or {}
        print(
            "d=%s s=%s a=%s %s%s"
            % (
                f.get(b"d", b"?").decode(),
                f.get(b"s", b"?").decode(),
                f.get(b"a", b"?").decode(),
                "pass" if passed else "fail",
                reason,
            )
        )
        ok = ok and passed
    print("signatures=%d" % count)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
