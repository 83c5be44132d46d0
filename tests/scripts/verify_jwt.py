#!/usr/bin/env python3
"""Verify an authd access token the way a resource server would, with PyJWT.

    verify_jwt.py [--typ TYP] <jwks_url> <token> <issuer> <audience>

docs/api.md promises that "any standard JWT library verifies it from the JWKS".
The Rust suite checks that promise with code that shares nothing with authd:
this script fetches the key set from the URL (PyJWKClient picks the key by
the token's `kid`), checks the signature with one of the algorithms authd may
use, and checks `iss`, `aud`, `exp`, `iat` (and `typ` when --typ is given).

On success it prints the claims as one line of JSON and exits 0. On any
failure it prints `ErrorClass: message` on stderr and exits 1; a usage error
exits 2. Run it with the venv's python ($AUTHD_TEST_PYTHON).
"""

import argparse
import json
import sys

try:
    import jwt
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "verify_jwt.py: PyJWT is not installed; run it with $AUTHD_TEST_PYTHON "
        "(scripts/test.sh creates that venv)\n"
    )
    sys.exit(2)

# The algorithms docs/api.md allows for access tokens. Listing them explicitly is
# the point: a verifier that trusts the header's `alg` accepts `none` or an
# HMAC forged with the public key.
ALGORITHMS = ["ES256", "EdDSA", "RS256"]
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat"]


def verify(jwks_url, token, issuer, audience, typ=None):
    """Return the verified claims, or raise jwt.PyJWTError."""
    # No cache between runs: each call is a fresh resource server, which is
    # what a test of key rotation wants to see.
    client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, cache_keys=False, timeout=10)
    signing_key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=ALGORITHMS,
        audience=audience,
        issuer=issuer,
        options={"require": REQUIRED_CLAIMS},
    )
    if typ is not None:
        header = jwt.get_unverified_header(token)  # signature checked above
        if str(header.get("typ", "")).lower() not in (typ.lower(), "application/" + typ.lower()):
            raise jwt.InvalidTokenError(f"typ is {header.get('typ')!r}, expected {typ!r}")
    return claims


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--typ", help="required `typ` header, e.g. at+jwt")
    parser.add_argument("jwks_url")
    parser.add_argument("token")
    parser.add_argument("issuer")
    parser.add_argument("audience")
    args = parser.parse_args(argv)
    try:
        claims = verify(args.jwks_url, args.token, args.issuer, args.audience, args.typ)
    except jwt.PyJWTError as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
