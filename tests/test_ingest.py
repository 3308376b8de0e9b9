"""The forwarders' handshake and control messages, without a socket."""

from __future__ import annotations

import json

import pytest

from wslogging import _ingest
from wslogging._ingest import IngestError

SECRET = "s" * 43


def test_handshake_round_trip() -> None:
    """Each side's proof checks out with the same secret, and fails with another one."""
    nonce, challenge = _ingest.new_nonce(), _ingest.new_nonce()
    text = _ingest.challenge_message(challenge, 10, _ingest.server_proof(SECRET, nonce))
    parsed = _ingest.parse_challenge(text)
    auth = _ingest.parse_auth(
        _ingest.auth_message(11, _ingest.forwarder_proof(SECRET, parsed.nonce))
    )
    checks = [
        _ingest.proof_matches(parsed.proof, _ingest.server_proof(SECRET, nonce)),
        _ingest.proof_matches(auth.proof, _ingest.forwarder_proof(SECRET, challenge)),
        _ingest.proof_matches(auth.proof, _ingest.forwarder_proof("other" * 9, challenge)),
    ]
    assert ([True, True, False], 10, 11) == (checks, parsed.pid, auth.pid)


def test_proofs_are_bound_to_their_role() -> None:
    """A server's proof replayed as a forwarder's (or back) does not pass."""
    nonce = _ingest.new_nonce()
    assert _ingest.server_proof(SECRET, nonce) != _ingest.forwarder_proof(SECRET, nonce)


@pytest.mark.parametrize("proof", [None, 5, "\udcff", ""])
def test_odd_proofs_never_match(proof: object) -> None:
    """A proof of the wrong type or with unencodable text is a mismatch, never an error."""
    assert not _ingest.proof_matches(proof, _ingest.server_proof(SECRET, _ingest.new_nonce()))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nope", "not JSON"),
        ('{"type": "hello"}', "expected a 'auth' message"),
        ('{"type": "auth", "pid": 1}', "proof must be"),
        ('{"type": "auth", "pid": true, "proof": "p"}', "pid must be"),
        ('{"type": "auth", "pid": 0, "proof": "p"}', "pid must be"),
        ("x" * 5000, "over 4096"),
    ],
)
def test_bad_auth_messages(text: str, problem: str) -> None:
    """A malformed ``auth`` names its problem."""
    with pytest.raises(IngestError, match=problem):
        _ingest.parse_auth(text)


@pytest.mark.parametrize("nonce", [None, "", "ABCDEF" * 6, "g" * 32, "a" * 31])
def test_bad_nonces(nonce: object) -> None:
    """Only 32 lowercase hex digits are a nonce."""
    with pytest.raises(IngestError, match="nonce must be"):
        _ingest.check_nonce(nonce)


@pytest.mark.parametrize("count", [-1, True, 1.5, "3", 2**63])
def test_bad_dropped_counts(count: object) -> None:
    """A ``dropped`` count is a non-negative integer."""
    with pytest.raises(IngestError, match="count must be"):
        _ingest.parse_dropped(json.dumps({"type": "dropped", "count": count}))


def test_dropped_round_trip() -> None:
    assert 12 == _ingest.parse_dropped(_ingest.dropped_message(12))
