#!/usr/bin/env python3
"""bench/dns-queries: writes a dnsperf query file in its binary input format
(-B: each query a 2-byte length and a DNS message), so that each query can
carry its own EDNS DO bit, which dnsperf's text format cannot.

Usage: dns-queries.py OUT ZONE NAMES COUNT MIX
  MIX is hits | misses | mixed | flood
  hits   : A queries for names that exist (hostN), no DO
  misses : 80 % NXDOMAIN (random names), 20 % NODATA (AAAA of hostN), no DO
  mixed  : 70 % hits, 20 % NXDOMAIN, 10 % NODATA; 10 % of all with DO
  flood  : random names asked once each: half NXDOMAIN, half under the
           zone's wildcard *.wild (answered, so they enter the cache)
"""

import random
import struct
import sys


def query(name: str, qtype: int, dnssec_ok: bool) -> bytes:
    header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 1)
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    question = wire + b"\x00" + struct.pack(">HH", qtype, 1)
    # OPT: root, type 41, payload 1232, ext-rcode 0, version 0, DO flag.
    opt = b"\x00" + struct.pack(">HHBBHH", 41, 1232, 0, 0, 0x8000 if dnssec_ok else 0, 0)
    msg = header + question + opt
    return struct.pack(">H", len(msg)) + msg


def main() -> None:
    out, zone, names, count, mix = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rng = random.Random(12)  # the same file for every server and every run
    A, AAAA = 1, 28

    def host() -> str:
        return f"host{rng.randrange(names)}.{zone}"

    def random_name() -> str:
        return f"r{rng.getrandbits(48):012x}.{zone}"

    with open(out, "wb") as f:
        for i in range(count):
            if mix == "hits":
                q = (host(), A, False)
            elif mix == "misses":
                q = (random_name(), A, False) if i % 5 else (host(), AAAA, False)
            elif mix == "mixed":
                r = i % 10
                if r < 7:
                    q = (host(), A, False)
                elif r < 9:
                    q = (random_name(), A, False)
                else:
                    q = (host(), AAAA, False)
                q = (q[0], q[1], rng.randrange(10) == 0)
            elif mix == "flood":
                q = (random_name() if i % 2 else f"r{i:x}.wild.{zone}", A, False)
            else:
                sys.exit(f"unknown mix {mix!r}")
            f.write(query(*q))


if __name__ == "__main__":
    main()
