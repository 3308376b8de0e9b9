"""Reconnect delays: doubling from a first delay up to a cap, with jitter."""

from __future__ import annotations

import random


class Backoff:
    """Delays between attempts to reconnect: ``first``, doubled after each attempt up to
    ``cap``, each spread by ±``jitter`` (a fraction of it) so that many processes do not
    retry in step; :meth:`reset` once connected."""

    def __init__(self, first: float, cap: float, jitter: float = 0.2) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    def next(self) -> float:
        """The delay before the next attempt."""
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (not a secret)
        delay = self.delay * spread
        self.delay = min(self.delay * 2, self.cap)
        return delay
