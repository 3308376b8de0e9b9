"""The embedded aiohttp server: :class:`LogServer` serves one hub over HTTP, SSE and WebSocket
from a daemon thread of its own.

Its parts are private modules, one concern each:

- ``_app``: :class:`LogServer`, its lifecycle and the consumer of the app's records;
- ``_core``: the state the parts share, and the checks several routes make;
- ``_accepting``: accepting connections, their bound and their deadlines;
- ``_guard``: the middleware in front of every route, keys, tickets, and the 429 throttling;
- ``_api``: the JSON API and the pages; ``_sse``: Server-Sent Events; ``_websocket``: the
  WebSocket session and its writer; ``_forwarders``: ``/ws/ingest``;
- ``_responses``: errors, query parameters, and the bytes of a message or an event;
- ``_sockets``: what lies below the routes (tracked connections, writes in slices, the loop);
- ``_options`` and ``_source``: what a server is given, and records from elsewhere (Redis).

Its thread and loop are a :class:`~wslogging._loop_thread.LoopThread`, as the forwarder's and
the Redis appender's are.
"""

from .._loop_thread import holds_logging_lock, new_event_loop
from ._accepting import ACCEPT_BURST, ACCEPT_PAUSE, SWEEP_INTERVAL
from ._api import PAGE_DEFAULT, PAGE_MAX
from ._app import MAX_BATCH, MAX_REST, MIN_BATCH, LogServer
from ._core import KEY_ID
from ._forwarders import FORWARDER_STATS, MAX_FORWARDERS, RESTARTING
from ._guard import PUBLIC_PATHS
from ._options import ForwarderStats, ServerOptions, ServerState, base_url, bind_socket
from ._sockets import KEEPALIVE_IDLE, STALL_HEARTBEATS, WRITE_SLICE, release_descriptors
from ._source import SOURCE_WAIT, CountedIds, IdScheme, RecordSource
from ._sse import SSE_RETRY_MS
from ._websocket import MAX_CLIENT_ID, REVOKED

__all__ = [
    "ACCEPT_BURST",
    "ACCEPT_PAUSE",
    "FORWARDER_STATS",
    "KEEPALIVE_IDLE",
    "KEY_ID",
    "MAX_BATCH",
    "MAX_CLIENT_ID",
    "MAX_FORWARDERS",
    "MAX_REST",
    "MIN_BATCH",
    "PAGE_DEFAULT",
    "PAGE_MAX",
    "PUBLIC_PATHS",
    "RESTARTING",
    "REVOKED",
    "SOURCE_WAIT",
    "SSE_RETRY_MS",
    "STALL_HEARTBEATS",
    "SWEEP_INTERVAL",
    "WRITE_SLICE",
    "CountedIds",
    "ForwarderStats",
    "IdScheme",
    "LogServer",
    "RecordSource",
    "ServerOptions",
    "ServerState",
    "base_url",
    "bind_socket",
    "holds_logging_lock",
    "new_event_loop",
    "release_descriptors",
]
