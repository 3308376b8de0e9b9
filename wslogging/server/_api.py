"""The JSON API and the pages: ``/``, ``/healthz``, ``/openapi.json``, ``/api/stats``,
``/api/logs`` and ``/api/ticket``."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from .._filters import FilterError, filter_from_query
from .._history import Gap, LossMark, SinceError
from .._openapi import openapi_document
from .._viewer import viewer_page
from ._core import KEY_ID
from ._guard import Guarded
from ._responses import bad_request, json_response, message_json, positive

# Default and largest page of ``GET /api/logs``.
PAGE_DEFAULT = 1000


PAGE_MAX = 10000


class JsonApi(Guarded):
    """The request-and-answer routes."""

    async def _index(self, request: web.Request) -> web.Response:
        page = viewer_page()  # read from the package once, then cached
        return web.Response(
            body=page.html,
            content_type="text/html",
            charset="utf-8",
            headers=page.headers(request.headers.get("Host")),
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _openapi(self, request: web.Request) -> web.Response:
        # The origin the client used: what a GPT action or a script should call back.
        host = request.headers.get("Host") or f"{self.options.host}:{self.port}"
        return json_response(openapi_document(f"{request.scheme}://{host}"))

    async def _stats(self, request: web.Request) -> web.Response:
        stats: dict[str, Any] = self.hub.stats()
        forwarders = [f.to_json() for f in self._forwarders.values()]
        stats["records_dropped"] = (
            self._dropped() + self.ingest_dropped + sum(f["records_dropped"] for f in forwarders)
        )
        stats["pid"] = os.getpid()
        stats["forwarders"] = forwarders
        stats["queue_size"] = self._handoff.qsize() if self._handoff else 0
        stats["epoch"] = self.hub.epoch
        stats.update(self._source.stats() if self._source else {"backend": self._backend})
        stats.update(self._table.stats())  # connections_open, _limit, _refused, _timed_out
        return json_response(stats)

    async def _ticket(self, request: web.Request) -> web.Response:
        ticket = self._tickets.issue(time.monotonic(), request[KEY_ID])
        return json_response({"ticket": ticket, "expires_in": int(self._tickets.lifetime)})

    async def _logs(self, request: web.Request) -> web.Response:
        if unready := await self._not_ready(request, header_since=False):
            return unready
        try:
            flt = filter_from_query(request.query.items())
            since = self._since(request, header=False)
            limit = int(positive(request, "limit", PAGE_MAX, int) or PAGE_DEFAULT)
        except (FilterError, SinceError) as exc:
            return bad_request(str(exc))
        history = self.hub.history
        gap: Gap | None = None
        if since is None:
            records, last = history.latest(flt, limit), history.last_id
        else:
            start, gap = history.resume(since, flt)
            records, last = history.page(start, history.last_id, flt, limit)
        # The records' JSON is spliced in as encoded once for everyone, not built again. Loss
        # marks in the page go to "gaps", each with its id: where in the page it stands.
        body = b"".join(
            (
                b'{"records":[',
                b",".join(e.data for e in records if type(e) is not LossMark),
                b'],"last_id":"',
                self._ids.wire_id(last).encode(),
                b'","gap":',
                b"null" if gap is None else message_json(gap),
                b',"gaps":[',
                b",".join(e.data for e in records if type(e) is LossMark),
                b"]}",
            )
        )
        return web.Response(body=body, content_type="application/json")
