#!/usr/bin/env python3
"""Drives the checkpoint dashboard (crates/server/assets/dashboard.html, served
by `cutpoint serve` at GET /) in headless Chromium with selenium, against a
real server that runs a job. Started by scripts/dashboard-test.sh, which
starts the server, submits the job and runs this in its venv.

Checks: the page loads with the token from the URL fragment, lists the job,
shows COMPLETED checkpoints; "Trigger checkpoint" reports the new checkpoint
id, whose row then reaches COMPLETED; the SVG chart has drawn elements;
"Trigger savepoint" reports a savepoint; the Restore button asks for
confirmation (dismissing it does nothing; accepting it restarts the job from
that checkpoint, which then runs and checkpoints again); a wrong token shows
the 401 banner and the right one clears it; the token survives a reload
(sessionStorage); no Content-Security-Policy violation or script error.

--serve-html FILE (development aid): serve FILE at / through a small local
proxy that forwards everything else to the server, with the headers the
server is meant to send, to test an edited page without rebuilding the binary.
"""
import argparse
import http.client
import http.server
import json
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT = 30
# What the server should send with the page (and what --serve-html sends).
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Failure(Exception):
    pass


def log(msg):
    print(f"dashboard-test: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- dev proxy
def start_proxy(html_path, upstream):
    """Serves html_path at / and forwards every other request to upstream
    (host:port). Returns the proxy's host:port."""
    up_host, up_port = upstream.rsplit(":", 1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            if self.command in ("GET", "HEAD") and self.path.split("?", 1)[0] == "/":
                with open(html_path, "rb") as f:
                    body = f.read()
                self.send_response(200)
                for k, v in PAGE_HEADERS.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = do_PATCH = do_OPTIONS = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------- helpers
class Page:
    def __init__(self, driver):
        self.d = driver

    def wait(self, cond, what, timeout=TIMEOUT):
        try:
            return WebDriverWait(
                self.d, timeout, poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(cond)
        except TimeoutException:
            raise Failure(f"timed out after {timeout} s waiting for {what}") from None

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def wait_js(self, script, what, *args, timeout=TIMEOUT):
        """Waits until the script returns something truthy; returns it."""
        return self.wait(lambda d: d.execute_script(script, *args), what, timeout)

    def rows(self):
        return self.js(
            "return Array.from(document.querySelectorAll('#checkpoints tbody tr[data-checkpoint-id]'))"
            ".map(r => [Number(r.dataset.checkpointId), r.dataset.status, r.dataset.restorable === 'true']);"
        )

    def last_action(self):
        return self.js(
            "const b = document.getElementById('last-action');"
            "return b.hidden ? null : {action: b.dataset.action, result: b.dataset.result,"
            " id: b.dataset.checkpointId, status: b.dataset.checkpointStatus, http: b.dataset.httpStatus,"
            " savepoint: b.dataset.savepointId, text: b.textContent};"
        )

    def text(self, element_id):
        return self.js("const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", element_id)

    def click(self, css, what):
        """Clicks an element, retrying while the auto-refresh moves it."""
        deadline = time.time() + TIMEOUT
        while True:
            try:
                el = self.wait(EC.element_to_be_clickable((By.CSS_SELECTOR, css)), what)
                el.click()
                return
            except (StaleElementReferenceException, ElementClickInterceptedException, ElementNotInteractableException):
                if time.time() > deadline:
                    raise Failure(f"could not click {what} ({css})") from None
                time.sleep(0.1)

    def action(self, css, action, what, retries=8):
        """Clicks a button whose result lands in #last-action; retries on 409
        (a periodic checkpoint in progress). Returns the last action."""
        for attempt in range(retries):
            self.click(css, what)
            la = self.wait_js(
                "const b = document.getElementById('last-action');"
                "return !b.hidden && b.dataset.action === arguments[0] && b.dataset.result !== 'pending'"
                " ? {result: b.dataset.result, id: b.dataset.checkpointId, http: b.dataset.httpStatus,"
                "    savepoint: b.dataset.savepointId, text: b.textContent} : null;",
                f"the result of {what} in #last-action", action,
            )
            if la["result"] == "ok":
                return la
            if la["http"] == "409" and attempt + 1 < retries:
                log(f"{what}: 409, retrying ({la['text'].strip()})")
                time.sleep(0.4)
                continue
            raise Failure(f"{what} failed: {la['text']}")
        raise Failure(f"{what}: still 409 after {retries} tries")

    def set_token(self, token):
        field = self.d.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        field.send_keys(Keys.ENTER)


def fetch(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ---------------------------------------------------------------- the test
def run(driver, base, token, job, screenshot, facts):
    p = Page(driver)

    # The page itself: served without a token, as HTML.
    status, headers, body = fetch(base)
    ctype = headers.get("Content-Type") or headers.get("content-type") or ""
    if status != 200 or not ctype.startswith("text/html"):
        raise Failure(f"GET {base} answered {status} {ctype!r}: the server must serve the dashboard at / "
                      f"(first bytes: {body[:120]!r})")
    csp = headers.get("Content-Security-Policy") or headers.get("content-security-policy")
    facts.append("CSP" if csp else "no CSP header")
    status, _, body = fetch(base + "v1/jobs", "not-the-token")
    expected_401_title = json.loads(body).get("title", "") if status == 401 else ""

    # 1. Load with the token in the fragment: the job and completed checkpoints appear.
    driver.get(base + "#token=" + urllib.parse.quote(token))
    p.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job}"]')), f"job {job} in #jobs")
    p.wait_js("return document.querySelector('#checkpoints tr[data-status=\"COMPLETED\"]') !== null",
              "a COMPLETED checkpoint row")
    frag = p.js("return location.hash;")
    if "token" in frag or f"job={job}" not in frag:
        raise Failure(f"expected the fragment to drop the token and name the job, got {frag!r}")
    if p.js("return document.getElementById('job-id').textContent;") != job:
        raise Failure("the selected job is not shown in #job-id")
    row_text = p.js("return document.querySelector('#checkpoints tr[data-status=\"COMPLETED\"]').textContent;")
    if (" ms" not in row_text and " s" not in row_text) or "B" not in row_text:
        raise Failure(f"a checkpoint row lacks human-readable durations/sizes: {row_text!r}")
    before = max(r[0] for r in p.rows())

    # 1b. The tasks table: every task, the keyed ones with a watermark (the
    # job has event time), timers pending and late records counted.
    tasks = p.wait_js(
        "const rows = [...document.querySelectorAll('#tasks tr[data-task]')];"
        "const agg = rows.filter(r => r.dataset.task.startsWith('agg['));"
        "const wm = agg.map(r => r.cells[3].dataset.watermark).filter(w => w && Number(w) > 0);"
        "return agg.length >= 1 && wm.length === agg.length"
        " ? {rows: rows.length, agg: agg.length, text: agg[0].textContent} : null;",
        "the tasks table to list the keyed tasks with their watermarks",
    )
    if " ms" not in tasks["text"]:
        raise Failure(f"a keyed task's row lacks its watermark in ms: {tasks['text']!r}")
    facts.append(f"tasks table {tasks['rows']} rows")

    # 2. Trigger a checkpoint: #last-action names it, its row reaches COMPLETED.
    la = p.action("#trigger", "trigger", "Trigger checkpoint")
    cid = int(la["id"])
    if cid <= before:
        raise Failure(f"triggered checkpoint {cid} is not newer than {before}")
    if str(cid) not in la["text"]:
        raise Failure(f"#last-action does not name checkpoint {cid}: {la['text']!r}")
    p.wait_js(f"return document.querySelector('#checkpoints tr[data-checkpoint-id=\"{cid}\"][data-status=\"COMPLETED\"]') !== null",
              f"checkpoint {cid} COMPLETED in the history")
    p.wait_js("const b = document.getElementById('last-action');"
              f"return b.dataset.checkpointId === '{cid}' && b.dataset.checkpointStatus === 'COMPLETED';",
              f"#last-action to report checkpoint {cid} COMPLETED")
    facts.append(f"triggered checkpoint {cid} completed")

    # 3. Counts, latest cards, summary, chart.
    completed = int(p.text("count-completed").replace(",", ""))
    if completed < 2:
        raise Failure(f"#count-completed is {completed}")
    if not p.js("return document.getElementById('latest-completed').dataset.checkpointId;"):
        raise Failure("#latest-completed has no checkpoint")
    chart = p.wait_js(
        "const c = document.getElementById('chart');"
        "const r = {points: Number(c.dataset.points), circles: c.querySelectorAll('circle').length,"
        " rects: c.querySelectorAll('rect').length, lines: c.querySelectorAll('polyline').length,"
        f" mine: c.querySelectorAll('circle[data-checkpoint-id=\"{cid}\"]').length}};"
        "return r.points >= 2 && r.circles >= 2 && r.rects >= 2 && r.lines >= 1 && r.mine === 1 ? r : null;",
        "the chart to draw points, bars and lines",
    )
    facts.append(f"chart {chart['points']} points")

    # 4. Savepoint.
    la = p.action("#savepoint", "savepoint", "Trigger savepoint")
    sp = la["savepoint"]
    p.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'#savepoints tr[data-savepoint-id="{sp}"]')),
           f"savepoint {sp} in #savepoints")
    facts.append(f"savepoint {sp}")

    if screenshot:
        save_screenshot(driver, screenshot)

    # 5. Restore: the confirmation appears; dismissing it changes nothing.
    def newest_restorable():
        rows = [r for r in p.rows() if r[1] == "COMPLETED" and r[2]]
        if not rows:
            raise Failure("no restorable checkpoint row")
        return max(r[0] for r in rows)

    restored_before = p.text("count-restored")
    target = newest_restorable()
    p.click(f'#checkpoints button[data-action="restore"][data-checkpoint-id="{target}"]', f"Restore {target}")
    alert = p.wait(EC.alert_is_present(), "the restore confirmation")
    if str(target) not in alert.text:
        raise Failure(f"the confirmation does not name checkpoint {target}: {alert.text!r}")
    alert.dismiss()
    p.wait_js("const b = document.getElementById('last-action');"
              "return b.dataset.action === 'restore' && b.dataset.result === 'cancelled';",
              "#last-action to report the cancelled restore")
    time.sleep(1.5)
    if p.text("count-restored") != restored_before or p.js("return document.getElementById('latest-restored').dataset.checkpointId;"):
        raise Failure("a dismissed restore confirmation restored anyway")

    # 6. Accepting it restarts the job from that checkpoint, which then runs on.
    target = newest_restorable()
    p.click(f'#checkpoints button[data-action="restore"][data-checkpoint-id="{target}"]', f"Restore {target}")
    p.wait(EC.alert_is_present(), "the restore confirmation").accept()
    la = p.wait_js("const b = document.getElementById('last-action');"
                   "return b.dataset.action === 'restore' && b.dataset.result !== 'pending'"
                   " ? {result: b.dataset.result, text: b.textContent} : null;",
                   "the restore result in #last-action")
    if la["result"] != "ok":
        raise Failure(f"restore from {target} failed: {la['text']}")
    p.wait_js(f"return document.getElementById('latest-restored').dataset.checkpointId === '{target}'"
              " && Number(document.getElementById('count-restored').textContent) >= 1;",
              f"#latest-restored to show checkpoint {target}")
    p.wait_js(f"return document.querySelector('#jobs tr[data-job-id=\"{job}\"]').dataset.state === 'RUNNING';",
              f"job {job} RUNNING again")
    p.wait_js("return Array.from(document.querySelectorAll('#checkpoints tr[data-status=\"COMPLETED\"]'))"
              f".some(r => Number(r.dataset.checkpointId) > {target});",
              f"a checkpoint after {target} to complete after the restore")
    facts.append(f"restored from {target}")

    # 7. A wrong token: the 401 banner with the server's title; the right one clears it.
    p.set_token("not-the-token")
    banner = p.wait_js("const e = document.getElementById('error');"
                       "return !e.hidden && e.dataset.status === '401' ? e.textContent : null;",
                       "the 401 error banner")
    if "401" not in banner or (expected_401_title and expected_401_title not in banner):
        raise Failure(f"the 401 banner lacks the status or the problem title: {banner!r}")
    if not driver.find_element(By.ID, "error").is_displayed():
        raise Failure("the 401 banner is not visible")
    p.set_token(token)
    p.wait_js("return document.getElementById('error').hidden;", "the error banner to clear with the right token")
    facts.append("401 banner")

    # 8. Reload without the fragment: the token is remembered for the tab.
    driver.get(base)
    p.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job}"]')),
           "the job after a reload without the fragment (token from sessionStorage)")
    p.wait_js("return document.querySelector('#checkpoints tr[data-checkpoint-id]') !== null && document.getElementById('error').hidden;",
              "checkpoints after the reload")

    # 9. No CSP violation, no script error.
    bad = [e for e in browser_log(driver)
           if "Content Security Policy" in e.get("message", "") or "Uncaught" in e.get("message", "")]
    if bad:
        raise Failure("browser console errors: " + "; ".join(e["message"] for e in bad))


def browser_log(driver):
    try:
        return driver.get_log("browser")
    except WebDriverException:
        return []


def save_screenshot(driver, path):
    try:
        # The whole page, not only the 1400x1000 viewport.
        import base64
        size = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        })
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    except WebDriverException:
        driver.save_screenshot(path)
    log(f"screenshot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080/")
    ap.add_argument("--token", required=True)
    ap.add_argument("--job", default="pv")
    ap.add_argument("--screenshot", default="", help="save a PNG of the dashboard here")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--serve-html", default="", help="development: serve this file at / via a local proxy")
    args = ap.parse_args()

    base = args.url if args.url.endswith("/") else args.url + "/"
    if args.serve_html:
        upstream = urllib.parse.urlsplit(base).netloc
        base = f"http://{start_proxy(args.serve_html, upstream)}/"
        log(f"serving {args.serve_html} at {base} (proxy to {upstream})")

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check",
              "--disable-extensions", "--disable-background-networking", "--disable-sync"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.set_capability("unhandledPromptBehavior", "ignore")
    # An explicit driver path: selenium-manager is not run, nothing is downloaded.
    service = Service(executable_path=args.chromedriver)

    started = time.time()
    facts = []
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(TIMEOUT)
        driver.set_script_timeout(TIMEOUT)
        run(driver, base, args.token, args.job, args.screenshot, facts)
    except (Failure, WebDriverException, AssertionError, ValueError, KeyError, TypeError) as e:
        print(f"dashboard-test: FAILED: {e}", file=sys.stderr)
        if not isinstance(e, Failure):
            traceback.print_exc()
        try:
            print("--- browser console ---", file=sys.stderr)
            for entry in browser_log(driver):
                print(f"{entry.get('level')}: {entry.get('message')}", file=sys.stderr)
            print("--- page text ---", file=sys.stderr)
            try:
                driver.switch_to.alert.dismiss()
            except (NoAlertPresentException, WebDriverException):
                pass
            print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
            print(f"--- url: {driver.current_url}", file=sys.stderr)
            if args.screenshot:
                save_screenshot(driver, args.screenshot)
        except WebDriverException as e2:
            print(f"(could not read the page: {e2})", file=sys.stderr)
        return 1
    finally:
        try:
            driver.quit()
        except WebDriverException:
            pass
    print(f"dashboard-test: ok ({', '.join(facts)}; {time.time() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
