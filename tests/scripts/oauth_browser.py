"""Drive a social login in headless Chromium through WebDriver, as a person
at a tenant's web app would: open the authorization URL authd gave the app,
sign in on the provider's login form, consent, and follow the redirects
through authd's callback back to the app.

Usage: oauth_browser.py AUTHORIZATION_URL LOGIN APP_URL_PREFIX [--timeout S]
Prints the URL the browser ends on (the app's redirect URI with `code` or
`error`). Exit 1 when the flow does not reach the app, 2 on a missing tool.
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
    parser.add_argument("login")
    parser.add_argument("app_prefix")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)

    driver, profile = chromium.start("oauth")
    try:
        driver.set_page_load_timeout(args.timeout)
        wait = WebDriverWait(driver, args.timeout)
        driver.get(args.url)

        # The provider's login form: any password; the login is the subject.
        wait.until(lambda d: d.find_elements(By.NAME, "login") or d.current_url.startswith(args.app_prefix))
        if not driver.current_url.startswith(args.app_prefix):
            driver.find_element(By.NAME, "login").send_keys(args.login)
            driver.find_element(By.NAME, "password").send_keys("any password")
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            # Then the consent form.
            wait.until(
                lambda d: d.current_url.startswith(args.app_prefix)
                or d.find_elements(By.CSS_SELECTOR, "input[name=prompt][value=consent]")
            )
            if not driver.current_url.startswith(args.app_prefix):
                driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.current_url.startswith(args.app_prefix))
        # The app's page loaded in the browser (it says so in its title).
        wait.until(lambda d: "signed in" in d.title)
        print(driver.current_url)
        return 0
    except TimeoutException:
        where = driver.current_url
        sys.stderr.write(f"oauth_browser.py: the flow did not reach the app; stuck at {where}\n")
        sys.stderr.write(driver.page_source[:2000] + "\n")
        return 1
    finally:
        chromium.stop(driver, profile)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
