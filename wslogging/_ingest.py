"""Pure: the protocol a forwarding process speaks with the serving one on ``/ws/ingest``.

One WebSocket per forwarding process, over loopback. Both sides prove that they know the
ingest secret of the rendezvous file (:mod:`wslogging._rendezvous`) without sending it:

1. The forwarder connects to ``/ws/ingest?nonce=<Nf>`` (a fresh random nonce).
2. The server answers ``{"type": "challenge", "nonce": <Ns>, "pid": <its pid>,
   "proof": HMAC(secret, "server" + Nf)}``. A forwarder that gets a wrong proof is talking to
   something else that holds the port (a stale file, or a process of another user that took
   the port): it sends nothing and tries again later.
3. The forwarder sends ``{"type": "auth", "pid": <its pid>, "proof": HMAC(secret,
   "forwarder" + Ns)}``. A wrong proof is closed with 4401 ``"invalid ingest secret"`` and
   counted against the address like a wrong API key; nothing else changes.
4. The server answers ``{"type": "accepted"}``. From then on the forwarder sends batches of
   records as binary frames (:func:`wslogging._wire.pack_entries`, at most
   :data:`MAX_FRAME` bytes) and, when its count of dropped records changes,
   ``{"type": "dropped", "count": N}`` (its total so far). The server answers a malformed
   frame with ``{"type": "error", "detail": ...}`` and closes with 1008 after
   :data:`MAX_ERRORS` of them.

API keys play no part here: a key lets a client read the stream, not write into it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from ._protocol import load_message

INGEST_PATH = "/ws/ingest"
# Largest batch frame; a forwarder splits larger batches and drops (and counts) a single
# record larger than this.
MAX_FRAME = 4 * 1024 * 1024
# Largest text (control) frame.
MAX_CONTROL = 4096
# Records per batch a forwarder sends at most.
MAX_BATCH = 1000
# Malformed frames a forwarder may send before it is closed with 1008.
MAX_ERRORS = 20
# Seconds each step of the handshake may take.
HANDSHAKE_TIMEOUT = 5.0
NONCE_HEX = 32


class IngestError(ValueError):
    """A handshake or control message that is malformed or fails; the text says why."""


def new_nonce() -> str:
    return secrets.token_hex(NONCE_HEX // 2)


def check_nonce(value: object) -> str:
    """``value`` if it is a nonce as :func:`new_nonce` makes them; else :class:`IngestError`."""
    if (
        not isinstance(value, str)
        or len(value) != NONCE_HEX
        or not all(c in "0123456789abcdef" for c in value)
    ):
        raise IngestError(f"nonce must be {NONCE_HEX} lowercase hex digits")
    return value


def _proof(secret: str, role: bytes, nonce: str) -> str:
    return hmac.new(secret.encode(), role + b"\0" + nonce.encode(), hashlib.sha256).hexdigest()


def server_proof(secret: str, forwarder_nonce: str) -> str:
    """What the server sends to show it knows ``secret``."""
    return _proof(secret, b"wslogging-server", forwarder_nonce)


def forwarder_proof(secret: str, server_nonce: str) -> str:
    """What a forwarder sends to show it knows ``secret``."""
    return _proof(secret, b"wslogging-forwarder", server_nonce)


def proof_matches(presented: object, expected: str) -> bool:
    """Constant-time comparison of a proof received with the one expected."""
    return isinstance(presented, str) and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode()
    )


@dataclass(frozen=True)
class Challenge:
    nonce: str
    pid: int
    proof: str


@dataclass(frozen=True)
class Auth:
    pid: int
    proof: str


def _object(text: str, kind: str) -> dict[str, Any]:
    message = load_message(text, MAX_CONTROL, IngestError)
    if not isinstance(message, dict) or message.get("type") != kind:
        raise IngestError(f"expected a {kind!r} message")
    return message


def _pid(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise IngestError("pid must be a positive integer")
    return value


def challenge_message(nonce: str, pid: int, proof: str) -> str:
    return json.dumps({"type": "challenge", "nonce": nonce, "pid": pid, "proof": proof})


def parse_challenge(text: str) -> Challenge:
    message = _object(text, "challenge")
    proof = message.get("proof")
    if not isinstance(proof, str):
        raise IngestError("proof must be a string")
    return Challenge(check_nonce(message.get("nonce")), _pid(message.get("pid")), proof)


def auth_message(pid: int, proof: str) -> str:
    return json.dumps({"type": "auth", "pid": pid, "proof": proof})


def parse_auth(text: str) -> Auth:
    message = _object(text, "auth")
    proof = message.get("proof")
    if not isinstance(proof, str):
        raise IngestError("proof must be a string")
    return Auth(_pid(message.get("pid")), proof)


ACCEPTED = json.dumps({"type": "accepted"})


def dropped_message(count: int) -> str:
    return json.dumps({"type": "dropped", "count": count})


def parse_dropped(text: str) -> int:
    """The count of a ``dropped`` message."""
    count = _object(text, "dropped").get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63:
        raise IngestError("count must be a non-negative integer")
    return count


def error_message(detail: str) -> str:
    return json.dumps({"type": "error", "detail": detail})


# WebSocket opcodes (RFC 6455 §5.2) of the frames a forwarder writes itself.
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final WebSocket frame as a client sends it (RFC 6455 §5.2): ``payload`` masked
    with the 4 bytes of ``mask`` (which the caller draws anew for every frame)."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    # Byte i is XORed with mask[i % 4]: done on whole integers, which is C's work, not a
    # Python loop per byte.
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "little")
    masked = (int.from_bytes(payload, "little") ^ key).to_bytes(size, "little")
    return header + mask + masked
