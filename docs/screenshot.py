"""Take docs/viewer.png and docs/viewer-chart.png: the web viewer in headless Chromium.

    python docs/screenshot.py [DIRECTORY]

viewer.png: live records, a dev server's own colours, two field columns and one record
expanded. viewer-chart.png: the chart over three minutes of traffic (backdated records, so
that it takes seconds to make), with an error burst and the gap of a server restart.

Needs the test extra (Playwright) and Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import logging
import logging.config
import random
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect, sync_playwright

import wslogging

KEY = "screenshot-key"
DIRECTORY = Path(__file__).parent


def configure(port: int) -> wslogging.WebSocketHandler:
    """dictConfig as a user writes it; returns the handler (``port`` 0 picks one)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "live": {"class": "wslogging.WebSocketHandler", "port": port, "api_keys": [KEY]}
            },
            "root": {"level": "DEBUG", "handlers": ["live"]},
            "loggers": {"asyncio": {"level": "WARNING"}},
        }
    )
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, wslogging.WebSocketHandler)
    return handler


def backdated(logger: logging.Logger, when: float, level: int, msg: str, **extra: Any) -> None:
    """Log ``msg`` as if at ``when`` (the chart places records by their own time)."""
    record = logger.makeRecord(logger.name, level, "app.py", 1, msg, (), None, extra=extra)
    record.created = when
    record.msecs = (when % 1) * 1000
    logger.handle(record)


def traffic(start: float, end: float, http: logging.Logger, rng: random.Random) -> int:
    """Requests from ``start`` to ``end``: a steady rate, and an error burst at 40 s before
    the end. Returns how many records it logged."""
    logged = 0
    second = start
    while second < end:
        burst = end - 45 < second < end - 38
        for n in range(rng.randint(8, 20) + (25 if burst else 0)):
            when = second + n / 50
            if burst and n % 2:
                backdated(http, when, logging.ERROR, "GET /pay 502 upstream timed out")
            elif n % 9 == 0:
                backdated(http, when, logging.WARNING, "GET /search took 2.4 s")
            elif n % 4 == 0:
                backdated(http, when, logging.DEBUG, "cache hit")
            else:
                backdated(http, when, logging.INFO, "GET /orders 200")
            logged += 1
        second += 1
    return logged


def open_viewer(page: Page, handler: wslogging.WebSocketHandler, query: str = "") -> None:
    page.goto(f"{handler.url}/{query}")
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-conn", "live")


def take_viewer(page: Page, output: Path) -> None:
    handler = configure(0)
    http, billing, db = (logging.getLogger(f"app.{name}") for name in ("http", "billing", "db"))
    http.info("GET /orders 200 in 12 ms", extra={"status": 200, "request_id": "a41f"})
    db.debug("pool: 4 of 10 connections in use", extra={"in_use": 4})
    billing.info("invoice INV-7 paid", extra={"amount": 12.5, "category": "billing"})
    open_viewer(page, handler, "?columns=request_id,status")
    # A dev server's own colours, as werkzeug writes them.
    logging.getLogger("werkzeug").info(
        '127.0.0.1 - - "\x1b[33mGET /search?q=shoes HTTP/1.1\x1b[0m" 404 -',
        extra={"status": 404, "request_id": "b7c2"},
    )
    http.warning("GET /search took 2.4 s", extra={"status": 200, "request_id": "b7c2"})
    try:
        raise KeyError("customer")
    except KeyError:
        billing.exception("invoice INV-8 failed", extra={"invoice": "INV-8"})
    db.critical("primary database unreachable", extra={"host": "db-1"})
    logging.getLogger("uvicorn.access").info(
        '127.0.0.1:51234 - "\x1b[1mPOST /orders HTTP/1.1\x1b[0m" \x1b[32m201 Created\x1b[0m',
        extra={"status": 201, "request_id": "c9d0"},
    )
    rows = page.locator("#log .row")
    expect(rows).to_have_count(8)
    rows.filter(has_text="/search took").click()  # its fields; a traceback would name paths
    page.locator("#log").evaluate("el => { el.scrollTop = 0; }")
    page.wait_for_timeout(1200)  # a drawing of the chart
    page.screenshot(path=str(output))
    handler.close()


def take_chart(page: Page, output: Path) -> None:
    handler = configure(0)
    http = logging.getLogger("app.http")
    rng = random.Random(7)  # noqa: S311 -- made-up traffic for a picture, the same each time
    open_viewer(page, handler)
    now = time.time()
    logged = traffic(now - 180, now - 100, http, rng)
    expect(page.locator("#n-received")).to_have_text(f"{logged:,}")
    configure(handler.port)  # a restart: the page shows the gap, and goes on
    traffic(now - 96, now, http, rng)
    expect(page.locator("#log .gap")).to_have_count(1)
    page.wait_for_timeout(1500)
    page.click("#prev-error")  # the latest error, in view
    page.wait_for_timeout(300)
    page.screenshot(path=str(output))
    logging.getLogger().handlers[0].close()


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DIRECTORY
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        for name, take, height in (("viewer", take_viewer, 560), ("viewer-chart", take_chart, 420)):
            page = browser.new_page(viewport={"width": 1000, "height": height})
            output = directory / f"{name}.png"
            take(page, output)
            page.close()
            print(f"wrote {output} ({output.stat().st_size} bytes)")
        browser.close()


if __name__ == "__main__":
    main()
