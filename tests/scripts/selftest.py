#!/usr/bin/env python3
"""Check the test suite's own helper scripts before the suite relies on them.

    $AUTHD_TEST_PYTHON tests/scripts/selftest.py

The Rust tests treat verify_jwt.py, verify_jwt.mjs and totp.py as
independent judges of authd. A judge that accepts everything (or nothing)
would make those tests meaningless, so scripts/test.sh runs this first: it
signs tokens with keys of its own, serves their JWKS on a loopback port, and
checks that both verifiers accept the good ones and refuse each kind of bad
one; and that totp.py reproduces RFC 6238's test vectors (and oathtool, when
installed). Takes about a second. Exits 1 listing every failed check.
"""

import concurrent.futures
import contextlib
import hashlib
import hmac
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = "http://127.0.0.1/t/acme"
AUDIENCE = "acme"

failures = []


def check(name, ok, detail=""):
    if not ok:
        failures.append(f"{name}: {detail}".rstrip(": "))


def make_keys():
    """One key per algorithm authd signs with, as (alg, kid, private, jwk)."""
    keys = []
    for alg, private in (
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        kid = f"test-{alg.lower()}"
        algo = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algo.to_jwk(private.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        keys.append((alg, kid, private, jwk))
    return keys


def serve_jwks(jwks):
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/t/acme/.well-known/jwks.json"


def claims(**overrides):
    now = int(time.time())
    c = {
        "iss": ISSUER,
        "sub": "0b7c2a0e-8f53-4c3e-9a8e-3f1f0d2b6c11",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 900,
        "jti": "j1",
        "amr": ["pwd"],
        "role": "user",
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def sign(alg, kid, private, typ="at+jwt", **overrides):
    headers = {"kid": kid}
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(claims(**overrides), private, algorithm=alg, headers=headers)


def run_all(jobs):
    """Run (label, argv, judge) jobs a few at a time (each is a process start,
    mostly import time) and record judge(CompletedProcess) -> (ok, detail)."""
    def one(job):
        label, argv, judge = job
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        ok, detail = judge(done)
        check(label, ok, detail)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, jobs))


def accepted(sub):
    return lambda p: (p.returncode == 0 and json.loads(p.stdout or "{}").get("sub") == sub, p.stderr.strip())


def refused(p):
    return p.returncode == 1, f"exit {p.returncode} {p.stdout.strip()} {p.stderr.strip()}"


def check_verifiers():
    """Every case goes through verify_jwt.py's verify() in this process and
    through verify_jwt.mjs as a process; verify_jwt.py's command line (exit
    codes, JSON out) is checked on one good and one bad token, since starting
    Python with cryptography costs more than the check itself."""
    import verify_jwt

    keys = make_keys()
    server, url = serve_jwks({"keys": [k[3] for k in keys]})
    node = shutil.which("node")
    have_jose = node and os.path.isdir(os.path.join(HERE, "node_modules", "jose"))
    if not have_jose:
        check("verify_jwt.mjs", False, "node or tests/scripts/node_modules/jose missing (npm ci)")
    jobs = []

    def case(label, token, should_pass):
        try:
            got = verify_jwt.verify(url, token, ISSUER, AUDIENCE, typ="at+jwt")
            check(f"verify_jwt.py {label}", should_pass and got.get("sub") == sub, f"accepted: {got}")
        except jwt.PyJWTError as e:
            check(f"verify_jwt.py {label}", not should_pass, f"{type(e).__name__}: {e}")
        except Exception as e:  # a crash is no verdict, whatever was expected
            check(f"verify_jwt.py {label}", False, f"crashed: {type(e).__name__}: {e}")
        if have_jose:
            argv = [node, os.path.join(HERE, "verify_jwt.mjs"), url, token, ISSUER, AUDIENCE]
            jobs.append((f"verify_jwt.mjs {label}", argv, accepted(sub) if should_pass else refused))

    try:
        sub = claims()["sub"]
        for alg, kid, private, _ in keys:
            case(f"accepts a good {alg} token", sign(alg, kid, private), True)

        alg, kid, private, _ = keys[0]
        other = ec.generate_private_key(ec.SECP256R1())
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header, payload, signature = sign(alg, kid, private).split(".")
        b64 = lambda raw: jwt.utils.base64url_encode(raw).decode()  # noqa: E731
        unsigned = b64(json.dumps({"alg": "none", "kid": kid, "typ": "at+jwt"}).encode())
        # HS256 keyed with the public key: the classic algorithm-confusion
        # forgery, built by hand since PyJWT itself refuses a PEM as HMAC key.
        hs_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': kid, 'typ': 'at+jwt'}).encode())}.{payload}"
        hs_forged = f"{hs_input}.{b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
        now = int(time.time())
        bad = {
            "wrong audience": sign(alg, kid, private, aud="other-tenant"),
            "wrong issuer": sign(alg, kid, private, iss="http://127.0.0.1/t/other"),
            "expired": sign(alg, kid, private, iat=now - 3600, exp=now - 60),
            "no exp": sign(alg, kid, private, exp=None),
            "unknown kid": sign(alg, "nope", private),
            "wrong key for kid": sign(alg, kid, other),
            "tampered payload": f"{header}.{b64(json.dumps(claims(role='admin')).encode())}.{signature}",
            "alg none": f"{unsigned}.{payload}.",
            "HS256 with the public key": hs_forged,
            "typ JWT instead of at+jwt": sign(alg, kid, private, typ="JWT"),
        }
        for what, token in bad.items():
            case(f"refuses a token with {what}", token, False)

        cli = [sys.executable, os.path.join(HERE, "verify_jwt.py"), "--typ", "at+jwt", url]
        jobs.append(("verify_jwt.py (command) accepts a good token",
                     cli + [sign(alg, kid, private), ISSUER, AUDIENCE], accepted(sub)))
        jobs.append(("verify_jwt.py (command) refuses a bad token",
                     cli + [bad["wrong audience"], ISSUER, AUDIENCE], refused))
        run_all(jobs)
    finally:
        server.shutdown()


def check_totp():
    import totp

    # RFC 6238 Appendix B, SHA-1 rows (ASCII "12345678901234567890"), last 6 digits.
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    vectors = {59: "287082", 1111111109: "081804", 1111111111: "050471", 1234567890: "005924", 2000000000: "279037"}

    def prints(want):
        return lambda p: (p.returncode == 0 and p.stdout.strip() == want, f"got {p.stdout.strip()!r} {p.stderr.strip()}")

    jobs = []
    for t, want in vectors.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = totp.main([secret, str(t)])
        check(f"totp.py at {t}", rc == 0 and out.getvalue().strip() == want, f"got {out.getvalue().strip()!r}")
        if shutil.which("oathtool"):
            jobs.append((f"oathtool agrees at {t}", ["oathtool", "--totp", "-b", "-N", f"@{t}", secret], prints(want)))
    cli = [sys.executable, os.path.join(HERE, "totp.py")]
    # Unpadded, lower-case, spaced: how secrets appear in otpauth URIs and UIs.
    jobs.append(("totp.py accepts a spaced lower-case secret",
                 cli + ["gezd gnbv gy3t qojq gezd gnbv gy3t qojq", "59"], prints("287082")))
    jobs.append(("totp.py rejects a malformed secret", cli + ["not base32!"],
                 lambda p: (p.returncode == 2, f"exit {p.returncode} {p.stdout.strip()}")))
    run_all(jobs)


def main():
    check_verifiers()
    check_totp()
    if failures:
        sys.stderr.write("test helper self-check failed:\n" + "".join(f"  - {f}\n" for f in failures))
        return 1
    print("test helpers ok: verify_jwt.py, verify_jwt.mjs, totp.py" + (", oathtool" if shutil.which("oathtool") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
