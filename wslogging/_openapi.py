"""Pure: the OpenAPI 3.1 description of the HTTP endpoints, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from ._filters import MAX_TERMS, MAX_TEXT
from ._version import __version__

_LEVEL_NAMES = ["CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET"]
# What the server takes as a record id: digits (empty is no id at all).
_ID_PATTERN = "^[0-9]{0,30}$"

# A repeatable filter parameter.
_TERMS = {
    "type": "array",
    "items": {"type": "string", "maxLength": MAX_TEXT},
    "maxItems": MAX_TERMS,
}

_FILTER_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "level",
        "in": "query",
        "description": "Minimum level: a name (DEBUG, INFO, WARNING, ERROR, CRITICAL; any "
        "case) or a number.",
        "schema": {
            "anyOf": [
                {"type": "string", "enum": _LEVEL_NAMES + [n.lower() for n in _LEVEL_NAMES]},
                {"type": "string", "pattern": "^[0-9]{1,9}$"},
            ]
        },
    },
    {
        "name": "logger",
        "in": "query",
        "description": "Logger name prefix, hierarchical: `app` matches `app` and `app.db`. "
        "Repeatable; any one matching is enough.",
        "schema": _TERMS,
        "style": "form",
        "explode": True,
    },
    {
        "name": "category",
        "in": "query",
        "description": "Exact category. Repeatable; any one matching is enough.",
        "schema": _TERMS,
        "style": "form",
        "explode": True,
    },
    {
        "name": "grep",
        "in": "query",
        "description": "Substring that the formatted message must contain (case-sensitive).",
        "schema": {"type": "string", "maxLength": MAX_TEXT},
    },
    {
        "name": "pid",
        "in": "query",
        "description": "Process id of the records wanted (worker processes sharing one "
        "port). Repeatable; any one matching is enough.",
        "schema": {
            "type": "array",
            "items": {"type": "string", "pattern": "^0*[1-9][0-9]{0,8}$"},
            "maxItems": MAX_TERMS,
        },
        "style": "form",
        "explode": True,
    },
    {
        "name": "since",
        "in": "query",
        "description": "A record id: return only records after it. `0` means everything "
        "still held.",
        "schema": {"type": "string", "pattern": _ID_PATTERN},
    },
]

_RECORD: dict[str, Any] = {
    "type": "object",
    "description": "One log record.",
    "required": ["type", "id", "log", "level", "levelno", "logger", "category", "time"],
    "properties": {
        "type": {"type": "string", "const": "log"},
        "id": {"type": "string", "description": "Opaque, increasing; pass back as `since`."},
        "log": {"type": "string", "description": "The formatted message."},
        "level": {"type": "string"},
        "levelno": {"type": "integer"},
        "logger": {"type": "string"},
        "category": {"type": "string"},
        "pid": {"type": "integer"},
        "time": {"type": "string", "format": "date-time"},
        "fields": {"type": "object", "description": "Structured key/values of the record."},
        "exc": {"type": ["string", "null"], "description": "Formatted traceback, if any."},
    },
}

_GAP: dict[str, Any] = {
    "type": "object",
    "description": "Records that should have been returned were lost.",
    "properties": {
        "type": {"type": "string", "const": "gap"},
        "missed": {"type": ["integer", "null"]},
        "reason": {
            "type": "string",
            "enum": ["history", "slow_client", "restart", "overflow", "source"],
        },
        "id": {
            "type": "string",
            "description": "A gap that stands in the stream (overflow, source) has an id of its "
            "own, in the records' order: resuming after it does not tell it again.",
        },
        "levels": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "How many of the records lost were of each level, where known.",
        },
    },
}

# One Server-Sent Event of the stream: a record (default event type), or a gap.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "gap"]},
        "id": {"type": "string", "description": "The record's id (records only)."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/LogRecord"},
                    {"$ref": "#/components/schemas/Gap"},
                ]
            },
        },
        "retry": {"type": "integer"},
    },
}

_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "A malformed parameter; `detail` says which.",
        401: "Missing or invalid API key.",
        429: "Too many failed authentications from this address.",
        503: "Too many clients, or too many streams for this API key.",
    }
    return {
        str(status): {
            "description": text[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response of ``schema`` as JSON."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _get_logs() -> dict[str, Any]:
    """``GET /api/logs``: a page of history."""
    return {
        "operationId": "getLogs",
        "summary": "Recent log records, oldest first",
        "description": "Without `since`, the newest `limit` matching records; with "
        "`since`, the matching records after it. Continue with `since=<last_id>`.",
        "parameters": [
            *_FILTER_PARAMETERS,
            _query(
                "limit",
                "Most records to return (default 1000, at most 10000).",
                {"type": "integer", "minimum": 1, "maximum": 10000},
            ),
        ],
        "responses": {
            "200": _json("A page of records.", _ref("LogPage")),
            **_errors(400, 401, 429),
        },
    }


def _stream_logs() -> dict[str, Any]:
    """``GET /api/get-logs-stream``: Server-Sent Events."""
    return {
        "operationId": "streamLogs",
        "summary": "Live log records as Server-Sent Events",
        "description": "Each record is an event with `id:` and one `data:` line of "
        "JSON; lost records are announced as `event: gap`. Use `limit` and "
        "`timeout` to end the stream for clients that cannot hold it open.",
        "parameters": [
            *_FILTER_PARAMETERS,
            _query(
                "limit",
                "End the stream after this many records.",
                {"type": "integer", "minimum": 1, "maximum": 10**9},
            ),
            _query(
                "timeout",
                "End the stream after this many seconds.",
                {"type": "number", "exclusiveMinimum": 0, "maximum": 10**9},
            ),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this id (wins over `since`).",
                "schema": {"type": "string", "pattern": _ID_PATTERN},
            },
        ],
        "responses": {
            "200": {
                "description": "The event stream; the schema is that of one event.",
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            },
            **_errors(400, 401, 429, 503),
        },
    }


def _small_paths() -> dict[str, Any]:
    """``/api/stats``, ``/api/ticket`` and ``/healthz``."""
    return {
        "/api/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Counters: clients, records accepted and dropped, history size",
                "responses": {"200": _json("The counters.", _ref("Stats")), **_errors(401, 429)},
            }
        },
        "/api/ticket": {
            "post": {
                "operationId": "createTicket",
                "summary": "A single-use ticket, valid 30 s, to pass as ?ticket= instead "
                "of the key",
                "responses": {
                    "200": _json(
                        "The ticket.",
                        {
                            "type": "object",
                            "properties": {
                                "ticket": {"type": "string"},
                                "expires_in": {"type": "integer"},
                            },
                        },
                    ),
                    **_errors(401, 429),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness check",
                "security": [],
                "responses": {
                    "200": _json(
                        "The server is up.",
                        {"type": "object", "properties": {"status": {"type": "string"}}},
                    )
                },
            }
        },
    }


def _schemas() -> dict[str, Any]:
    """The components' schemas: records, gaps, errors, a page, the counters."""
    return {
        "LogRecord": _RECORD,
        "Gap": _GAP,
        "Error": _ERROR,
        "LogPage": {
            "type": "object",
            "properties": {
                "records": {"type": "array", "items": _ref("LogRecord")},
                "last_id": {"type": "string"},
                "gap": {"oneOf": [_ref("Gap"), {"type": "null"}]},
                "gaps": {
                    "type": "array",
                    "description": "Losses that stand among these records (each with "
                    "its id, which places it).",
                    "items": _ref("Gap"),
                },
            },
        },
        "Stats": {
            "type": "object",
            "properties": {
                name: {"type": "integer"}
                for name in (
                    "clients",
                    "records_accepted",
                    "records_dropped",
                    "client_drops",
                    "history_size",
                    "connections_open",
                    "connections_limit",
                    "connections_refused",
                    "connections_timed_out",
                )
            },
        },
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document, with ``server_url`` (as the client reached us) as its only server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wslogging",
            "version": __version__,
            "description": "Live logs of a running application: recent records as JSON, "
            "or a live stream as Server-Sent Events. Every endpoint but /healthz and "
            "/openapi.json needs the API key as a Bearer token.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/logs": {"get": _get_logs()},
            "/api/get-logs-stream": {"get": _stream_logs()},
            **_small_paths(),
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }
