"""Pure: API keys, where a request carries one, and the loopback ``Host`` check."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")

# Names one configured key without being it (a digest): what connections and tickets remember
# of the key that opened them, to count them per key and to close them when it is removed.
KeyId = bytes

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def parse_keys(value: str | Iterable[str] | None) -> list[str]:
    """Keys from a list, or from one comma-separated string; blanks are ignored."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    keys = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"API keys must be strings, not {type(item).__name__}")
        if item.strip():
            keys.append(item.strip())
    return keys


def configured_keys(
    api_keys: str | Iterable[str] | None, api_key_env: str | None, environ: Mapping[str, str]
) -> list[str]:
    """``api_keys`` when given (even empty), else the environment variable's keys."""
    if api_keys is not None:
        return parse_keys(api_keys)
    if api_key_env:
        return parse_keys(environ.get(api_key_env))
    return []


def generate_key() -> str:
    """A random key for when none is configured (printed once to stderr by the handler)."""
    return secrets.token_urlsafe(24)


def _as_bytes(text: str) -> bytes:
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 that way, and this
    # gives them back; any other lone surrogate is kept as is (surrogatepass). Every string
    # maps to bytes, so comparison never raises (a non-ASCII key is a 401, never a 500).
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


class KeyRing:
    """The accepted keys, compared in constant time as bytes."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [_as_bytes(k) for k in keys]
        if not self._keys:
            raise ValueError("at least one API key is required")
        self._ids = [hashlib.sha256(k).digest() for k in self._keys]

    def match(self, presented: str) -> KeyId | None:
        """The :data:`KeyId` of the key ``presented`` is, or ``None``. Compares with every
        key, so the time taken tells nothing about which key (or how much of one) matched."""
        candidate = _as_bytes(presented)
        found = None
        for key, key_id in zip(self._keys, self._ids, strict=True):
            if hmac.compare_digest(candidate, key):
                found = key_id
        return found

    def check(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys (see :meth:`match`)."""
        return self.match(presented) is not None

    def __contains__(self, key_id: object) -> bool:
        """Whether the key named by ``key_id`` is (still) one of the keys."""
        return key_id in self._ids


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or a ``Host`` header (with or without port) names loopback."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1] or [::1]:3000
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port or v4:port
        host = host.rsplit(":", 1)[0]
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _make_room(entries: dict[str, V], expired: Callable[[V], bool], limit: int) -> None:
    """Make ``entries`` (oldest first) hold fewer than ``limit``: drop the expired ones, then
    the oldest. Does nothing while there is room."""
    if len(entries) < limit:
        return
    for key, value in list(entries.items()):
        if expired(value):
            del entries[key]
    while len(entries) >= limit:
        del entries[next(iter(entries))]


def budget_of(address: str) -> str:
    """The failure budget a peer address counts against: one per host, so that a peer
    cannot multiply its budget by changing address within reach. Every loopback address
    (127.0.0.0/8, ::1) is one host, as is every address of one IPv6 /64 network; an
    IPv4-mapped IPv6 address is its IPv4 one. Text that is no address stands for itself."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureThrottle:
    """Counts failed authentications per budget (see :func:`budget_of`); past ``limit`` in
    ``window`` seconds, each further failure is to be answered only after a delay (see
    :meth:`failed`) that grows by ``step`` seconds per failure up to ``max_delay``. The server
    answers a budget's delayed failures one at a time, so a client that waits for its answers
    guesses at most once per ``max_delay`` seconds. A right key is never delayed or refused:
    only failures are counted, and only failures wait.

    Bounded: at most ``max_addresses`` budgets are tracked; when full, expired windows are
    forgotten first, then the oldest.
    """

    def __init__(
        self,
        limit: int = 30,
        window: float = 60.0,
        step: float = 0.05,
        max_delay: float = 0.5,
        max_addresses: int = 4096,
    ) -> None:
        self.limit = limit
        self.window = window
        self.step = step
        self.max_delay = max_delay
        self.max_addresses = max_addresses
        self._windows: dict[str, tuple[float, int]] = {}

    def failed(self, budget: str, now: float) -> float:
        """Count one failed attempt against ``budget``; the seconds its answer must wait
        (0.0 within the budget)."""
        start, failures = self._windows.get(budget, (now, 0))
        if now - start >= self.window:
            start, failures = now, 0
        if budget not in self._windows:
            _make_room(self._windows, lambda w: now - w[0] >= self.window, self.max_addresses)
        failures += 1
        self._windows[budget] = (start, failures)
        return min(self.max_delay, self.step * max(0, failures - self.limit))

    def retry_after(self, budget: str, now: float) -> float:
        """Seconds until ``budget``'s window ends and its failures are forgotten."""
        start, _ = self._windows.get(budget, (now, 0))
        return max(0.0, self.window - (now - start))


class TicketBook:
    """Single-use tickets that stand in for the key in a URL (SPEC §3).

    A ticket is valid once, for ``lifetime`` seconds, and stands for the key it was issued
    with. Bounded: at most ``max_tickets`` outstanding; when full, expired ones are forgotten
    first, then the oldest.
    """

    def __init__(self, lifetime: float = 30.0, max_tickets: int = 10000) -> None:
        self.lifetime = lifetime
        self.max_tickets = max_tickets
        self._issued: dict[str, tuple[float, KeyId]] = {}

    def issue(self, now: float, key_id: KeyId) -> str:
        """A new ticket for the key ``key_id``, valid until ``now + lifetime``."""
        _make_room(self._issued, lambda issued: issued[0] <= now, self.max_tickets)
        ticket = secrets.token_urlsafe(24)
        self._issued[ticket] = (now + self.lifetime, key_id)
        return ticket

    def redeem(self, ticket: str, now: float) -> KeyId | None:
        """The key ``ticket`` was issued for, if it is valid now, else ``None``; it is used up
        either way."""
        issued = self._issued.pop(ticket, None)
        return issued[1] if issued is not None and now < issued[0] else None
