"""Whether a process joins the server on its port: the rules, without a process."""

from __future__ import annotations

import dataclasses

import pytest

from wslogging._belonging import Joiner, describe, differences, refusal
from wslogging._rendezvous import Rendezvous, keys_fingerprint

SECRET = "s" * 43
ME = Joiner(
    pid=200, parent=100, program="/srv/app.py", keys=("k1", "k2"), generated=False, history=10000
)
MADE_UP = Joiner(
    pid=200, parent=100, program="/srv/app.py", keys=("mine",), generated=True, history=10000
)


def server(
    keys: tuple[str, ...],
    *,
    made_up: bool = False,
    pid: int = 300,
    parent: int = 1,
    history: int | None = None,
    collector: bool = False,
) -> Rendezvous:
    """The rendezvous of a server with ``keys`` (the first one made up, with ``made_up``)."""
    return Rendezvous(
        pid,
        SECRET,
        keys[0] if made_up else None,
        keys=keys_fingerprint(keys),
        history=history,
        parent=parent,
        collector=collector,
    )


def test_the_same_key_set_joins_in_any_order() -> None:
    """The same keys, in another order or repeated: one app."""
    assert refusal(server(("k2", "k1", "k2")), ME) is None


def test_other_keys_do_not_join() -> None:
    """Other keys: another app, and the reason says so."""
    assert "with other API keys" == refusal(server(("other",)), ME)


def test_the_parent_is_joined_whatever_the_keys() -> None:
    """A process the server started (a reloader's child) joins it with other keys too."""
    assert refusal(server(("other",), pid=ME.parent), ME) is None


def test_a_collector_takes_any_program() -> None:
    """A collector (``wslogging serve`` without Redis) takes every program of its user."""
    assert refusal(server(("other",), collector=True), ME) is None


@pytest.mark.parametrize(
    ("parent", "key", "program", "joins"),
    [
        (100, "theirs", "/srv/other.py", True),  # siblings: workers of one process manager
        (1, "theirs", "/srv/other.py", False),  # unrelated (orphans and daemons share pid 1)
        (1, "mine", "/srv/other.py", False),  # the same made-up key: the one kept per port
        (1, "mine", "/srv/app.py", True),  # the same program, started twice
    ],
)
def test_made_up_keys_on_both_sides(parent: int, key: str, program: str, joins: bool) -> None:
    """No key configured on either side: the same parent, or the same program; never the
    same made-up key alone (every unconfigured program on a port has the one kept for it)."""
    found = dataclasses.replace(server((key,), made_up=True, parent=parent), program=program)
    if joins:
        assert refusal(found, MADE_UP) is None
    else:
        assert "of another program (neither has an API key configured)" == refusal(found, MADE_UP)


def test_a_made_up_key_on_one_side_only_does_not_join() -> None:
    """Configured keys on one side and a made-up one on the other: two apps."""
    assert "with API keys configured, where this program has none" == refusal(
        server(("k1",), parent=100), MADE_UP
    )
    assert "with a made-up API key, where this program has keys configured" == refusal(
        server(("x",), made_up=True, parent=100), ME
    )


def test_a_server_that_names_no_keys_does_not_join() -> None:
    """A rendezvous without a fingerprint (an older wslogging) is not taken for the same app."""
    assert "with other API keys" == refusal(Rendezvous(300, SECRET), ME)


def test_differences_that_matter() -> None:
    """Keys and history that differ are named; a made-up key never is (nobody has it)."""
    assert ["api_keys", "history"] == differences(server(("other",), history=500), ME)
    assert [] == differences(server(("k1", "k2"), history=10000), ME)
    assert [] == differences(server(("other",), made_up=True), MADE_UP)


def test_describe() -> None:
    """A process is named by pid and program file name, or package for ``-m``."""
    assert "process 42 (manage.py)" == describe(42, "/srv/site/manage.py")
    assert "process 42 (flask)" == describe(42, "/venv/lib/flask/__main__.py")
    assert "process 42" == describe(42, None)
