"""Drives the dashboard in a real headless Chromium (Debian's `chromium`,
through Playwright's Python package; no browser download).

Run by tests/dashboard_browser.rs against a live `fusillade serve` with the
built-in mock upstream. Exits non-zero (with the reason) on any failed check,
and also when Chromium or Playwright is missing: a missing browser must fail
the test run, never skip it.

Usage: dashboard.py BASE_URL KEY OTHER_KEY INPUT.jsonl SLOW.jsonl BAD.jsonl SHOT_DIR
"""

import json
import os
import sys
import urllib.error
import urllib.request

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LONG = 120_000  # ms: the machine may be busy


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    from playwright.sync_api import sync_playwright
except ImportError:
    fail("the Python package `playwright` is missing (pip install playwright)")
if not os.access(CHROMIUM, os.X_OK):
    fail(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")


def api_status(base, key, path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def main():
    base, key, other_key, input_path, slow_path, bad_path, shots = sys.argv[1:8]
    os.makedirs(shots, exist_ok=True)
    errors = []

    def watch(page, who):
        page.on("console", lambda m: m.type == "error" and errors.append(f"{who} console: {m.text} at {page.url}"))
        page.on("pageerror", lambda e: errors.append(f"{who} page error: {e} at {page.url}"))

    def shot(page, name):
        page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=False)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        ctx.set_default_timeout(LONG)
        page = ctx.new_page()
        watch(page, "alice")

        # Sign in.
        page.goto(base + "/")
        page.wait_for_selector("#key")
        shot(page, "login")
        page.fill("#key", key)
        page.click("#login")
        page.wait_for_selector("#batches")
        who = page.text_content("#who")
        if "admin" not in who:
            fail(f"the header should name an admin, not {who!r}")

        # A file with bad lines: the problems are listed by line number.
        page.goto(base + "/#/upload")
        page.set_input_files("#file-input", bad_path)
        page.wait_for_selector("#line-errors")
        cells = page.locator("#line-errors td").all_text_contents()
        if "2" not in cells or "invalid_json_line" not in cells:
            fail(f"the bad line should be listed as line 2: {cells}")

        # Upload the 500 lines through the page and create a batch.
        page.goto(base + "/#/batches")
        page.wait_for_selector("#batches")
        page.goto(base + "/#/upload")
        page.set_input_files("#file-input", input_path)
        page.wait_for_selector("#upload-result")
        result = page.text_content("#upload-result")
        if "500 valid lines, 0 refused" not in result:
            fail(f"upload result: {result!r}")
        shot(page, "upload")
        page.select_option("#endpoint", "/v1/chat/completions")
        page.fill("#window", "24h")
        page.click("#create-batch")
        page.wait_for_url("**/#/batch/batch_*")
        batch_id = page.url.split("#/batch/")[1].split("?")[0]

        # The progress bar reaches 100% without a reload.
        # Selectors, not wait_for_function: the page's CSP forbids eval.
        page.wait_for_selector("#progress-pct:text-is('100%')")
        page.wait_for_selector("#batch-head [data-status=completed]")
        page.wait_for_selector("#throughput rect")
        page.wait_for_selector("#error-breakdown")
        page.wait_for_selector("#latency")
        breakdown = page.text_content("#error-breakdown")
        if "400" not in breakdown:
            fail(f"the error breakdown should show the upstream's 400s: {breakdown!r}")
        head = page.text_content("#batch-head")
        if "null" in head or "undefined" in head:
            fail(f"the batch page shows an empty value as text: {head!r}")
        shot(page, "batch")

        # Open a failed request and see its error.
        page.goto(f"{base}/#/batch/{batch_id}?state=failed")
        page.wait_for_selector("#requests tr[data-state=failed]")
        rows = page.locator("#requests tr[data-state=failed]")
        if rows.count() != 5:
            fail(f"5 failed requests expected, {rows.count()} shown")
        rows.first.click()
        page.wait_for_selector("#request-error")
        err = page.text_content("#request-detail")
        if "prompt refused by the mock" not in err or "fail-" not in err:
            fail(f"the failed request's error is not shown: {err!r}")
        shot(page, "request")
        page.click("#download-output")
        page.click("#download-errors")

        # A slow batch, cancelled from its page.
        page.goto(base + "/#/upload")
        page.set_input_files("#file-input", slow_path)
        page.wait_for_selector("#upload-result")
        page.click("#create-batch")
        page.wait_for_url("**/#/batch/batch_*")
        slow_id = page.url.split("#/batch/")[1]
        page.wait_for_selector("#batch-head [data-status=in_progress]")
        page.click("#batch-head [data-action=cancel]")
        page.wait_for_selector("#modal:not([hidden])")
        shot(page, "cancel-confirm")
        page.click("#modal-yes")
        page.wait_for_selector("#batch-head [data-status=cancelled]")
        shot(page, "cancelled")

        # The list, filtered, and the admin pages.
        page.goto(base + "/#/batches")
        page.wait_for_selector(f"#batches tr[data-id={batch_id}]")
        page.wait_for_selector(f"#batches tr[data-id={slow_id}]")
        shot(page, "batches")
        page.goto(base + "/#/batches?status=cancelled")
        page.wait_for_selector(f"#batches tr[data-id={slow_id}]")
        if page.locator(f"#batches tr[data-id={batch_id}]").count():
            fail("the cancelled filter shows a completed batch")
        page.goto(base + "/#/models")
        page.wait_for_selector("#models tr[data-model]")
        # Calls per second appear from the second poll on.
        page.wait_for_selector("#models td:text-matches('[0-9.]+/s$')")
        fast = page.text_content("#models tr[data-model=dash-fast]")
        if "/ 16" not in fast:
            fail(f"the model's limit of 16 is not shown: {fast!r}")
        shot(page, "models")
        page.goto(base + "/#/workers")
        page.wait_for_selector("#workers tr[data-worker]")
        shot(page, "workers")

        # Another owner sees none of it.
        ctx2 = browser.new_context(viewport={"width": 1280, "height": 860})
        ctx2.set_default_timeout(LONG)
        bob = ctx2.new_page()
        watch(bob, "bob")
        bob.goto(base + "/")
        bob.fill("#key", other_key)
        bob.click("#login")
        bob.wait_for_selector("#batches td.muted")
        if bob.locator("#batches tr[data-id]").count():
            fail("another owner sees batches")
        if bob.locator("nav a[data-page=models]:not([hidden])").count():
            fail("a non-admin is offered the models page")
        shot(bob, "other-owner")
        for path in [f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/stats",
                     f"/v1/batches/{batch_id}/requests", f"/v1/batches/{slow_id}"]:
            status, _ = api_status(base, other_key, path)
            if status != 404:
                fail(f"another owner got {status} for {path}")
        status, listed = api_status(base, other_key, "/v1/batches")
        if status != 200 or listed["data"]:
            fail(f"another owner's list: {status} {listed}")
        status, _ = api_status(base, other_key, "/v1/admin/models")
        if status != 403:
            fail(f"a non-admin got {status} for the models")
        browser.close()

    if errors:
        fail("console errors:\n" + "\n".join(errors))
    print(f"ok: batch {batch_id} completed, {slow_id} cancelled, screenshots in {shots}")


main()
