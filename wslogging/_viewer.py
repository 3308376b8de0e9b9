"""The web viewer's page (SPEC §8), built from ``static/`` with its Content-Security-Policy.

Pure: no asyncio, no aiohttp. The stylesheet and the script are inlined into the one page, and
the policy allows exactly them by their SHA-256 hashes, so that nothing else (an injected
``<script>``, a CDN) can run, and the page stays one request that works offline.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_STYLE = "@STYLE@"
_SCRIPT = "@SCRIPT@"
# A Host header fit to be named in the policy: a name or an address, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")


def _sha256(text: str) -> str:
    """A CSP hash source for an inline element whose text is ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@dataclass(frozen=True)
class ViewerPage:
    """The page's bytes and the hashes of its inline style and script."""

    html: bytes
    style_hash: str
    script_hash: str

    def headers(self, host: str | None) -> dict[str, str]:
        """The response headers: a strict policy, no sniffing, no referrer, no framing.

        ``host`` (the request's ``Host``) names the WebSocket origins the page may connect
        to, since not every browser lets ``'self'`` cover ``ws:``/``wss:``; a value that is
        not a plain host and port is left out (``'self'`` alone then).
        """
        connect = "'self'"
        if host and _HOST.match(host):
            connect += f" ws://{host} wss://{host}"
        policy = "; ".join(
            (
                "default-src 'none'",
                f"script-src {self.script_hash}",
                f"style-src {self.style_hash}",
                f"connect-src {connect}",
                "img-src data:",  # the empty favicon, so the browser asks for none
                "base-uri 'none'",
                "form-action 'none'",  # the forms are handled by the script, never sent
                "frame-ancestors 'none'",
            )
        )
        return {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
        }


def build_page(template: str, style: str, script: str) -> ViewerPage:
    """Inline ``style`` and ``script`` into ``template`` (at its ``@STYLE@`` and
    ``@SCRIPT@``). Raises ``ValueError`` if either could end its element early."""
    if "</style" in style.lower() or "</script" in script.lower():
        raise ValueError("the viewer's style or script contains its own end tag")
    if template.count(_STYLE) != 1 or template.count(_SCRIPT) != 1:
        raise ValueError(f"the viewer's page must hold {_STYLE} and {_SCRIPT} once each")
    html = template.replace(_STYLE, style).replace(_SCRIPT, script)
    return ViewerPage(html.encode(), _sha256(style), _sha256(script))


@functools.cache
def viewer_page() -> ViewerPage:
    """The page built from the package's ``static/`` files (read once)."""
    static = resources.files("wslogging") / "static"
    return build_page(
        (static / "viewer.html").read_text(encoding="utf-8"),
        (static / "viewer.css").read_text(encoding="utf-8"),
        (static / "viewer.js").read_text(encoding="utf-8"),
    )
