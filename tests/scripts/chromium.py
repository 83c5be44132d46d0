"""Headless Chromium through WebDriver for the browser tests: the flags this
machine's closed network needs, the binaries from $AUTHD_TEST_CHROMIUM /
$AUTHD_TEST_CHROMEDRIVER or PATH (scripts/test.sh installs them), and a
throw-away profile. Used by oauth_browser.py, sso_browser.py and
passkey_browser.py.
"""

import os
import shutil
import sys
import tempfile

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write("selenium is not installed; run the browser scripts with $AUTHD_TEST_PYTHON\n")
    sys.exit(2)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def tool(env, name):
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        sys.stderr.write(f"{name} not found (set {env} or install it)\n")
        sys.exit(2)
    return path


def start(prefix):
    """A headless Chromium with a fresh profile: (driver, profile dir)."""
    profile = tempfile.mkdtemp(prefix=f"authd-{prefix}-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = tool("AUTHD_TEST_CHROMIUM", "chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    service = Service(executable_path=tool("AUTHD_TEST_CHROMEDRIVER", "chromedriver"))
    try:
        return webdriver.Chrome(service=service, options=options), profile
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise


def stop(driver, profile):
    if driver:
        driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
