"""structlog streamed live by wslogging, two ways.

``python examples/structlog_app.py`` (the default, ``stdlib``): structlog hands its events to
the standard library with ``ProcessorFormatter.wrap_for_formatter``, as structlog's
documentation sets it up; logging is configured with dictConfig. The console handler renders
with ``ConsoleRenderer``; the WebSocketHandler has no formatter: ``log`` is the event, the
key/value pairs arrive in ``fields`` and a traceback in ``exc``, each once.

``python examples/structlog_app.py direct``: structlog without the standard library (it prints
its own lines); ``wslogging.StructlogProcessor(handler)`` in the processor chain streams every
event through a WebSocketHandler made directly.

The port is ``$WSLOGGING_PORT`` (default 3000; 0 picks a free one). The key is
``$WSLOGGING_API_KEY``; without it, the handler makes one up and prints it to stderr.
"""

from __future__ import annotations

import logging
import logging.config
import os
import random
import sys
import time

import structlog

import wslogging

PORT = int(os.environ.get("WSLOGGING_PORT", "3000"))
PRICES: dict[str, float] = {}


def configure_stdlib() -> wslogging.WebSocketHandler:
    """structlog → logging → a console handler that renders with ConsoleRenderer, and a
    WebSocketHandler with no formatter (a rendered line would repeat the time, level, logger,
    pairs and traceback that the record carries in its own keys)."""
    timestamper = structlog.processors.TimeStamper(fmt="iso")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structlog": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=False),
                    ],
                    # Records from plain logging calls get the same treatment.
                    "foreign_pre_chain": [structlog.stdlib.add_log_level, timestamper],
                },
            },
            "handlers": {
                "console": {"class": "logging.StreamHandler", "formatter": "structlog"},
                "live": {"class": "wslogging.WebSocketHandler", "port": PORT},
            },
            "root": {"level": "DEBUG", "handlers": ["console", "live"]},
        }
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return next(
        h for h in logging.getLogger().handlers if isinstance(h, wslogging.WebSocketHandler)
    )


def configure_direct() -> wslogging.WebSocketHandler:
    """structlog alone (no stdlib), with StructlogProcessor streaming each event."""
    handler = wslogging.WebSocketHandler(port=PORT)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            # Before the renderer, which turns the event dict into a string.
            wslogging.StructlogProcessor(handler),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    return handler


def main(mode: str) -> None:
    if mode not in ("stdlib", "direct"):
        sys.exit(f"usage: {sys.argv[0]} [stdlib|direct]")
    handler = configure_stdlib() if mode == "stdlib" else configure_direct()
    key = os.environ.get("WSLOGGING_API_KEY", "").split(",")[0].strip() or "KEY-FROM-ABOVE"
    print(
        f"structlog ({mode}) streaming; watch it with:\n"
        f'  curl -N -H "Authorization: Bearer {key}" {handler.url}/api/get-logs-stream',
        flush=True,
    )
    log = structlog.get_logger("shop.orders")
    if mode == "direct":
        log = log.bind(logger="shop.orders")  # no stdlib logger here to take the name from
    order = 0
    try:
        while True:
            order += 1
            structlog.contextvars.bind_contextvars(request_id=f"req-{order:04d}")
            user = random.choice(["alice", "bob", "carol"])
            log.debug("cart loaded", user=user, items=random.randint(1, 5))
            if order % 7 == 0:
                try:
                    PRICES[user]  # no price for anyone: an error on purpose, to show a traceback
                except KeyError:
                    log.exception("pricing failed", order=order, user=user)
            else:
                log.info(
                    "order placed", order=order, user=user, total=round(random.uniform(5, 90), 2)
                )
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "stdlib")
