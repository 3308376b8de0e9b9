"""The handler's options: each value checked, with the error a configuration gets for it
(SPEC §2), and the :class:`ServerOptions` made of them.

Every option is a plain keyword so that ``dictConfig`` and ``fileConfig`` can build a
handler; strings are accepted for numbers and booleans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from . import _auth, _rendezvous
from ._hub import SlowClientPolicy
from .server import ServerOptions


def handler_options(
    *,
    host: str,
    port: int | str,
    api_keys: str | Iterable[str] | None,
    api_key_env: str | None,
    history: int | str,
    queue_size: int | str,
    client_queue_size: int | str,
    slow_client: str,
    heartbeat: float | str,
    max_clients: int | str,
    max_clients_per_key: int | str | None,
    allowed_origins: str | Iterable[str] | None,
    allow_query_token: bool | str,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    keep_level: int | str | None,
    made_up: bool,
) -> tuple[ServerOptions, bool, str]:
    """The options, whether the key was made up (no key configured, and ``made_up``: a
    handler that serves), and where a made-up key is kept (for the line that prints it).
    Raises ``ValueError`` for the first bad value."""
    try:
        policy = SlowClientPolicy(slow_client)
    except ValueError:
        raise ValueError(
            f"slow_client must be 'drop' or 'disconnect', not {slow_client!r}"
        ) from None
    keys = _auth.configured_keys(api_keys, api_key_env, os.environ)
    generated = not keys and made_up
    kept = ""
    if generated:
        key, kept = _rendezvous.made_up_key(str(host), _port(port))
        keys = [key]
    clients: int = _number("max_clients", max_clients, int, 0)
    per_key: int = clients
    if max_clients_per_key not in (None, ""):
        per_key = _number("max_clients_per_key", max_clients_per_key, int, 1)
    options = ServerOptions(
        host=str(host),
        port=_port(port),
        keys=tuple(keys),
        history=_number("history", history, int, 0),
        queue_size=_number("queue_size", queue_size, int, 1),
        client_queue_size=_number("client_queue_size", client_queue_size, int, 1),
        slow_client=policy,
        heartbeat=_number("heartbeat", heartbeat, float, 0.01),
        max_clients=clients,
        max_clients_per_key=per_key,
        allowed_origins=_origins(allowed_origins),
        allow_query_token=_bool("allow_query_token", allow_query_token),
        ssl_certfile=ssl_certfile or None,
        ssl_keyfile=ssl_keyfile or None,
        keep_level=_keep_level(keep_level),
    )
    return options, generated, kept


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def _number(name: str, value: Any, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, not {value!r}")
    return number


def _port(value: object) -> int:
    port: int = _number("port", value, int, 0)
    if port > 65535:
        raise ValueError(f"port must be 0 to 65535, not {value!r}")
    return port


def _keep_level(value: object) -> int | None:
    """``keep_level``: a level name or number, or ``None`` / ``""`` for no shedding."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        level = logging.getLevelNamesMapping().get(value.strip().upper())
        if level is None:
            raise ValueError(f"keep_level must be a level name or number, not {value!r}")
        return level
    return int(_number("keep_level", value, int, 0))


def _origins(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset(_auth.parse_keys(value))
