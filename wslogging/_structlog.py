"""A structlog processor that streams events to a WebSocketHandler, for non-stdlib setups."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from ._wire import resolve_exc_info
from .handler import WebSocketHandler

_METHOD_LEVELS = {"exception": logging.ERROR, "warn": logging.WARNING, "msg": logging.INFO}


class StructlogProcessor:
    """Put ``StructlogProcessor(handler)`` in a structlog processor chain (before the
    renderer) to stream every event through ``handler``, key/values in ``fields``.

    For configurations that do not go through the stdlib; those that do (``LoggerFactory`` /
    ``render_to_log_kwargs`` / ``ProcessorFormatter``) need nothing extra. The event dict passes
    through unchanged. The level comes from the method called (``log.warning`` is WARNING,
    ``log.exception`` ERROR); the logger name from the ``logger`` key (``add_logger_name``),
    else ``"structlog"``; ``exc_info`` becomes ``exc``. The handler's level and filters apply.
    Never raises.
    """

    def __init__(self, handler: WebSocketHandler) -> None:
        self.handler = handler

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        try:
            levelno = _METHOD_LEVELS.get(method_name) or logging.getLevelNamesMapping().get(
                method_name.upper(), logging.INFO
            )
            if levelno >= self.handler.level:
                pairs = {k: v for k, v in event_dict.items() if k != "exc_info"}
                pairs.setdefault("event", "")
                record = logging.LogRecord(
                    name=str(event_dict.get("logger") or "structlog"),
                    level=levelno,
                    pathname="",
                    lineno=0,
                    msg=pairs,
                    args=None,
                    exc_info=resolve_exc_info(event_dict.get("exc_info")),
                )
                self.handler.handle(record)
        except Exception:  # a processor must never break the app's logging call
            self.handler.handleError(logging.makeLogRecord({"msg": "structlog event"}))
        return event_dict
