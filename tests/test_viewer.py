"""The web viewer's page and headers; the page in a real browser is in test_viewer_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import aiohttp
import pytest

import wslogging
from wslogging._viewer import build_page, viewer_page

TEMPLATE = "<style>@STYLE@</style><script>@SCRIPT@</script>"


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_build_page_inlines_and_hashes() -> None:
    """The style and script are inlined, and the policy names their exact hashes."""
    page = build_page(TEMPLATE, "b{}", "go()")
    assert b"<style>b{}</style><script>go()</script>" == page.html
    assert (_hash("b{}"), _hash("go()")) == (page.style_hash, page.script_hash)


@pytest.mark.parametrize(("style", "script"), [("a{}", "x = '</SCRIPT>'"), ("a{}</style>", "go()")])
def test_build_page_refuses_an_early_end_tag(style: str, script: str) -> None:
    """A style or script holding its own end tag would end its element early: refused."""
    with pytest.raises(ValueError, match="end tag"):
        build_page(TEMPLATE, style, script)


def test_build_page_needs_both_places() -> None:
    """A template without its two places is refused, not served half-built."""
    with pytest.raises(ValueError, match="once each"):
        build_page("<script>@SCRIPT@</script>", "a{}", "go()")


def test_headers_are_strict() -> None:
    """Only the page's own style and script run; it connects to its own origin only."""
    page = build_page(TEMPLATE, "b{}", "go()")
    headers = page.headers("127.0.0.1:3000")
    policy = dict(part.split(" ", 1) for part in headers["Content-Security-Policy"].split("; "))
    assert {
        "default-src": "'none'",
        "script-src": _hash("go()"),
        "style-src": _hash("b{}"),
        "connect-src": "'self' ws://127.0.0.1:3000 wss://127.0.0.1:3000",
        "img-src": "data:",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    } == policy
    assert ("nosniff", "no-referrer", "DENY") == (
        headers["X-Content-Type-Options"],
        headers["Referrer-Policy"],
        headers["X-Frame-Options"],
    )


@pytest.mark.parametrize("host", ["[::1]:8080", "logs.example.com", "localhost"])
def test_headers_name_the_websocket_origin(host: str) -> None:
    """A plain host (name or address, with or without a port) is named for ws: and wss:."""
    policy = build_page(TEMPLATE, "", "").headers(host)["Content-Security-Policy"]
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy


@pytest.mark.parametrize("host", [None, "", "a b", "x; script-src *", "h'", "a:b:c"])
def test_headers_leave_out_an_odd_host(host: str | None) -> None:
    """A Host that is not a plain host and port never reaches the policy."""
    policy = build_page(TEMPLATE, "", "").headers(host)["Content-Security-Policy"]
    assert "connect-src 'self';" in policy


def test_the_package_holds_the_viewer() -> None:
    """The page is built from the package's own static files (shipped in the wheel)."""
    static = resources.files("wslogging") / "static"
    for name in ("viewer.html", "viewer.css", "viewer.js"):
        assert (static / name).is_file(), name
    script = (static / "viewer.js").read_text(encoding="utf-8")
    assert script.encode() in viewer_page().html


async def test_index_serves_the_viewer_without_a_key(
    handler: wslogging.WebSocketHandler, session: aiohttp.ClientSession
) -> None:
    """GET / needs no key and serves the page with its headers; the policy's hashes are
    those of the inline style and script actually served."""
    async with session.get(f"{handler.url}/") as response:
        assert 200 == response.status
        assert "text/html; charset=utf-8" == response.headers["Content-Type"]
        text = await response.text()
        headers = response.headers
    (style,) = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
    (script,) = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
    policy = headers["Content-Security-Policy"]
    assert f"script-src {_hash(script)};" in policy
    assert f"style-src {_hash(style)};" in policy
    assert f"ws://127.0.0.1:{handler.port} wss://127.0.0.1:{handler.port}" in policy
    assert ("nosniff", "no-referrer", "DENY") == (
        headers["X-Content-Type-Options"],
        headers["Referrer-Policy"],
        headers["X-Frame-Options"],
    )
    assert 'id="login"' in text


def test_the_script_never_turns_text_into_html() -> None:
    """Log text reaches the page through text nodes only: the script uses none of the ways
    that parse a string as HTML or run it as code."""
    script = (resources.files("wslogging") / "static" / "viewer.js").read_text(encoding="utf-8")
    ways = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")
    assert [] == [way for way in ways if way in script]


def test_the_key_form_says_where_a_made_up_key_is() -> None:
    """The key form points at the line the handler prints with a made-up key, and at
    ``wslogging tail``, which finds that key by itself on the app's machine."""
    html = viewer_page().html.decode()
    (hint,) = re.findall(r'<p id="login-hint">(.*?)</p>', html, re.DOTALL)
    assert "<code>wslogging: streaming logs at … with API key …</code>" in hint
    assert "<code>wslogging tail</code> finds it by itself" in hint
