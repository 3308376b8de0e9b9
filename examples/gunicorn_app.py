"""A WSGI app served by gunicorn with several workers, each streaming its records to one port.

Every worker configures logging with dictConfig when it imports this module. The first to
bind the log port serves it; the others forward their records to it over loopback. Kill the
serving worker and another takes the port over within moments::

    export WSLOGGING_API_KEY=change-me   # one key for every worker (see docs/configuration.rst)
    gunicorn -w 4 -b 127.0.0.1:8000 --chdir examples gunicorn_app:app
    curl http://127.0.0.1:8000/orders/42
    wslogging tail http://127.0.0.1:3000               # every worker's records
    wslogging tail http://127.0.0.1:3000 --pid 12345   # one worker's

The log stream's port is ``$WSLOGGING_PORT`` (default 3000). ``pip install gunicorn`` first.
With ``--preload`` (or gunicorn's ``logconfig_dict`` instead of the dictConfig call below),
gunicorn's master process configures logging and serves, and the workers forked from it
forward to it.
"""

from __future__ import annotations

import logging
import logging.config
import os
from collections.abc import Callable, Iterable
from typing import Any

PORT = int(os.environ.get("WSLOGGING_PORT", "3000"))

logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "live": {
                "class": "wslogging.WebSocketHandler",
                "port": PORT,
                "formatter": "plain",
                # Keys from $WSLOGGING_API_KEY: set it, so that every worker (and any that
                # takes the port over) accepts the same key.
            },
        },
        "loggers": {"shop": {"level": "INFO", "handlers": ["live"]}},
    }
)
log = logging.getLogger("shop")
log.info("worker %d ready", os.getpid())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request, logging it with the worker's pid (also in every record's ``pid``)."""
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/orders/"):
        log.info("order looked up", extra={"order": path.rsplit("/", 1)[-1]})
    else:
        log.warning("no such page", extra={"path": path})
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [f"served by worker {os.getpid()}\n".encode()]
