"""Times the dashboard's pages in headless Chromium, for
`fusillade-bench dashboard --browser`: each page is loaded ROUNDS times in a
fresh browser context (no cache, nothing kept), and the time from the start
of navigation until the page shows its data is read from the mark the page
sets at that moment (performance.mark), so the driver's own delays are not
counted.

Usage: page_timing.py BASE_URL KEY BIG_BATCH_ID FAILED_REQUEST_ID ROUNDS
"""

import os
import statistics
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def main():
    base, key, big, failed, rounds = sys.argv[1:6]
    rounds = int(rounds)
    # (name, hash, selector that appears once the data is shown, the mark
    # the page sets at that moment)
    pages = [
        ("batches", "#/batches", "#batches tr[data-id]", "data"),
        ("batches, cancelled", "#/batches?status=cancelled", "#batches tr[data-id]", "data"),
        ("batch (1M), head", f"#/batch/{big}", "#progress-pct", "head"),
        ("batch (1M), with stats", f"#/batch/{big}", "#throughput rect", "stats"),
        ("batch (1M), requests", f"#/batch/{big}", "#requests tr[data-id]", "requests"),
        ("batch (1M), failed", f"#/batch/{big}?state=failed", "#requests tr[data-state=failed]", "requests"),
        ("models", "#/models", "#models tr[data-model]", "data"),
        ("workers", "#/workers", "#workers tbody tr", "data"),
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        print(f"{'page in Chromium (navigation start to data shown)':<58} {'median ms':>9} {'p95 ms':>9}")
        for name, hash_, selector, mark in pages:
            times = []
            parts = []
            for _ in range(rounds):
                ctx = browser.new_context()
                ctx.add_init_script(f"sessionStorage.setItem('fusillade-key', {key!r});")
                page = ctx.new_page()
                page.goto(f"{base}/{hash_}")
                page.wait_for_selector(selector, timeout=60_000)
                # The page's own mark, not the time the driver noticed it.
                times.append(page.evaluate(f"performance.getEntriesByName({mark!r})[0].startTime"))
                parts.append(page.evaluate(
                    "(() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return [n.fetchStart, n.responseEnd, n.domContentLoadedEventEnd]; })()"))
                ctx.close()
            times.sort()
            p95 = times[min(len(times) - 1, int(0.95 * len(times) + 0.999) - 1)]
            fetch, html, dcl = (statistics.median(p[i] for p in parts) for i in range(3))
            print(f"{name:<58} {statistics.median(times):>9.1f} {p95:>9.1f}"
                  f"   (fetch start {fetch:.0f}, html {html:.0f}, DOM ready {dcl:.0f})")
        browser.close()


main()
