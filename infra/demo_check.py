"""Check what `make up` promises, the way a person would: log in to the console with the demo login,
wait until the queue shows a red and a yellow alert, open the red one with its trend chart, and keep
screenshots of both.

    .local/venv/bin/python infra/demo_check.py [--timeout 300] [--out .local/demo/screenshots]

Run it beside a running `make up`. Exit code 0 when both were seen in time, 1 when not (it says
what was missing), 2 when the console or Chromium cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local")).resolve()
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling Google's hosts (closed network here).
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _rows(page: Page, severity: str) -> int:
    return page.locator(f'tr[data-id] .badge:text-is("{severity}")').count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=f"http://127.0.0.1:{os.environ.get('VAKTROM_ALERTS_HTTP_PORT', '8470')}"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    parser.add_argument("--out", type=Path, default=STATE / "demo" / "screenshots")
    args = parser.parse_args(argv)
    login = STATE / "demo" / "login"
    if not login.exists():
        print(f"demo-check: no demo login at {login}: start `make up` first", file=sys.stderr)
        return 2
    if shutil.which(CHROMIUM) is None:
        print(f"demo-check: {CHROMIUM} is missing: run infra/bootstrap", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            while True:  # `make up` may still be starting the console
                try:
                    page.goto(f"{args.url}/login")
                    break
                except PlaywrightError:
                    if time.monotonic() - began > args.timeout:
                        print(
                            f"demo-check: the console at {args.url} does not answer: is `make up` running?",
                            file=sys.stderr,
                        )
                        return 2
                    time.sleep(1.0)
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", login.read_text().strip())
            page.click("button[type=submit]")
            page.wait_for_selector("#live.on", timeout=10_000)
            seen: dict[str, float] = {}
            while time.monotonic() - began < args.timeout and len(seen) < 2:
                for severity in ("red", "yellow"):
                    if severity not in seen and _rows(page, severity):
                        seen[severity] = time.monotonic() - began
                        print(f"demo-check: first {severity} alert in the queue after {seen[severity]:.1f} s")
                page.wait_for_timeout(500)
            page.screenshot(path=str(args.out / "queue.png"), full_page=True)
            missing = {"red", "yellow"} - set(seen)
            if missing:
                what = " or ".join(sorted(missing))
                print(
                    f"demo-check: no {what} alert after {args.timeout:.0f} s; "
                    f"see .local/logs/ and the queue in {args.out / 'queue.png'}",
                    file=sys.stderr,
                )
                return 1
            page.locator('tr[data-id]:has(.badge:text-is("red"))').first.click()
            page.wait_for_selector('#charts[data-ready="1"] .chart canvas', timeout=10_000)
            page.wait_for_timeout(500)  # the chart's first frame
            page.screenshot(path=str(args.out / "alert.png"), full_page=True)
        finally:
            browser.close()
    print(f"demo-check: ok; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
