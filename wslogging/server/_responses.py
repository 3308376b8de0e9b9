"""The server's small answers: JSON errors and bodies, query parameters, and how one queued
item becomes the JSON of a WebSocket message or the bytes of an SSE event."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .. import _wire
from .._filters import FilterError
from .._history import Gap, Held, LossMark


def error(status: int, error: str, detail: str, **headers: str) -> web.Response:
    body = json.dumps({"error": error, "detail": detail})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def unauthorized(detail: str) -> web.Response:
    return error(401, "unauthorized", detail, **{"WWW-Authenticate": "Bearer"})


def bad_request(detail: str) -> web.Response:
    return error(400, "bad_request", detail)


def json_response(data: Any) -> web.Response:
    return web.Response(body=_wire.dumps(data), content_type="application/json")


def positive(request: web.Request, name: str, maximum: float, kind: type = float) -> float | None:
    """An optional positive number query parameter (``kind``: int or float), at most
    ``maximum``."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        value: float = kind(text)
    except (ValueError, OverflowError):
        raise FilterError(f"{name} must be a positive {kind.__name__}") from None
    if not 0 < value <= maximum:
        raise FilterError(f"{name} must be more than 0 and at most {maximum:g}")
    return value


def since_text(request: web.Request, header: bool) -> str | None:
    """``Last-Event-ID`` (when ``header``) wins over ``?since=``: a reconnecting EventSource
    sends the header while its URL still carries the original ``since``."""
    text = request.headers.get("Last-Event-ID") if header else None
    if not text:
        text = request.query.get("since")
    return text or None


def message_json(item: LossMark | Gap | dict[str, Any]) -> bytes:
    """The JSON of a gap or a protocol message."""
    if isinstance(item, LossMark):
        return item.data
    if isinstance(item, Gap):
        return _wire.dumps(_wire.gap_message(item.missed, item.reason))
    return _wire.dumps(item)


def sse_bytes(item: Held | Gap | dict[str, Any]) -> bytes:
    """The SSE event for one queued item (records carry ``id:``; gaps are ``event: gap``, with
    the ``id:`` of the loss mark when the gap stands in the stream)."""
    if isinstance(item, _wire.LogEntry):
        return _wire.sse_event(item.data, event_id=item.wire_id)
    if isinstance(item, LossMark):
        return _wire.sse_event(item.data, event_id=item.wire_id, event="gap")
    kind = "gap" if isinstance(item, Gap) else str(item.get("type", "message"))
    return _wire.sse_event(message_json(item), event=kind)
