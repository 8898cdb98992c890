"""Retries with exponential back-off and jitter, as a runner applies them to a handler."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from partitions._base.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is tried for one record, and how long to wait between.

    Attempt ``n`` (1-based) that fails with an exception of ``retry_on`` waits
    ``min(backoff_ms * multiplier ** (n - 1), max_backoff_ms)``, spread by ``jitter`` (a
    fraction: 0.2 = anywhere from 80 % to 100 % of it, so failing consumers do not retry in
    step), then runs again; after ``max_attempts`` attempts, or at once for an exception
    outside ``retry_on``, the record goes to its partition's dead-letter stream.

    ``blocking`` (the default): the record's key waits (its later records do not start), so
    per-key order holds through failures. Non-blocking: the record steps aside for its
    back-off and the key's later records go ahead; it runs again, before the key's next
    record, when its wait is over. That breaks per-key order *for that key* (later records
    are handled before it), so use it only where order does not matter or the handler is
    commutative. Either way the record stays pending on the server until its last attempt: a
    crash during the back-off redelivers it to the partition's next owner, first.
    """

    # Attempts in all, the first one included: 1 = no retry.
    max_attempts: int = 3
    # The wait after the first failed attempt; each further one multiplies it.
    backoff_ms: float = 100.0
    multiplier: float = 2.0
    # The longest wait between two attempts.
    max_backoff_ms: float = 30_000.0
    # Fraction of each wait drawn at random (0: exact waits).
    jitter: float = 0.2
    # Exceptions worth another attempt; others dead-letter the record at once.
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    # True: the key waits for the retry; False: its later records pass (see above).
    blocking: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigError(f"max_attempts must be a positive integer, got {self.max_attempts!r}")
        for name in ("backoff_ms", "max_backoff_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.multiplier, int | float) or self.multiplier < 1:
            raise ConfigError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if not isinstance(self.blocking, bool):
            raise ConfigError(f"blocking must be true or false, got {self.blocking!r}")
        bad = [
            c for c in self.retry_on if not (isinstance(c, type) and issubclass(c, BaseException))
        ]
        if bad:
            raise ConfigError(f"retry_on takes exception classes, got {bad!r}")

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt ``attempt`` (1-based), which raised ``error``, gets another."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
        base = min(self.backoff_ms * self.multiplier ** (attempt - 1), self.max_backoff_ms)
        return base * (1 - self.jitter * rand()) / 1000


NO_RETRY = RetryPolicy(max_attempts=1)
