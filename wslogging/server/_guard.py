"""Who may ask what: the middleware in front of every route (Host check, keys, tickets), and
the throttling of failed authentications (429)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .._auth import (
    KeyId,
    bearer_token,
    budget_of,
    is_loopback_host,
)
from .._ingest import INGEST_PATH
from ._core import KEY_ID, ServerCore
from ._responses import error, unauthorized

# Routes anyone may reach; every other one needs a key.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json"})


class Guarded(ServerCore):
    """The guard, for the routes that authenticate requests themselves too."""

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The header itself: aiohttp's request.host may fall back to a blocking DNS lookup.
        host = request.headers.get("Host")
        if self._loopback and host is not None and not is_loopback_host(host):
            # DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own Host.
            return error(403, "forbidden", "Host must be a loopback name")
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        # These answer a bad key (or ingest proof) themselves (see _ws and _ingest).
        if request.path not in ("/ws/logs", INGEST_PATH):
            problem = self._authenticate(request)
            if problem is not None:
                return await self._throttled(request) or unauthorized(problem)
        return await handler(request)

    def _authenticate(self, request: web.Request) -> str | None:
        """Why the request is not authorized, or ``None`` if it is: the key it came with is
        then noted on it (:data:`KEY_ID`) and its connection is authenticated. The reasons
        name the problem, never the credential. The key is checked before anything is
        counted or waited for: a right key is never held back by anyone's wrong ones."""
        key_id, problem = self._credential(request)
        if key_id is None:
            return problem
        request[KEY_ID] = key_id
        self._authenticated(request)
        return None

    async def _throttled(self, request: web.Request) -> web.Response | None:
        """Count a failed authentication against the request's budget (see
        :class:`FailureThrottle`). Within the budget, ``None``: the caller refuses it at once
        (401, or 4401 after a WebSocket upgrade). Past it, a 429 with ``Retry-After`` (a
        WebSocket before the upgrade), given after the throttle's delay and one at a time
        per budget, so that guessing slows down.

        Bounded: a request waiting here holds its connection, which counts against the
        connection bound and is closed at its deadline like any other unauthenticated one;
        the waiting budgets are forgotten as soon as nothing waits for them.
        """
        budget = budget_of(request.remote or "")
        delay = self._throttle.failed(budget, time.monotonic())
        if not delay:
            return None
        lock, waiting = self._delayed.get(budget) or (asyncio.Lock(), 0)
        self._delayed[budget] = (lock, waiting + 1)
        try:
            async with lock:
                await asyncio.sleep(delay)
        finally:
            lock, waiting = self._delayed[budget]
            if waiting > 1:
                self._delayed[budget] = (lock, waiting - 1)
            else:
                del self._delayed[budget]
        retry = self._throttle.retry_after(budget, time.monotonic())
        return error(
            429,
            "too_many_requests",
            "too many failed authentications from this address",
            **{"Retry-After": str(max(1, math.ceil(retry)))},
        )

    def _credential(self, request: web.Request) -> tuple[KeyId | None, str]:
        """The key the request came with, or ``None`` and why not."""
        keys = self._keys  # one ring for the whole check, though another thread may swap it
        token = bearer_token(request.headers.get("Authorization"))
        if token is None and self.options.allow_query_token:
            token = request.query.get("access_token") or None
        if token is not None:
            return keys.match(token), "invalid API key"
        ticket = request.query.get("ticket")
        if ticket and request.method == "GET":
            key_id = self._tickets.redeem(ticket, time.monotonic())
            # A ticket issued for a key removed since is as dead as the key.
            return (key_id if key_id in keys else None), "invalid or expired ticket"
        return None, "missing API key"
