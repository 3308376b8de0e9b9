"""Tests for wslogging._auth: API keys, bearer tokens and the loopback Host check."""

from __future__ import annotations

import pytest

from wslogging._auth import (
    FailureThrottle,
    KeyRing,
    TicketBook,
    bearer_token,
    budget_of,
    configured_keys,
    generate_key,
    is_loopback_host,
    parse_keys,
)

# -- parse_keys / configured_keys -----------------------------------------------------------


def test_parse_keys_list() -> None:
    """A list of keys is kept in order."""
    assert ["a", "b"] == parse_keys(["a", "b"])


def test_parse_keys_list_strips_and_skips_blanks() -> None:
    """Keys in a list are stripped; blank ones are skipped."""
    assert ["a", "b"] == parse_keys([" a ", "", "  ", "b"])


def test_parse_keys_comma_string() -> None:
    """One string holds comma-separated keys; spaces and blanks are dropped."""
    assert ["a", "b", "c"] == parse_keys(" a, ,b,,  c ,")


def test_parse_keys_single_string() -> None:
    """A string without commas is one key."""
    assert ["only-key"] == parse_keys("only-key")


@pytest.mark.parametrize("value", [None, "", " , ", []])
def test_parse_keys_nothing(value: str | list[str] | None) -> None:
    """None, an empty string or list give no keys."""
    assert [] == parse_keys(value)


@pytest.mark.parametrize("value", [["a", 1], [b"key"], b"key"])
def test_parse_keys_non_str_raises(value: object) -> None:
    """Keys that are not strings are a TypeError."""
    with pytest.raises(TypeError, match="API keys must be strings"):
        parse_keys(value)  # type: ignore[arg-type]


def test_configured_keys_api_keys_win() -> None:
    """``api_keys`` is used when given, whatever the environment holds."""
    assert ["a"] == configured_keys(["a"], "KEYS", {"KEYS": "env"})


def test_configured_keys_empty_api_keys_win() -> None:
    """An empty ``api_keys`` still wins over the environment."""
    assert [] == configured_keys([], "KEYS", {"KEYS": "env"})


def test_configured_keys_from_env() -> None:
    """Without ``api_keys``, the environment variable's comma-separated keys."""
    assert ["k1", "k2"] == configured_keys(None, "KEYS", {"KEYS": "k1, k2"})


def test_configured_keys_env_unset() -> None:
    """Without ``api_keys`` and with the variable unset, no keys."""
    assert [] == configured_keys(None, "KEYS", {"OTHER": "x"})


@pytest.mark.parametrize("env_name", [None, ""])
def test_configured_keys_no_env_name(env_name: str | None) -> None:
    """Without an environment variable name, the environment is not read."""
    assert [] == configured_keys(None, env_name, {"": "x"})


def test_generate_key_random_and_urlsafe() -> None:
    """Generated keys differ each time and need no URL escaping."""
    keys = {generate_key() for _ in range(5)}

    assert (5, True) == (len(keys), all(k.isascii() and "," not in k for k in keys))


# -- KeyRing --------------------------------------------------------------------------------


def test_check_right_key() -> None:
    """A configured key is accepted."""
    assert True is KeyRing(["alpha", "beta"]).check("beta")


@pytest.mark.parametrize("presented", ["gamma", "alph", "alphaa", "ALPHA", " alpha", ""])
def test_check_wrong_key(presented: str) -> None:
    """Other keys, prefixes, extensions, other case and the empty string are refused."""
    assert False is KeyRing(["alpha", "beta"]).check(presented)


def test_check_non_ascii_key() -> None:
    """A non-ASCII key is accepted when presented exactly."""
    ring = KeyRing(["clé-✓-日本"])

    assert [True, False] == [ring.check("clé-✓-日本"), ring.check("cle-✓-日本")]


@pytest.mark.parametrize("presented", ["clé", "✓", "\udcff\udc80", "日本語のキー"])
def test_check_non_ascii_presented_never_raises(presented: str) -> None:
    """Non-ASCII presented values, including surrogate-escaped bytes, are simply refused."""
    assert False is KeyRing(["ascii-key"]).check(presented)


@pytest.mark.parametrize("presented", ["\ud800", "a\udbffb", "x\udfffy"])
def test_check_lone_surrogates_never_raise(presented: str) -> None:
    """Any lone surrogate in a presented value is refused, never an exception."""
    assert False is KeyRing(["ascii-key"]).check(presented)


def test_match_names_the_key_without_being_it() -> None:
    """match() gives an id per key, the same for the same key, never the key itself."""
    ring = KeyRing(["alpha", "beta"])
    alpha, beta = ring.match("alpha"), ring.match("beta")
    assert (True, True, None) == (
        alpha != beta,
        alpha == KeyRing(["alpha"]).match("alpha"),
        ring.match("x"),
    )
    assert alpha is not None
    assert b"alpha" not in alpha


def test_ring_knows_its_key_ids() -> None:
    """A key id is in the ring that holds its key, and not in one that does not."""
    key_id = KeyRing(["alpha"]).match("alpha")
    assert (True, False) == (key_id in KeyRing(["beta", "alpha"]), key_id in KeyRing(["beta"]))


@pytest.mark.parametrize("keys", [[], ["", "  "]])
def test_keyring_without_keys_raises(keys: list[str]) -> None:
    """A key ring needs at least one key."""
    with pytest.raises(ValueError, match="at least one API key"):
        KeyRing(parse_keys(keys))


# -- bearer_token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Bearer tok-1", "bearer tok-1", "BEARER tok-1", "  Bearer   tok-1  "]
)
def test_bearer_token(header: str) -> None:
    """The token of a Bearer header, whatever the scheme's case and the spacing."""
    assert "tok-1" == bearer_token(header)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "tok-1"]
)
def test_bearer_token_none(header: str | None) -> None:
    """Missing header, missing token or another scheme: no token."""
    assert None is bearer_token(header)


# -- is_loopback_host -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:3000",
        "127.1.2.3:80",
        "localhost",
        "LOCALHOST:3000",
        "localhost.",
        "[::1]:3000",
        "[::1]",
        "::1",
    ],
)
def test_loopback_hosts(host: str) -> None:
    """Loopback addresses and names, with or without port, are loopback."""
    assert True is is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:3000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "10.0.0.1",
        "0.0.0.0",
        "[::]:3000",
        "::",
        "",
        "[",
    ],
)
def test_non_loopback_hosts(host: str) -> None:
    """Other names and addresses, all interfaces, and junk are not loopback."""
    assert False is is_loopback_host(host)


# -- FailureThrottle ---------------------------------------------------------------------------


def test_throttle_delays_past_the_budget_growing_to_a_cap() -> None:
    """Within the budget no failure waits; past it each waits a step more, up to the cap;
    other budgets are unaffected."""
    throttle = FailureThrottle(limit=3, window=60.0, step=0.1, max_delay=0.25)
    delays = [throttle.failed("10.0.0.1", 100.0) for _ in range(6)]
    assert [0.0, 0.0, 0.0, 0.1, 0.2, 0.25] == pytest.approx(delays)
    assert 0.0 == throttle.failed("10.0.0.2", 100.0)
    assert 50.0 == throttle.retry_after("10.0.0.1", 110.0)


def test_throttle_window_restarts_after_expiry() -> None:
    """Failures in an expired window no longer count."""
    throttle = FailureThrottle(limit=1, window=10.0)
    throttle.failed("a", 0.0)
    assert 0.0 == throttle.failed("a", 11.0)


def test_throttle_tracks_a_bounded_number_of_budgets() -> None:
    """Beyond max_addresses the oldest budget is forgotten first."""
    throttle = FailureThrottle(limit=1, window=60.0, max_addresses=2)
    for budget in ("a", "b", "c"):
        throttle.failed(budget, 0.0)
    assert (True, 0.0) == (throttle.failed("c", 1.0) > 0, throttle.failed("a", 1.0))


@pytest.mark.parametrize(
    ("address", "budget"),
    [
        ("127.0.0.1", "loopback"),
        ("127.3.2.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.5", "loopback"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
        ("not an address", "not an address"),
    ],
)
def test_budget_of_is_one_per_host(address: str, budget: str) -> None:
    """Every loopback address is one budget, as is each IPv6 /64; mapped IPv4 is IPv4."""
    assert budget == budget_of(address)


# -- TicketBook ----------------------------------------------------------------------------------


def test_ticket_is_single_use() -> None:
    """A ticket is good once, and stands for the key it was issued with."""
    book = TicketBook(lifetime=30.0)
    ticket = book.issue(0.0, b"key-1")
    assert (b"key-1", None) == (book.redeem(ticket, 1.0), book.redeem(ticket, 1.0))


def test_ticket_expires() -> None:
    """A ticket is refused once its lifetime has passed, and is used up by the attempt."""
    book = TicketBook(lifetime=30.0)
    ticket = book.issue(0.0, b"key-1")
    assert None is book.redeem(ticket, 30.0)


def test_unknown_ticket_is_refused() -> None:
    """A ticket never issued is refused."""
    assert None is TicketBook().redeem("made-up", 0.0)


def test_tickets_are_bounded() -> None:
    """Beyond max_tickets the oldest outstanding ticket is forgotten."""
    book = TicketBook(lifetime=30.0, max_tickets=2)
    first, second, third = (book.issue(0.0, b"k") for _ in range(3))
    assert (None, b"k", b"k") == (
        book.redeem(first, 1.0),
        book.redeem(second, 1.0),
        book.redeem(third, 1.0),
    )
