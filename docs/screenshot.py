"""Take docs/viewer.png: the web viewer with live records, in headless Chromium.

    python docs/screenshot.py [OUTPUT]

Needs the test extra (Playwright) and Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

import wslogging

KEY = "screenshot-key"
OUTPUT = Path(__file__).with_name("viewer.png")


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "live": {"class": "wslogging.WebSocketHandler", "port": 0, "api_keys": [KEY]}
            },
            "root": {"level": "DEBUG", "handlers": ["live"]},
            "loggers": {"asyncio": {"level": "WARNING"}},
        }
    )
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, wslogging.WebSocketHandler)
    http, billing, db = (logging.getLogger(f"app.{name}") for name in ("http", "billing", "db"))
    http.info("GET /orders 200 in 12 ms", extra={"status": 200, "request_id": "a41f"})
    db.debug("pool: 4 of 10 connections in use", extra={"in_use": 4})
    billing.info("invoice INV-7 paid", extra={"amount": 12.5, "category": "billing"})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1000, "height": 470})
        page.goto(f"{handler.url}/")
        page.fill("#key", KEY)
        page.press("#key", "Enter")
        expect(page.locator("body")).to_have_attribute("data-conn", "live")
        http.warning("GET /search took 2.4 s", extra={"status": 200, "request_id": "b7c2"})
        try:
            raise KeyError("customer")
        except KeyError:
            billing.exception("invoice INV-8 failed", extra={"invoice": "INV-8"})
        db.critical("primary database unreachable", extra={"host": "db-1"})
        http.info("GET /health 200 in 1 ms", extra={"status": 200, "request_id": "c9d0"})
        rows = page.locator("#log .row")
        expect(rows).to_have_count(7)
        rows.filter(has_text="/search").click()  # its fields; a traceback would name paths
        page.locator("#log").evaluate("el => { el.scrollTop = 0; }")
        page.screenshot(path=str(output))
        browser.close()
    handler.close()
    print(f"wrote {output} ({output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
