#!/usr/bin/env python3
"""Print the TOTP code for a base32 secret, computed by pyotp.

    totp.py <base32secret> [unix_time]

An authenticator app's view of authd's TOTP secrets: RFC 6238 with the
parameters every app assumes (HMAC-SHA1, 6 digits, 30-second steps, T0 = 0),
so a code printed here is what a user would type. `unix_time` defaults to now;
pass it to get the code for a neighbouring step (t - 30, t + 30) when testing
drift and replay.

The same code from Debian's oathtool, for comparison:
    oathtool --totp -b <base32secret>                  # now
    oathtool --totp -b -N @<unix_time> <base32secret>  # at a given time

Exits 2 with a message on a malformed secret or time.
"""

import binascii
import sys
import time

try:
    import pyotp
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "totp.py: pyotp is not installed; run it with $AUTHD_TEST_PYTHON "
        "(scripts/test.sh creates that venv)\n"
    )
    sys.exit(2)


def main(argv):
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: totp.py <base32secret> [unix_time]\n")
        return 2
    # otpauth URIs carry the secret unpadded and sometimes grouped with
    # spaces; pyotp adds the padding, we drop the spaces.
    secret = argv[0].replace(" ", "").upper()
    try:
        at = int(argv[1]) if len(argv) == 2 else int(time.time())
    except ValueError:
        sys.stderr.write(f"totp.py: unix_time must be an integer, got {argv[1]!r}\n")
        return 2
    try:
        code = pyotp.TOTP(secret).at(at)
    except (binascii.Error, ValueError) as e:
        sys.stderr.write(f"totp.py: not a base32 secret: {e}\n")
        return 2
    print(code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
