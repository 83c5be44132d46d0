"""Drive authd's passkeys example page in headless Chromium with a virtual
authenticator (WebDriver's virtual authenticator extension: CTAP2, internal
transport, resident keys, user verification), as a person would: sign in
with the password, register a passkey, then sign in with it with the email
and without one.

Usage: passkey_browser.py PAGE_URL EMAIL PASSWORD [--timeout S]
Prints {"email": <result>, "usernameless": <result>} (each what the page
showed: AuthTokens or MfaChallenge as JSON). Exit 1 when a step fails, 2 on
a missing tool. Chromium and chromedriver come from $AUTHD_TEST_CHROMIUM /
$AUTHD_TEST_CHROMEDRIVER or PATH (scripts/test.sh installs them).
"""

import argparse
import json
import sys

import chromium
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions
from selenium.webdriver.support.ui import WebDriverWait


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page")
    parser.add_argument("email")
    parser.add_argument("password")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)

    driver, profile = chromium.start("passkey")
    try:
        authenticator = VirtualAuthenticatorOptions()
        authenticator.protocol = VirtualAuthenticatorOptions.Protocol.CTAP2
        authenticator.transport = VirtualAuthenticatorOptions.Transport.INTERNAL
        authenticator.has_resident_key = True
        authenticator.has_user_verification = True
        authenticator.is_user_verified = True
        authenticator.is_user_consenting = True
        driver.get(args.page)
        driver.add_virtual_authenticator(authenticator)
        wait = WebDriverWait(driver, args.timeout)

        def step(button):
            driver.find_element(By.ID, button).click()
            try:
                wait.until(lambda d: d.find_element(By.ID, "out").text.strip() != "")
            except TimeoutException:
                raise SystemExit(f"{button}: no result within {args.timeout} s")
            text = driver.find_element(By.ID, "out").text
            if text.startswith("error"):
                sys.stderr.write(f"{button}: {text}\n")
                sys.exit(1)
            return json.loads(text)

        driver.find_element(By.ID, "email").send_keys(args.email)
        driver.find_element(By.ID, "password").send_keys(args.password)
        signed_in = step("password-login")
        if "accessToken" not in signed_in:
            sys.stderr.write(f"password sign-in: {signed_in}\n")
            sys.exit(1)
        step("register")
        by_email = step("login-email")
        usernameless = step("login-usernameless")
        print(json.dumps({"email": by_email, "usernameless": usernameless}))
    finally:
        chromium.stop(driver, profile)


if __name__ == "__main__":
    main(sys.argv[1:])
