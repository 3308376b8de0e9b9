"""The web viewer at ``/`` in headless Chromium, driven with Playwright against a live server.

The server runs in its own thread (the ``handler`` fixture), so these tests are plain
functions using Playwright's sync API. Without ``/usr/bin/chromium`` they are skipped, except
under CI (``CI=true``), where a missing browser fails them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _escapes import COLOURED, ESCAPES
from conftest import KEY, TIMEOUT, raw_http, wait_until
from playwright.sync_api import Browser, Page, expect, sync_playwright

import wslogging
from wslogging import _history

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--js-flags=--expose-gc",  # the busy-page test measures the heap after a collection
]
# The viewer's bound on the entries in the page (MAX_ROWS in viewer.js).
MAX_ROWS = 5000

log = logging.getLogger("app.viewer")
Configure = Callable[..., wslogging.WebSocketHandler]
expect.set_options(timeout=TIMEOUT * 1000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"no browser at {CHROMIUM}: .ci/run installs Debian's chromium package")
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium); CI=true fails instead")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in fresh contexts (their own session storage); a script error or a
    Content-Security-Policy violation in any of them fails the test."""
    contexts = []
    problems: list[str] = []

    def make(**options: Any) -> Page:
        context = browser.new_context(accept_downloads=True, **options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda message: (
                problems.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        return page

    yield make
    for context in contexts:
        context.close()
    assert [] == problems


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


def open_viewer(
    page: Page, handler: wslogging.WebSocketHandler, key: str = KEY, view: str = ""
) -> None:
    """Load the page (with ``view``, its query string), enter the key, and wait until the
    stream is live."""
    page.goto(f"{handler.url}/{view}")
    page.fill("#key", key)
    page.press("#key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-conn", "live")


def rows(page: Page, text: str | None = None) -> Any:
    """The record rows, or those containing ``text``."""
    found = page.locator("#log .row")
    return found if text is None else found.filter(has_text=text)


def last_note(page: Page) -> Any:
    """The newest note row (a filter applied or refused)."""
    return page.locator("#log .note").last


def messages_after_last_note(page: Page) -> list[str]:
    """The messages of the rows after the newest note (a filter applied, say)."""
    return list(
        page.evaluate(
            """() => {
                const notes = document.querySelectorAll('#log .note');
                const out = [];
                for (let el = notes[notes.length - 1].nextElementSibling; el;
                     el = el.nextElementSibling) {
                    if (el.classList.contains('row')) out.push(el.querySelector('.m').textContent);
                }
                return out;
            }"""
        )
    )


def chart_shows(page: Page, variable: str) -> bool:
    """Whether the chart has a pixel drawn in the colour of the CSS ``variable``."""
    return bool(
        page.evaluate(
            """(name) => {
                const probe = document.createElement('canvas').getContext('2d');
                probe.fillStyle = getComputedStyle(document.documentElement)
                    .getPropertyValue(name).trim();
                probe.fillRect(0, 0, 1, 1);
                const want = probe.getImageData(0, 0, 1, 1).data;
                const canvas = document.getElementById('chart');
                if (!canvas.width) return false;
                const data = canvas.getContext('2d')
                    .getImageData(0, 0, canvas.width, canvas.height).data;
                for (let i = 0; i < data.length; i += 4) {
                    if (data[i] === want[0] && data[i + 1] === want[1] && data[i + 2] === want[2]
                        && data[i + 3] === 255) return true;
                }
                return false;
            }""",
            variable,
        )
    )


def test_enter_the_key_and_see_records_arrive(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """History first, then live records as rows with time, coloured level, logger and message;
    a row expands (click, Enter, Space) to its fields and traceback. The key is kept in session
    storage and never appears in a URL; log text is shown as text, never as HTML."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    log.info("from history")
    wait_until(lambda: len(handler._server.hub.history) >= 1)  # type: ignore[union-attr]
    open_viewer(page, handler)
    expect(rows(page, "from history")).to_have_count(1)

    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("it failed", extra={"order": 7})
    log.warning("<img src=x onerror=alert(1)>")
    row = rows(page, "it failed")
    expect(row).to_have_class(re.compile(r"\brow error has-exc\b"))
    expect(row.locator(".lv")).to_have_text("ERROR")
    expect(row.locator(".lg")).to_have_text("app.viewer")
    expect(row.locator(".t")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    expect(rows(page, "<img src=x").locator(".m")).to_have_text("<img src=x onerror=alert(1)>")
    assert 0 == page.locator("#log img").count()

    row.focus()
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("aria-expanded", "true")
    expect(row.locator(".details")).to_contain_text("fields.order7")
    expect(row.locator(".details .exc")).to_contain_text("ValueError: bad value")
    page.keyboard.press(" ")
    expect(row.locator(".details")).to_have_count(0)
    row.click()
    expect(row.locator(".details")).to_have_count(1)

    assert KEY == page.evaluate("sessionStorage.getItem('wslogging.key')")
    assert any("ticket=" in url for url in urls if url.startswith("ws:"))
    assert [] == [url for url in urls if KEY in url]


def test_a_wrong_key_shows_a_clear_message(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """A refused key says so, forgets the key and asks again; the right one then works."""
    page.goto(f"{handler.url}/")
    page.fill("#key", "wrong-key")
    page.press("#key", "Enter")
    expect(page.locator("#login-error")).to_have_text(
        "Wrong API key: the server refused it (invalid API key). Enter it again."
    )
    expect(page.locator("#key")).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('wslogging.key')") is None
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-conn", "live")
    expect(page.locator("#login-error")).to_be_hidden()


def test_a_key_beyond_ascii_works(configure: Configure, page: Page) -> None:
    """A key with any characters is sent as UTF-8, as the server compares it."""
    handler = configure(api_keys=["ключ-🔑"])
    open_viewer(page, handler, key="ключ-🔑")
    log.info("through a unicode key")
    expect(rows(page, "through a unicode key")).to_have_count(1)


def test_a_revoked_key_asks_for_a_key_again(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """When the server stops accepting the key, the stream is closed and the page, finding
    the key refused on reconnecting, asks for one again."""
    open_viewer(page, handler)
    handler.set_api_keys(["another-key"])
    expect(page.locator("#login-error")).to_have_text(
        "Wrong API key: the server refused it (invalid API key). Enter it again."
    )
    assert page.evaluate("sessionStorage.getItem('wslogging.key')") is None


def test_throttling_is_reported_and_waited_out(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """A wrong key past this address's budget of failures (429), the page says so and when
    it will try again."""
    refusal = (
        b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\n"
        b"Connection: close\r\n\r\n"
    )
    answers = (raw_http(handler.port, refusal) for _ in range(100))
    assert any(answer.startswith(b"HTTP/1.1 429") for answer in answers)
    page.goto(f"{handler.url}/")
    page.fill("#key", "nope")
    page.press("#key", "Enter")
    expect(page.locator("#status")).to_have_text(
        re.compile(
            r"^Refused for now: too many failed key attempts from this address; "
            r"reconnecting in \d+\.0 s$"
        )
    )
    expect(page.locator("body")).to_have_attribute("data-conn", "retrying")
    expect(page.locator("#login-view")).to_be_hidden()


def test_filters_apply_on_the_server(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """Level, logger prefix and text re-subscribe; afterwards only matching records arrive."""
    open_viewer(page, handler)
    page.select_option("#f-level", "WARNING")
    expect(last_note(page)).to_have_text("— Filter applied by the server: level ≥ WARNING —")
    log.info("quiet info")
    log.warning("loud warning")
    expect(rows(page, "loud warning")).to_have_count(1)
    assert ["loud warning"] == messages_after_last_note(page)

    page.select_option("#f-level", "")
    page.fill("#f-logger", "app.db")
    page.fill("#f-grep", "needle")
    page.click("#apply")
    expect(last_note(page)).to_have_text(
        '— Filter applied by the server: logger app.db · text "needle" —'
    )
    logging.getLogger("app.db").debug("no match here")
    logging.getLogger("app.dbx").info("needle, other logger")
    logging.getLogger("app").error("needle, parent logger")
    logging.getLogger("app.db.pool").debug("a needle in the pool")
    logging.getLogger("app.db").info("the last needle")
    expect(rows(page, "the last needle")).to_have_count(1)
    assert ["a needle in the pool", "the last needle"] == messages_after_last_note(page)


def test_pid_filter(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """Worker processes: only the records of the pids typed in arrive; a pid that is not a
    number is refused by the server, and the filter in force stays."""
    open_viewer(page, handler)
    page.fill("#f-pid", "4242, 4245")
    page.click("#apply")
    expect(last_note(page)).to_have_text("— Filter applied by the server: pid 4242, 4245 —")
    for pid in (4241, 4242, 4243, 4245):
        record = {"name": "app", "levelno": 20, "levelname": "INFO", "msg": f"from {pid}"}
        log.handle(logging.makeLogRecord({**record, "process": pid}))
    expect(rows(page, "from 4245")).to_have_count(1)
    assert ["from 4242", "from 4245"] == messages_after_last_note(page)
    page.fill("#f-pid", "worker-2")
    page.click("#apply")
    expect(last_note(page)).to_contain_text("Filter refused by the server (pid must be")


def test_a_refused_filter_keeps_the_previous_one(configure: Configure, page: Page) -> None:
    """A filter the server refuses (too many prefixes) is reported, and the one in force stays,
    on this connection and the next."""
    handler = configure()
    open_viewer(page, handler)
    page.select_option("#f-level", "ERROR")
    expect(last_note(page)).to_contain_text("level ≥ ERROR")
    page.fill("#f-logger", " ".join(f"app.p{n}" for n in range(40)))
    page.press("#f-logger", "Enter")
    expect(last_note(page)).to_have_text(
        "— Filter refused by the server (at most 32 logger values); the previous one stays —"
    )
    log.warning("still filtered out")
    log.error("still let through")
    expect(rows(page, "still let through")).to_have_count(1)
    assert 0 == rows(page, "still filtered out").count()

    configure(port=handler.port)  # a restart: the page reconnects, its filter in the URL
    log.warning("filtered out after the restart")
    log.error("let through after the restart")
    expect(rows(page, "let through after the restart")).to_have_count(1)
    assert 0 == rows(page, "filtered out after").count()


def test_pause_and_resume_lose_nothing(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """While paused, records are received but not shown; resuming shows them all, in order."""
    open_viewer(page, handler)
    log.info("before the pause")
    expect(rows(page, "before the pause")).to_have_count(1)
    page.click("#pause")
    expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    for n in range(50):
        log.info("paused %d", n)
    expect(page.locator("#pause")).to_have_text("Resume (50 new)")
    expect(page.locator("#n-received")).to_have_text("51")
    assert 0 == rows(page, "paused ").count()
    page.click("#pause")
    expect(rows(page, "paused ")).to_have_count(50)
    assert [f"paused {n}" for n in range(50)] == rows(page, "paused ").locator(
        ".m"
    ).all_text_contents()
    expect(page.locator("#pause")).to_have_text("Pause")


def test_a_server_restart_shows_the_gap_and_the_stream_continues(
    configure: Configure, page: Page
) -> None:
    """The page reconnects by itself after a restart on the same port, shows the gap marker
    and counts an unknown drop, and goes on with the new server's records."""
    first = configure()
    open_viewer(page, first)
    log.info("before the restart")
    expect(rows(page, "before the restart")).to_have_count(1)

    second = configure(port=first.port)  # dictConfig again: the old server closes with 1001
    assert second.serving
    log.info("after the restart")
    expect(rows(page, "after the restart")).to_have_count(1)
    gap = page.locator("#log .gap")
    expect(gap).to_have_text("— gap: an unknown number of records missed (the server restarted) —")
    expect(page.locator("#n-dropped")).to_have_text("0 + 1 unknown")
    wait_until(lambda: chart_shows(page, "--gap"))  # the chart marks it too
    order = page.locator("#log > *").all_text_contents()
    before, marker, after = (
        next(i for i, text in enumerate(order) if needle in text)
        for needle in ("before the restart", "gap:", "after the restart")
    )
    assert before < marker < after
    expect(page.locator("body")).to_have_attribute("data-conn", "live")


def test_records_missed_while_away_are_shown_and_counted(configure: Configure, page: Page) -> None:
    """Back after missing more than the server's history holds, the page resumes after the
    last record it got: a gap marker counting what is lost, then the rest, none twice."""
    handler = configure(history=100)
    open_viewer(page, handler)
    log.info("before leaving")
    expect(rows(page, "before leaving")).to_have_count(1)
    handler.set_api_keys(["another-key"])  # the page is cut off and asks for a key
    expect(page.locator("#login-view")).to_be_visible()
    for n in range(500):
        log.info("away %d", n)
    hub = handler._server.hub  # type: ignore[union-attr]
    wait_until(lambda: 501 == hub.stats()["records_accepted"])
    handler.set_api_keys([KEY])
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(rows(page, "away 499")).to_have_count(1)
    expect(page.locator("#log .gap")).to_have_text(
        "— gap: 400 records missed (no longer in the server's history) —"
    )
    expect(page.locator("#n-dropped")).to_have_text("400")
    expect(page.locator("#n-received")).to_have_text("101")
    messages = page.locator("#log .row .m").all_text_contents()
    assert ["before leaving"] + [f"away {n}" for n in range(400, 500)] == messages


def test_auto_scroll_stops_when_scrolled_up(
    handler: wslogging.WebSocketHandler, new_page: Callable[..., Page]
) -> None:
    """The view follows the newest record until the user scrolls up; then new records do not
    move it, and a marker counts them ("2 new records — jump to latest") and follows again."""
    page = new_page(viewport={"width": 800, "height": 400})
    open_viewer(page, handler)
    for n in range(100):
        log.info("line %d", n)
    expect(rows(page, "line 99")).to_be_in_viewport()
    log_view = page.locator("#log")
    log_view.evaluate("el => { el.scrollTop = 0; }")
    expect(page.locator("#follow")).to_have_text("Jump to latest")
    log.info("newer")
    log.info("newest")
    expect(rows(page, "newest")).to_have_count(1)
    expect(page.locator("#follow")).to_have_text("2 new records — jump to latest")
    assert 0 == log_view.evaluate("el => el.scrollTop")
    expect(rows(page, "newer")).not_to_be_in_viewport()
    page.click("#follow")
    expect(rows(page, "newer")).to_be_in_viewport()
    expect(page.locator("#follow")).to_be_hidden()


def test_download_and_clear(
    handler: wslogging.WebSocketHandler, page: Page, tmp_path: Path
) -> None:
    """Download saves what is shown as JSON lines; Clear empties the view, not the counters."""
    open_viewer(page, handler)
    for n in range(3):
        log.info("kept %d", n, extra={"n": n})
    expect(rows(page, "kept 2")).to_have_count(1)
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename.endswith(".jsonl")
    saved = tmp_path / "saved.jsonl"
    download.value.save_as(saved)
    frames = [json.loads(line) for line in saved.read_text().splitlines()]
    kept = [frame for frame in frames if frame["log"].startswith("kept")]
    assert [("log", f"kept {n}", {"n": n}) for n in range(3)] == [
        (frame["type"], frame["log"], frame["fields"]) for frame in kept
    ]
    shown = len(frames)
    page.click("#clear")
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#n-shown")).to_have_text("0")
    expect(page.locator("#n-received")).to_have_text(str(shown))


def _contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS ``rgb(...)`` colours."""

    def luminance(css: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    low, high = sorted((luminance(foreground), luminance(background)))
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_themes_narrow_widths_and_keyboard(
    handler: wslogging.WebSocketHandler, new_page: Callable[..., Page], scheme: str
) -> None:
    """Both themes follow the system setting, every level's text is readable (contrast of at
    least 4.5:1), a phone-wide page has no sideways scrolling, and the rows are reachable and
    usable with the keyboard, with a visible focus."""
    page = new_page(color_scheme=scheme, viewport={"width": 360, "height": 640})
    open_viewer(page, handler)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(level, "a rather long message at level %s, to see it wrap on a phone", level)
    expect(rows(page, "at level 50")).to_have_count(1)
    colours = page.evaluate(
        """() => {
            const background = (el) => {
                for (; el; el = el.parentElement) {
                    const bg = getComputedStyle(el).backgroundColor;
                    if (bg !== 'rgba(0, 0, 0, 0)') return bg;
                }
                return 'rgb(255, 255, 255)';
            };
            return [...document.querySelectorAll('#log .row .lv, #log .row .m, #log .row .t')]
                .map((el) => [el.textContent, getComputedStyle(el).color, background(el)]);
        }"""
    )
    body_background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (scheme == "dark") == (body_background == "rgb(13, 17, 23)")
    low = [(text, _contrast(fg, bg)) for text, fg, bg in colours if _contrast(fg, bg) < 4.5]
    assert [] == low
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    page.focus("#logout")
    page.keyboard.press("Tab")  # the first row comes right after the toolbar
    first = rows(page).first
    expect(first).to_be_focused()
    assert "none" != first.evaluate("el => getComputedStyle(el).outlineStyle")
    page.keyboard.press("End")
    expect(rows(page).last).to_be_focused()
    page.keyboard.press("Enter")
    expect(rows(page).last).to_have_attribute("aria-expanded", "true")


def test_100000_records_keep_the_page_bounded_and_responsive(
    configure: Configure, page: Page
) -> None:
    """100,000 records streamed in: every one is counted, the page keeps its bound of rows
    (the newest ones), and the page's main thread never stalls long."""
    count = 100_000
    handler = configure(queue_size=count + 1000, client_queue_size=count + 1000)
    open_viewer(page, handler)
    # The longest pause between timer ticks of the page's main thread while records stream.
    page.evaluate(
        """() => {
            window.longestStall = 0;
            let last = performance.now();
            setInterval(() => {
                const now = performance.now();
                window.longestStall = Math.max(window.longestStall, now - last);
                last = now;
            }, 20);
        }"""
    )
    started = time.monotonic()
    for n in range(count):
        wslogging.broadcast_log_sync(f"bulk {n}")
    logged = time.monotonic() - started
    expect(page.locator("#n-received")).to_have_text(f"{count:,}", timeout=6 * TIMEOUT * 1000)
    received = time.monotonic() - started
    expect(rows(page).last).to_have_text(re.compile(f"bulk {count - 1}$"))
    assert MAX_ROWS == page.locator("#log > *").count()
    expect(rows(page).first).to_have_text(re.compile(f"bulk {count - MAX_ROWS}$"))
    stall = page.evaluate("window.longestStall")

    clicked = time.monotonic()
    rows(page).last.click()
    expect(rows(page).last.locator(".details")).to_have_count(1)
    answered = time.monotonic() - clicked
    print(
        f"\n100k: logged in {logged:.1f} s, all received after {received:.1f} s, "
        f"longest stall {stall:.0f} ms, click answered in {answered * 1000:.0f} ms"
    )
    assert stall < 2000
    assert answered < 2.0
    wait_until(lambda: handler.records_dropped == 0)


# -- the app's colours, the view in the URL, the chart, columns, record links -------------

# How the viewer shows "before<escape>after" (tests/_escapes.py): sequences dropped, other
# control characters written as escapes, as `wslogging tail` writes them.
SHOWN = {
    "clear screen": "beforeafter",
    "cursor up": "beforeafter",
    "OSC 0 title": "beforeafter",
    "OSC 8 hyperlink": "beforeclickafter",
    "OSC 52 clipboard": "beforeafter",
    "bell": "before\\x07after",
    "carriage return": "before\\rforgedafter",
    "C1 CSI": "beforeafter",
    "right-to-left override": "before\\u202eafter",
    "left-to-right mark": "before\\u200eafter",
    "right-to-left mark": "before\\u200fafter",
}


def test_app_colours_are_shown_and_other_escapes_defused(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """SGR colour and bold in messages, fields and tracebacks become styled text; every other
    control sequence is dropped and every other control character shown as an escape."""
    open_viewer(page, handler)
    for name, escape in ESCAPES:
        text = f"{name}: before{escape}after"
        try:
            raise ValueError(text)
        except ValueError:
            log.exception(text, extra={"styled": text})
    log.info(COLOURED, extra={"styled": COLOURED})
    expect(rows(page, "bold cyan")).to_have_count(1)
    page.evaluate("document.querySelectorAll('#log .row').forEach((row) => row.click())")
    shown = page.evaluate(
        """() => [...document.querySelectorAll('#log .row')].map((row) => [
            row.querySelector('.m').textContent,
            [...row.querySelectorAll('.details dt')]
                .find((dt) => dt.textContent.startsWith('fields.styled'))
                .nextElementSibling.textContent,
            row.querySelector('.details .exc')?.textContent ?? '',
        ])"""
    )
    expected = [f"{name}: {SHOWN[name]}" for name, _ in ESCAPES]
    plain = [*expected, "GET /boom HTTP/1.1 bold cyan plain"]
    assert plain == [m for m, _, _ in shown]
    assert plain == [f for _, f, _ in shown]
    assert all(f"ValueError: {e}" in exc for e, (_, _, exc) in zip(expected, shown, strict=False))
    text = page.evaluate("document.getElementById('log').textContent")
    controls = {c for c in text if c not in "\n\t" and (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F)}
    assert set() == controls
    assert not {"\u202e", "\u200e", "\u200f"} & set(text)
    assert 0 == page.locator("#log a").count()
    coloured = rows(page, "bold cyan")
    for part in (coloured.locator(".m"), coloured.locator(".details dd").last):
        expect(part.locator(".af1")).to_have_text("GET /boom HTTP/1.1")
        expect(part.locator(".af6.a-bold")).to_have_text("bold cyan")
    expect(rows(page, "bell").locator(".m .ctl")).to_have_text("\\x07")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_app_colours_are_readable_in_both_themes(
    handler: wslogging.WebSocketHandler, new_page: Callable[..., Page], scheme: str
) -> None:
    """Every colour an app can ask for (foreground or background) is drawn from the page's
    palette, at least 4.5:1 against what it is drawn on."""
    page = new_page(color_scheme=scheme)
    open_viewer(page, handler)
    sequences = [f"\x1b[{30 + n}mfg{n}\x1b[0m \x1b[{40 + n}mbg{n}\x1b[0m" for n in range(8)]
    log.info(" ".join(sequences) + " \x1b[38;5;196mred256\x1b[0m \x1b[38;2;0;0;0mblack")
    expect(rows(page, "red256")).to_have_count(1)
    colours = page.evaluate(
        """() => [...document.querySelectorAll('#log .sgr')].map((el) => {
            let bg = getComputedStyle(el).backgroundColor;
            for (let up = el.parentElement; bg === 'rgba(0, 0, 0, 0)'; up = up.parentElement) {
                bg = up ? getComputedStyle(up).backgroundColor : 'rgb(255, 255, 255)';
            }
            return [el.textContent, getComputedStyle(el).color, bg];
        })"""
    )
    assert 18 == len(colours)
    assert "af1" in rows(page, "red256").locator(".sgr").nth(16).get_attribute("class")
    low = [(text, _contrast(fg, bg)) for text, fg, bg in colours if _contrast(fg, bg) < 4.5]
    assert [] == low


def test_the_view_lives_in_the_url(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """A link with the API's filter parameters opens that view (after the key); a change
    updates the URL in place, a reload keeps it, and no key is ever in it."""
    pid = os.getpid()
    view = f"level=ERROR&logger=app.db&grep=timeout&pid={pid}&field.request_id=r+1&columns=status"
    page.goto(f"{handler.url}/?{view}&access_token={KEY}")
    assert KEY not in page.url  # a key put in the address is dropped from it at once
    urls: list[str] = []  # from here on, the page's own requests
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("body")).to_have_attribute("data-conn", "live")
    assert ["ERROR", "app.db", "timeout", str(pid), "request_id=r 1", "status"] == [
        page.input_value(f"#f-{name}") for name in ("level", "logger", "grep", "pid")
    ] + [page.input_value("#f-field"), page.input_value("#f-columns")]
    db = logging.getLogger("app.db")
    db.warning("timeout, but a warning", extra={"request_id": "r 1"})
    db.error("timeout, other request", extra={"request_id": "r 2"})
    logging.getLogger("app.http").error("timeout elsewhere", extra={"request_id": "r 1"})
    db.error("timeout, the one", extra={"request_id": "r 1", "status": 504})
    expect(rows(page, "the one")).to_have_count(1)
    assert ["timeout, the one"] == rows(page).locator(".m").all_text_contents()
    expect(rows(page, "the one").locator(".c")).to_have_text("504")
    assert page.url.endswith(f"/?{view}")

    length = page.evaluate("history.length")
    page.select_option("#f-level", "WARNING")
    expect(last_note(page)).to_contain_text("level ≥ WARNING")
    assert f"level=WARNING&logger=app.db&grep=timeout&pid={pid}" in page.url
    assert length == page.evaluate("history.length")  # replaced, not pushed
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-conn", "live")
    assert "WARNING" == page.input_value("#f-level")
    expect(rows(page, "but a warning")).to_have_count(1)
    assert ["timeout, but a warning", "timeout, the one"] == rows(page).locator(
        ".m"
    ).all_text_contents()
    assert [] == [url for url in urls if KEY in url]


def test_a_link_with_a_refused_filter_shows_everything(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """A filter in the link that the server refuses is reported, and the page shows every
    record instead of retrying for ever."""
    log.info("shown anyway")
    open_viewer(page, handler, view="?level=LOUD")
    expect(page.locator("#log .warn")).to_contain_text("Filter refused by the server (")
    expect(rows(page, "shown anyway")).to_have_count(1)
    assert "level" not in page.url


def test_fields_as_columns(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """Chosen fields are columns, with a header; a record's details add or remove one; the
    choice is in the URL and survives a reload."""
    open_viewer(page, handler)
    log.info("served", extra={"request_id": "a41f", "status": 200, "user": "alice"})
    page.fill("#f-columns", "fields.request_id, status")
    page.press("#f-columns", "Enter")
    row = rows(page, "served")
    expect(row.locator(".c")).to_have_text(["a41f", "200"])
    expect(page.locator("#columns-head")).to_have_text(
        re.compile("^time.*level.*logger.*request_id.*status.*message$")
    )
    assert "columns=request_id%2Cstatus" in page.url
    row.click()
    row.get_by_role("button", name="user", exact=True).click()
    expect(rows(page, "served").locator(".c")).to_have_text(["a41f", "200", "alice"])
    expect(rows(page, "served").locator(".details")).to_have_count(1)  # still open
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-conn", "live")
    expect(rows(page, "served").locator(".c")).to_have_text(["a41f", "200", "alice"])
    rows(page, "served").click()
    toggle = rows(page, "served").get_by_role("button", name="request_id", exact=True)
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    expect(rows(page, "served").locator(".c")).to_have_text(["200", "alice"])
    assert "columns=status%2Cuser" in page.url


def test_next_and_previous_error(handler: wslogging.WebSocketHandler, page: Page) -> None:
    """Buttons and keys (n, p) go from error to error through the page, and say when there
    is none further."""
    open_viewer(page, handler)
    for n in range(60):
        if n in (10, 30, 50):
            log.error("error %d", n)
        else:
            log.info("fine %d", n)
    expect(rows(page, "fine 59")).to_have_count(1)
    rows(page).first.focus()
    page.keyboard.press("n")
    expect(rows(page, "error 10")).to_be_focused()
    page.click("#next-error")
    expect(rows(page, "error 30")).to_be_focused()
    page.keyboard.press("n")
    expect(rows(page, "error 50")).to_be_in_viewport()
    expect(rows(page, "error 50")).to_be_focused()
    page.keyboard.press("n")
    expect(page.locator("#notice")).to_have_text("No later error in the page")
    page.keyboard.press("p")
    expect(rows(page, "error 30")).to_be_focused()
    page.click("#prev-error")
    expect(rows(page, "error 10")).to_be_focused()
    page.focus("#f-grep")
    page.keyboard.press("n")  # typing in a field is typing
    assert "n" == page.input_value("#f-grep")


def test_the_chart_counts_by_level_and_a_click_scrolls_there(
    handler: wslogging.WebSocketHandler, new_page: Callable[..., Page]
) -> None:
    """The chart draws the records of each second in their level's colour; a click on a bar
    brings that second's first record into view; one older than the page says so."""
    page = new_page(viewport={"width": 900, "height": 500})
    open_viewer(page, handler)
    first = time.time()
    log.error("early error")
    wait_until(lambda: int(time.time()) > int(first))
    log.info("early info")
    wait_until(lambda: time.time() > int(first) + 3)
    for n in range(200):
        log.info("late %d", n)
    expect(rows(page, "late 199")).to_be_in_viewport()
    wait_until(lambda: chart_shows(page, "--error") and chart_shows(page, "--info"))
    canvas = page.locator("#chart")
    box = canvas.bounding_box()
    assert box is not None
    right = int(canvas.get_attribute("data-right") or 0)
    bar = box["width"] / 300
    canvas.click(position={"x": (int(first) - (right - 299) + 0.5) * bar, "y": box["height"] / 2})
    focused = page.locator("#log .row:focus")
    expect(focused).to_have_text(re.compile("early (error|info)$"))
    expect(focused).to_be_in_viewport()
    expect(page.locator("#follow")).to_be_visible()
    canvas.click(position={"x": 2, "y": box["height"] / 2})  # five minutes ago
    expect(page.locator("#notice")).to_contain_text("are no longer in the page")


def test_copy_a_record_and_open_a_link_to_it(
    handler: wslogging.WebSocketHandler, new_page: Callable[..., Page]
) -> None:
    """Copy JSON puts the record on the clipboard; Copy link gives a URL (with the view,
    without the key) that opens, after the key, at that record among its neighbours."""
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    open_viewer(page, handler)
    page.select_option("#f-level", "INFO")
    expect(last_note(page)).to_contain_text("level ≥ INFO")
    for n in range(300):
        log.info("record %d", n, extra={"n": n})
    row = rows(page, "record 150")
    expect(row).to_have_count(1)
    record_id = row.get_attribute("data-id")
    row.click()
    row.get_by_role("button", name="Copy JSON").click()
    expect(page.locator("#notice")).to_have_text(f"Copied record {record_id} as JSON")
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    assert ("record 150", {"n": 150}, record_id) == (copied["log"], copied["fields"], copied["id"])
    row.get_by_role("button", name="Copy link").click()
    expect(page.locator("#notice")).to_have_text(f"Copied a link to record {record_id}")
    link = page.evaluate("navigator.clipboard.readText()")
    assert link.endswith(f"/?level=INFO&around={record_id}")
    assert KEY not in link

    other = new_page(viewport={"width": 800, "height": 400})
    open_viewer(other, handler, view=link.removeprefix(f"{handler.url}/"))
    target = rows(other, "record 150")
    expect(target).to_have_attribute("data-target", "true")
    expect(target).to_be_focused()
    expect(target).to_be_in_viewport()
    expect(rows(other, "record 100")).to_have_count(1)  # its neighbours, before and after
    expect(rows(other, "record 299")).to_have_count(1)
    assert other.url == link
    log.info("after the link")
    expect(rows(other, "after the link")).to_have_count(1)
    expect(target).to_be_in_viewport()  # the view stays at the record
    expect(other.locator("#follow")).to_have_text("1 new record — jump to latest")


def test_a_link_to_a_record_no_longer_kept_says_so(configure: Configure, page: Page) -> None:
    """A record link whose record has left the server's history opens with a clear notice,
    and the records the server still has."""
    handler = configure(history=50)
    hub = handler._server.hub  # type: ignore[union-attr]
    log.info("the linked one")
    for n in range(200):
        log.info("later %d", n)
    wait_until(lambda: 201 == hub.stats()["records_accepted"])
    linked = hub.history.first_id
    open_viewer(page, handler, view=f"?around={linked}")
    expect(page.locator("#log .warn")).to_have_text(
        f"— Record {linked} is no longer in the server's history: "
        "showing the oldest records it still has —"
    )
    expect(page.locator("#notice")).to_contain_text(f"Record {linked} is no longer")
    expect(rows(page, "later 199")).to_have_count(1)
    assert 0 == rows(page, "the linked one").count()


def test_5000_records_a_second_with_the_chart_keep_the_page_bounded(
    configure: Configure, page: Page
) -> None:
    """At 5,000 records a second for 10 s, with the chart drawing, the longest gap between
    frames and the JS heap stay bounded."""
    rate, seconds = 5000, 10
    handler = configure(queue_size=rate * seconds, client_queue_size=rate * seconds)
    open_viewer(page, handler)
    page.evaluate(
        """() => {
            window.longestFrameGap = 0;
            let last = performance.now();
            const tick = (now) => {
                window.longestFrameGap = Math.max(window.longestFrameGap, now - last);
                last = now;
                requestAnimationFrame(tick);
            };
            requestAnimationFrame(tick);
        }"""
    )
    started = time.monotonic()
    levels = (logging.DEBUG, logging.INFO, logging.INFO, logging.WARNING, logging.ERROR)
    for n in range(rate * seconds):
        log.log(levels[n % 5], "busy %d", n, extra={"request_id": n})
        if n % 100 == 99:  # paced: 100 records every 20 ms
            pause = started + (n + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    logged = time.monotonic() - started
    count = rate * seconds
    expect(page.locator("#n-received")).to_have_text(f"{count:,}", timeout=6 * TIMEOUT * 1000)
    assert chart_shows(page, "--warning")
    gap = page.evaluate("window.longestFrameGap")
    heap = page.evaluate("window.gc(); performance.memory.usedJSHeapSize") / 1e6
    print(
        f"\n{rate}/s for {seconds} s (logged in {logged:.1f} s): "
        f"longest frame gap {gap:.0f} ms, JS heap {heap:.1f} MB"
    )
    assert MAX_ROWS == page.locator("#log > *").count()
    assert gap < 1000
    assert heap < 50


def test_hostile_escapes_cost_linear_time_and_bounded_spans(
    handler: wslogging.WebSocketHandler, page: Page
) -> None:
    """Unterminated string sequences by the hundred thousand are read once, not once each;
    thousands of colour changes make at most 256 styled spans, the rest plain text; a
    logger's name has its control characters shown escaped too."""
    open_viewer(page, handler)
    started = time.monotonic()
    log.info("open %s", "\x1b]x" * 100_000)  # each introducer dropped, each x shown
    log.info("many %s", "\x1b[31ma\x1b[32mb" * 5000)
    expect(rows(page, "many ")).to_have_count(1)
    # Read once: well under a second; read again for each introducer: half a minute.
    assert time.monotonic() - started < TIMEOUT / 2
    assert "open " + "x" * 100_000 == rows(page, "open ").locator(".m").text_content()
    many = rows(page, "many ").locator(".m")
    assert "many " + "ab" * 5000 == many.text_content()
    assert 256 == many.locator(".sgr").count()
    logging.getLogger("app.\u202eevil").info("named")  # a logger name is no safer
    expect(rows(page, "named").locator(".lg")).to_have_text("app.\\u202eevil")


def entries(page: Page) -> list[str]:
    """The page's entries: each record's message, each marker's text; notes left out."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('#log > :not(.note)')].map((el) =>
                el.classList.contains('row') ? el.querySelector('.m').textContent
                    : el.textContent)"""
        )
    )


@pytest.mark.skipif(
    not hasattr(_history, "LossMark"), reason="this server keeps no gaps in its history"
)
def test_an_overflow_gap_is_shown_live_and_from_history_once(
    configure: Configure, page: Page
) -> None:
    """A gap that stands in the stream (``overflow``, with its levels) is shown where it
    happened, live and from history, and a reconnection does not show it again."""
    handler = configure(queue_size=10)
    open_viewer(page, handler)
    loop = handler._server._loop  # type: ignore[union-attr]
    assert loop is not None
    release, frozen = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (frozen.set(), release.wait(TIMEOUT)))
    assert frozen.wait(TIMEOUT)
    try:
        for n in range(20):  # 8 fit (INFO is shed past 80%), 12 do not
            log.info("r%d", n)
    finally:
        release.set()
    gap = "— gap: 12 records missed (the app logged faster than the server took records: 12 INFO) —"
    expected = [*(f"r{n}" for n in range(8)), gap, "after"]
    expect(page.locator("#log .gap")).to_have_text(gap)
    wait_until(lambda: chart_shows(page, "--gap"))

    # Cut off right after the gap: back, the page resumes after the gap's own id, and is not
    # told it again.
    handler.set_api_keys(["another-key"])
    expect(page.locator("#login-view")).to_be_visible()
    handler.set_api_keys([KEY])
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    log.info("after")
    expect(rows(page, "after")).to_have_count(1)
    assert expected == entries(page)
    page.reload()
    expect(rows(page, "after")).to_have_count(1)
    assert expected == entries(page)  # from history: the gap in its place
