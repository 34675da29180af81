"""Retry delays (sans-IO): exponential from ``initial`` to ``maximum``, jittered so that
relays cut off together do not all come back at the same instant."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays 0.5, 1, 2, ... up to 10 s (by default), each drawn from its upper half."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 10.0,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._rand = rand
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt (and double the one after it)."""
        delay = self._next
        self._next = min(self.maximum, delay * 2)
        return delay / 2 + self._rand() * delay / 2

    def reset(self) -> None:
        """After a success: the next failure starts over at ``initial``."""
        self._next = self.initial
