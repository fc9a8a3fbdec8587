#!/usr/bin/env python3
"""tests/support/submission_probe.py: drives hamail's submission listeners
with Python's smtplib the way a mail client (or a hostile one) does, and
prints one JSON object: check name -> the server's reply ("CODE text"), or
for features the EHLO keywords.

    submission_probe.py HOST SUBMISSION_PORT SUBMISSIONS_PORT MX_PORT USER PASSWORD

USER must own USER as sender and must not own nobody-else@<USER's domain>.
Every check runs on a fresh connection; nothing here is timed.
"""
import base64
import json
import smtplib
import ssl
import sys

host, sub, subs, mx, user, password = sys.argv[1:7]
sub, subs, mx = int(sub), int(subs), int(mx)
domain = user.split("@", 1)[1]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reply(r) -> str:
    code, text = r
    return f"{code} {text.decode(errors='replace')}"


def plain(u: str, p: str, z: str = "") -> str:
    return "PLAIN " + b64(f"{z}\0{u}\0{p}".encode())


def tls_session():
    s = smtplib.SMTP(host, sub, timeout=60)
    s.ehlo("probe.example")
    s.starttls(context=ctx)
    s.ehlo("probe.example")
    return s


out = {}

# Before STARTTLS on 587: no AUTH offered, AUTH and MAIL refused.
s = smtplib.SMTP(host, sub, timeout=60)
s.ehlo("probe.example")
out["features_before_tls"] = sorted(s.esmtp_features)
out["auth_before_tls"] = reply(s.docmd("AUTH", plain(user, password)))
out["mail_before_tls"] = reply(s.docmd("MAIL", f"FROM:<{user}>"))
s.close()

# AUTH before EHLO (inside TLS).
s = smtplib.SMTP(host, sub, timeout=60)
s.ehlo("probe.example")
s.starttls(context=ctx)
out["auth_before_ehlo"] = reply(s.docmd("AUTH", plain(user, password)))
s.close()

s = tls_session()
out["features_after_tls"] = sorted(s.esmtp_features)
out["mail_without_auth"] = reply(s.docmd("MAIL", f"FROM:<{user}>"))
s.close()

bad = {
    "wrong_password": plain(user, password + "x"),
    "unknown_user": plain("nobody-at-all@" + domain, password),
    "unknown_mechanism": "CRAM-MD5",
    "malformed_base64": "PLAIN %%%not-base64%%%",
    "huge_initial_response": "PLAIN " + "A" * 20480,
    "nul_in_wrong_place": "PLAIN " + b64(f"{user}\0{password}".encode()),
    "empty_password": "PLAIN " + b64(f"\0{user}\0".encode()),
    "empty_user": "PLAIN " + b64(f"\0\0{password}".encode()),
    "other_authzid": plain(user, password, z="boss@" + domain),
}
for name, arg in bad.items():
    s = tls_session()
    out[name] = reply(s.docmd("AUTH", arg))
    # The session goes on: the right password still works after it.
    out[name + "_then"] = reply(s.docmd("AUTH", plain(user, password)))
    s.close()

s = tls_session()
s.docmd("AUTH", "PLAIN")
out["cancel"] = reply(s.docmd("*"))
s.close()

s = tls_session()
out["auth_ok"] = reply(s.docmd("AUTH", plain(user, password)))
out["auth_twice"] = reply(s.docmd("AUTH", plain(user, password)))
out["mail_not_owned"] = reply(s.docmd("MAIL", f"FROM:<nobody-else@{domain}>"))
out["mail_owned"] = reply(s.docmd("MAIL", f"FROM:<{user}>"))
out["auth_in_transaction"] = reply(s.docmd("AUTH", plain(user, password)))
out["rcpt_anywhere"] = reply(s.docmd("RCPT", "TO:<someone@elsewhere.example>"))
out["data"] = reply(s.docmd("DATA"))
s.send(b"Subject: probe\r\n\r\nhello\r\n.\r\n")
out["end_of_data"] = reply(s.getreply())
s.quit()

# 465: TLS from the first byte, smtplib's own login and sendmail.
s = smtplib.SMTP_SSL(host, subs, timeout=60, context=ctx)
s.ehlo("probe.example")
out["features_465"] = sorted(s.esmtp_features)
try:
    s.login(user, password)
    out["login_465"] = "235"
    refused = s.sendmail(user, ["someone@elsewhere.example"], b"Subject: 465\r\n\r\nhi\r\n")
    out["sendmail_465"] = "250" if not refused else json.dumps(refused)
except smtplib.SMTPException as e:
    out["login_465"] = str(e)
s.quit()

# The MX: no AUTH unless configured.
s = smtplib.SMTP(host, mx, timeout=60)
s.ehlo("probe.example")
if s.has_extn("starttls"):
    s.starttls(context=ctx)
    s.ehlo("probe.example")
out["features_mx"] = sorted(s.esmtp_features)
out["auth_on_mx"] = reply(s.docmd("AUTH", plain(user, password)))
s.close()

print(json.dumps(out))
