#!/usr/bin/env python3
"""Serve crates/api/assets the way authd does, with a fake GraphQL endpoint.

    python3 tests/scripts/serve_graphiql_assets.py [--port N] [--print-url]

For looking at (or screenshotting) the vendored GraphiQL page without building
authd, e.g. after scripts/update-graphiql-assets.sh:

    GET  /graphql, /t/<slug>/graphql   index.html with {{ASSET_BASE}} and
                                       {{ENDPOINT}} filled in, HTML-escaped
    GET  /graphiql-assets/<file>       the files of crates/api/assets
    POST /graphql, /t/<slug>/graphql   a tiny schema: introspection works and
                                       `{ hello }` answers; the Authorization
                                       header, if any, is echoed in `whoami`

Every response carries the Content-Security-Policy that authd sends with the
page, so a CSP violation shows up here exactly as it would in production.
Standard library only; listens on 127.0.0.1 (port 0 = any free port) and
prints its URL on stdout once it is ready (with --print-url, only the URL).
"""

import argparse
import html
import json
import mimetypes
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ASSETS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "api", "assets"))
ASSET_BASE = "/graphiql-assets"
# What authd sends with the GraphiQL page and its assets (crates/api/src/assets.rs).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
ENDPOINT = re.compile(r"^/(t/[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])/)?graphql$")


def field(name, type_ref, args=()):
    return {"name": name, "description": None, "args": list(args), "type": type_ref,
            "isDeprecated": False, "deprecationReason": None}


def named(kind, name):
    return {"kind": kind, "name": name, "ofType": None}


def non_null(of):
    return {"kind": "NON_NULL", "name": None, "ofType": of}


def scalar(name):
    return {"kind": "SCALAR", "name": name, "description": None, "fields": None, "inputFields": None,
            "interfaces": None, "enumValues": None, "possibleTypes": None, "specifiedByURL": None}


# Just enough schema for GraphiQL's buildClientSchema: a Query type with two
# fields, and the scalars they use.
INTROSPECTION = {
    "__schema": {
        "description": None,
        "queryType": {"name": "Query"},
        "mutationType": None,
        "subscriptionType": None,
        "types": [
            {"kind": "OBJECT", "name": "Query", "description": "Fake schema of serve_graphiql_assets.py",
             "fields": [
                 field("hello", non_null(named("SCALAR", "String"))),
                 field("whoami", named("SCALAR", "String")),
             ],
             "inputFields": None, "interfaces": [], "enumValues": None, "possibleTypes": None,
             "specifiedByURL": None},
            scalar("String"),
            scalar("Boolean"),
        ],
        "directives": [],
    }
}


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-authd"
    assets = ASSETS
    csp = True

    def send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.csp:
            self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if ENDPOINT.match(path):
            with open(os.path.join(self.assets, "index.html"), encoding="utf-8") as f:
                page = f.read()
            page = page.replace("{{ASSET_BASE}}", html.escape(ASSET_BASE)).replace("{{ENDPOINT}}", html.escape(path))
            return self.send(200, page.encode(), "text/html; charset=utf-8")
        if path.startswith(ASSET_BASE + "/"):
            name = path[len(ASSET_BASE) + 1:]
            # Only plain file names of the folder: no traversal, no index.html.
            if re.fullmatch(r"[A-Za-z0-9_.-]+\.(js|css)", name) and os.path.isfile(os.path.join(self.assets, name)):
                with open(os.path.join(self.assets, name), "rb") as f:
                    body = f.read()
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype.endswith("javascript"):
                    ctype += "; charset=utf-8"
                return self.send(200, body, ctype)
        self.send(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        if not ENDPOINT.match(self.path.split("?", 1)[0]):
            return self.send(404, b"not found\n", "text/plain; charset=utf-8")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            query = request["query"]
        except (ValueError, KeyError, TypeError):
            return self.send(400, b'{"errors":[{"message":"expected a JSON body with a query"}]}', "application/json")
        if "__schema" in query:
            data = INTROSPECTION
        else:
            data = {"__typename": "Query", "hello": "world", "whoami": self.headers.get("Authorization")}
        self.send(200, json.dumps({"data": data}).encode(), "application/json")

    def log_message(self, fmt, *args):
        if os.environ.get("VERBOSE"):
            super().log_message(fmt, *args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--print-url", action="store_true", help="print only the page URL")
    parser.add_argument("--assets", default=ASSETS, help="folder to serve (default: crates/api/assets)")
    parser.add_argument("--no-csp", action="store_true", help="omit the CSP header (to test the tests)")
    args = parser.parse_args()
    Handler.assets = args.assets
    Handler.csp = not args.no_csp
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/graphql"
    print(url if args.print_url else f"serving GraphiQL on {url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
