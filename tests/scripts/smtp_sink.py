#!/usr/bin/env python3
"""A real SMTP server for the authd tests (aiosmtpd), keeping what it accepts.

    smtp_sink.py --port PORT --dir DIR [--mode plain|starttls|smtps]
                 [--cert PEM --key PEM] [--user U --password P]

Every accepted message becomes two files in DIR, written atomically:
``<n>.eml`` (the bytes as received) and ``<n>.json`` with the envelope and
the decoded parts: ``{"mail_from", "rcpt_tos", "from", "to", "subject",
"text", "html"}``. With ``starttls`` the server requires STARTTLS before
MAIL; with ``smtps`` it speaks TLS from the first byte; with ``--user`` it
requires AUTH (PLAIN or LOGIN) with those credentials. Prints ``READY`` on
stdout once it accepts connections, and runs until killed.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else "",
        }
        base = os.path.join(self.directory, f"{n:06d}")
        for suffix, data in ((".eml", raw), (".json", json.dumps(record).encode())):
            tmp = base + suffix + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, base + suffix)
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--mode", choices=["plain", "starttls", "smtps"], default="plain")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        return AuthResult(success=ok)

    kwargs = {}
    if args.user:
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=args.mode != "plain")
    if args.mode == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    if args.mode == "smtps":
        kwargs.update(ssl_context=context)

    controller = Controller(
        Sink(args.dir), hostname="127.0.0.1", port=args.port, server_hostname="localhost", **kwargs
    )
    controller.start()
    print("READY", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
