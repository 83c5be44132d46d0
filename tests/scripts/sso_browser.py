"""Sign in on authd's hosted sign-in page in headless Chromium, as a person
would, without any JavaScript of the page's: open the authorization URL,
fill in email and password, submit, and follow the redirects back to the
application (consenting when asked).

Usage: sso_browser.py AUTHORIZATION_URL EMAIL PASSWORD APP_URL_PREFIX [--timeout S]
Prints the URL the browser ends on (the app's redirect URI with `code`).
Exit 1 when the flow does not reach the app, 2 on a missing tool.
Chromium and chromedriver come from $AUTHD_TEST_CHROMIUM /
$AUTHD_TEST_CHROMEDRIVER or PATH (scripts/test.sh installs them).
"""

import argparse
import sys

import chromium
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("email")
    parser.add_argument("password")
    parser.add_argument("app_prefix")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)

    driver, profile = chromium.start("sso")
    try:
        driver.set_page_load_timeout(args.timeout)
        wait = WebDriverWait(driver, args.timeout)
        driver.get(args.url)
        wait.until(lambda d: d.find_elements(By.ID, "password") or d.current_url.startswith(args.app_prefix))
        if not driver.current_url.startswith(args.app_prefix):
            # The labels name the fields (accessible markup).
            assert driver.find_element(By.CSS_SELECTOR, "label[for=email]").text == "Email"
            driver.find_element(By.ID, "email").send_keys(args.email)
            driver.find_element(By.ID, "password").send_keys(args.password)
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait.until(
                lambda d: d.current_url.startswith(args.app_prefix)
                or d.find_elements(By.CSS_SELECTOR, "button[name=decision][value=allow]")
            )
            if not driver.current_url.startswith(args.app_prefix):
                driver.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
        wait.until(lambda d: d.current_url.startswith(args.app_prefix))
        print(driver.current_url)
        return 0
    except TimeoutException:
        where = driver.current_url
        sys.stderr.write(f"sso_browser.py: the flow did not reach the app; stuck at {where}\n")
        sys.stderr.write(driver.page_source[:2000] + "\n")
        return 1
    finally:
        chromium.stop(driver, profile)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
