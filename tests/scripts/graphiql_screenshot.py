#!/usr/bin/env python3
"""Load authd's GraphiQL page in headless Chromium and prove that it works.

    $AUTHD_TEST_PYTHON graphiql_screenshot.py [options] <url> <out.png>

docs/api.md serves GraphiQL "with its assets served by authd itself (no
third-party script on the auth origin)". This is the browser-side check of
that promise, used by the Rust suite against a running server. It fails (exit
1, one line per problem on stderr) unless:

  * the page answers 200 with a Content-Security-Policy whose script-src
    allows only 'self' (no inline script, no eval, no other host);
  * GraphiQL renders: `.graphiql-container` and its query editor appear;
  * the browser reports no CSP violation and no error (console log and
    `securitypolicyviolation` events);
  * every resource the page loaded, and every <script>, is same-origin;
  * GraphiQL POSTed to the endpoint named in `data-endpoint` (the schema
    fetch) and got HTTP 200;
  * the screenshot, saved to <out.png>, is not blank (enough distinct
    colours, no single colour covering nearly everything).

Uses Debian's chromium and chromedriver (packages chromium, chromium-driver;
scripts/test.sh installs them), or $AUTHD_TEST_CHROMIUM /
$AUTHD_TEST_CHROMEDRIVER. Exit 2: usage or a missing tool.
"""

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "graphiql_screenshot.py: selenium is not installed; run it with $AUTHD_TEST_PYTHON "
        "(scripts/test.sh creates that venv)\n"
    )
    sys.exit(2)

# The same flags as every headless Chromium run on these machines: no sandbox
# (we run as root in CI), and nothing that phones home, since only loopback
# is reachable and each refused connection is noise (or a hang) otherwise.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
]

# Registered before any page script runs (CDP scripts are not subject to the
# page's CSP), so that violations and errors during start-up are caught too.
PROBE = """
window.__authdProbe = { violations: [], errors: [] };
document.addEventListener('securitypolicyviolation', function (e) {
  window.__authdProbe.violations.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
    (e.sourceFile ? ' (' + e.sourceFile + ':' + e.lineNumber + ')' : ''));
});
window.addEventListener('error', function (e) {
  window.__authdProbe.errors.push(String(e.message || e.type) +
    (e.filename ? ' (' + e.filename + ':' + e.lineno + ')' : ''));
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__authdProbe.errors.push('unhandled rejection: ' + String(e.reason && (e.reason.stack || e.reason)));
});
"""

# What the page itself loaded, read back after GraphiQL has rendered.
PAGE_FACTS = """
var endpoint = (document.getElementById('graphiql') || document.body).getAttribute('data-endpoint');
return {
  origin: location.origin,
  endpoint: endpoint,
  scripts: Array.prototype.map.call(document.scripts, function (s) { return s.src || null; }),
  resources: performance.getEntriesByType('resource').map(function (r) {
    return { name: r.name, type: r.initiatorType, status: r.responseStatus || 0 };
  }),
  probe: window.__authdProbe || null,
};
"""


class Failure(Exception):
    pass


def check_csp(url, problems):
    """The page must come with a script policy that admits only this origin."""
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as e:
        status, headers = e.code, e.headers
    except OSError as e:
        raise Failure(f"cannot load {url}: {e}")
    if status != 200:
        problems.append(f"GET {url} answered {status}, not 200")
    csp = headers.get("Content-Security-Policy")
    if not csp:
        problems.append("the page has no Content-Security-Policy header")
        return
    directives = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            directives.setdefault(words[0].lower(), words[1:])
    script_src = directives.get("script-src", directives.get("default-src"))
    if script_src is None:
        problems.append(f"CSP restricts no scripts: {csp}")
    elif [s for s in script_src if s.lower() not in ("'self'", "'none'")]:
        problems.append(f"CSP script-src allows more than 'self': {' '.join(script_src)}")


def read_png(path):
    """Decode an 8-bit, non-interlaced PNG (what Chromium writes) into rows of
    pixel tuples-as-bytes, with nothing but zlib: the venv needs no imaging
    library for this one check."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure(f"{path} is not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    if ihdr is None:
        raise Failure(f"{path}: no IHDR chunk")
    width, height, depth, color, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise Failure(f"{path}: unsupported PNG (depth {depth}, colour type {color}, interlace {interlace})")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    prev = bytearray(stride)
    rows = []
    i = 0
    for _ in range(height):
        kind = raw[i]
        line = bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        if kind == 1:  # Sub
            for x in range(channels, stride):
                line[x] = (line[x] + line[x - channels]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:  # Average
            for x in range(stride):
                left = line[x - channels] if x >= channels else 0
                line[x] = (line[x] + ((left + prev[x]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for x in range(stride):
                a = line[x - channels] if x >= channels else 0
                b = prev[x]
                c = prev[x - channels] if x >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif kind != 0:
            raise Failure(f"{path}: bad PNG filter {kind}")
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def check_not_blank(path, problems, min_colours=32, max_share=0.95):
    """A blank page, an error text on white, or a solid fill all have one
    colour covering almost everything; GraphiQL's editor, sidebar and
    buttons give hundreds of colours and no colour over ~60%."""
    width, height, channels, rows = read_png(path)
    colours = Counter()
    for row in rows:
        colours.update(row[x:x + min(channels, 3)] for x in range(0, len(row), channels))
    top, count = colours.most_common(1)[0]
    share = count / (width * height)
    if len(colours) < min_colours or share > max_share:
        problems.append(
            f"screenshot looks blank: {len(colours)} colours, #{top.hex()} covers {share:.0%} "
            f"(want >= {min_colours} colours and <= {max_share:.0%})"
        )
    return len(colours), share


def tool(env, default, package):
    path = os.environ.get(env) or shutil.which(default) or (f"/usr/bin/{default}" if os.path.exists(f"/usr/bin/{default}") else None)
    if not path:
        sys.stderr.write(f"graphiql_screenshot.py: {default} not found: install Debian's {package} "
                         f"(scripts/test.sh does) or set {env}\n")
        sys.exit(2)
    return path


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the GraphiQL page, e.g. http://127.0.0.1:PORT/t/acme/graphql")
    parser.add_argument("out", help="where to save the PNG screenshot")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for GraphiQL (default 30)")
    parser.add_argument("--allow-missing-csp", action="store_true", help="do not require the CSP header")
    args = parser.parse_args(argv)

    chromium = tool("AUTHD_TEST_CHROMIUM", "chromium", "chromium")
    chromedriver = tool("AUTHD_TEST_CHROMEDRIVER", "chromedriver", "chromium-driver")

    problems = []
    csp_problems = []
    check_csp(args.url, csp_problems)
    if not args.allow_missing_csp:
        problems += csp_problems

    profile = tempfile.mkdtemp(prefix="authd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        driver.set_page_load_timeout(args.timeout)
        # The viewport itself, not the window around it, is 1280x800.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        driver.get(args.url)
        wait = WebDriverWait(driver, args.timeout)
        try:
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".graphiql-container")))
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".graphiql-query-editor .CodeMirror")))
        except TimeoutException:
            problems.append(f"GraphiQL did not render within {args.timeout:g}s (no .graphiql-container with a query editor)")

        # Give the schema fetch time to come back and render.
        facts = None
        deadline = time.monotonic() + min(args.timeout, 10)
        while time.monotonic() < deadline:
            facts = driver.execute_script(PAGE_FACTS)
            if any(r["type"] == "fetch" for r in facts["resources"]):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        facts = driver.execute_script(PAGE_FACTS)
        driver.save_screenshot(args.out)

        origin = facts["origin"]
        for src in facts["scripts"]:
            if src is None:
                problems.append("the page has an inline <script>")
            elif not src.startswith(origin + "/"):
                problems.append(f"script from another origin: {src}")
        for r in facts["resources"]:
            if not r["name"].startswith(origin + "/"):
                problems.append(f"loaded from another origin: {r['name']} ({r['type']})")
        endpoint = facts["endpoint"]
        if not endpoint:
            problems.append("no data-endpoint attribute on #graphiql")
        else:
            calls = [r for r in facts["resources"] if r["type"] == "fetch" and r["name"].split("?")[0] == origin + endpoint]
            if not calls:
                problems.append(f"GraphiQL never called its endpoint {endpoint}")
            elif not any(r["status"] in (0, 200) for r in calls):
                problems.append(f"the endpoint answered {[r['status'] for r in calls]}, not 200")

        probe = facts["probe"] or {}
        problems += [f"CSP violation: {v}" for v in probe.get("violations", [])]
        problems += [f"page error: {e}" for e in probe.get("errors", [])]
        for entry in driver.get_log("browser"):
            message = entry.get("message", "")
            # The browser asks for /favicon.ico on its own; authd need not have one.
            if "favicon.ico" in message:
                continue
            if entry.get("level") == "SEVERE" or "Content Security Policy" in message:
                problems.append(f"console {entry.get('level')}: {message}")
    except WebDriverException as e:
        problems.append(f"browser failed: {e.msg or e}".strip())
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    summary = ""
    if os.path.exists(args.out):
        colours, share = check_not_blank(args.out, problems)
        summary = f" ({colours} colours, largest {share:.0%})"
    else:
        problems.append(f"no screenshot was written to {args.out}")

    if args.allow_missing_csp:
        for p in csp_problems:
            sys.stderr.write(f"note: {p}\n")
    if problems:
        sys.stderr.write(f"GraphiQL check failed for {args.url}:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    print(f"GraphiQL rendered at {args.url}; screenshot {args.out}{summary}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Failure as e:
        sys.stderr.write(f"GraphiQL check failed: {e}\n")
        sys.exit(1)
