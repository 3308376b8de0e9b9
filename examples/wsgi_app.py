"""The smallest WSGI app, whose logging is configured by the server it runs under (gunicorn's
``logconfig_dict`` in ``gunicorn.conf.py``)::

    gunicorn -w 4 -b 127.0.0.1:8000 -c examples/gunicorn.conf.py --chdir examples wsgi_app:app
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("shop")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Log each request with the path as a field, and answer it."""
    log.info("order looked up", extra={"path": environ.get("PATH_INFO", "/")})
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok\n"]
