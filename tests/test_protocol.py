"""Tests for wslogging._protocol: client messages and the budget that earns a 1008."""

from __future__ import annotations

import pytest

from wslogging._filters import Filter
from wslogging._protocol import (
    MAX_CLIENT_MESSAGE,
    Ack,
    Liveness,
    MessageBudget,
    Ping,
    ProtocolError,
    Subscribe,
    parse_client_message,
)


def test_ping() -> None:
    """A ping is a Ping."""
    assert Ping() == parse_client_message('{"type": "ping"}')


def test_subscribe() -> None:
    """A subscribe carries its parsed filter."""
    assert Subscribe(Filter(level=40, loggers=("app",))) == parse_client_message(
        '{"type": "subscribe", "filter": {"level": "error", "logger": "app"}}'
    )


def test_ack() -> None:
    """An ack carries the id as a number."""
    assert Ack(1795629916089878) == parse_client_message(
        '{"type": "ack", "id": "1795629916089878"}'
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("nope", "not JSON"),
        ("[1]", "JSON object"),
        ('{"kind": "ping"}', "unknown message type"),
        ('{"type": "dance"}', "unknown message type: 'dance'"),
        ('{"type": "subscribe", "filter": {"level": "loud"}}', "unknown level"),
        ('{"type": "subscribe", "filter": {"colour": "red"}}', "unknown filter keys"),
        ('{"type": "ack", "id": 7}', "ack id must be a string"),
        ('{"type": "ack", "id": "seven"}', "not a record id"),
        ("x" * (MAX_CLIENT_MESSAGE + 1), "message over"),
    ],
)
def test_malformed_messages_say_why(text: str, detail: str) -> None:
    """Each malformed message raises ProtocolError naming the problem."""
    with pytest.raises(ProtocolError, match=detail):
        parse_client_message(text)


def test_budget_allows_a_burst_then_refills() -> None:
    """A burst of messages is allowed; beyond it, only the refill rate."""
    budget = MessageBudget(rate=10.0, burst=5.0)
    assert [True] * 5 + [False] == [budget.take(0.0) for _ in range(6)]
    assert True is budget.take(1.0)


def test_budget_counts_errors() -> None:
    """max_errors malformed messages are tolerated, the next one is not."""
    budget = MessageBudget(max_errors=2)
    assert [True, True, False] == [budget.error() for _ in range(3)]


def test_liveness_pings_once_a_heartbeat() -> None:
    """A ping is due a heartbeat after the last one, and not while one is unanswered."""
    liveness = Liveness(10.0, now=0.0)
    assert (False, True) == (liveness.due(9.0), liveness.due(10.0))
    liveness.pinged(10.0, None)
    assert False is liveness.due(25.0)
    liveness.pong()
    assert (False, True) == (liveness.due(19.0), liveness.due(20.0))


def test_liveness_gives_up_two_heartbeats_after_an_unanswered_ping() -> None:
    """No pong and no progress two heartbeats after the ping: gone."""
    liveness = Liveness(10.0, now=0.0)
    liveness.pinged(10.0, 500)
    assert (False, True) == (liveness.gone(29.0, lambda: 500), liveness.gone(30.0, lambda: 500))


def test_liveness_waits_for_a_peer_still_reading() -> None:
    """A peer that took bytes since the ping is waited for again; an answered ping clears all."""
    liveness = Liveness(10.0, now=0.0)
    liveness.pinged(10.0, 500)
    assert False is liveness.gone(30.0, lambda: 200)
    assert (False, True) == (liveness.gone(49.0, lambda: 200), liveness.gone(50.0, lambda: 200))
    liveness.pong()
    assert False is liveness.gone(100.0, lambda: 200)


def test_liveness_without_byte_counts_relies_on_pongs() -> None:
    """Where unsent bytes cannot be read, only the pong counts."""
    liveness = Liveness(1.0, now=0.0)
    liveness.pinged(1.0, None)
    assert True is liveness.gone(3.0, lambda: None)
