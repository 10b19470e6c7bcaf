"""Retry policy and backoff math (pure).

Attempts count **total** runs: ``attempts=3`` is one run plus two retries. Backoff is
``fixed`` (``delay``), ``linear`` (``delay * n``), ``exponential`` (``delay * multiplier**(n-1)``)
or a function of the attempt number; the result is capped at ``max_delay`` and then jittered by
±25% unless ``jitter=False``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from conveyor.domain.durations import Duration, optional_duration, parse_duration

BackoffName = Literal["fixed", "linear", "exponential"]
BackoffFn = Callable[[int], float]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed job is retried.

    ``retry_on``: if set, only these exception types are retried. ``no_retry_on``: these are
    never retried. A :class:`~conveyor.errors.Retry` raised by the handler always retries while
    attempts remain. A timeout is retried only when ``retry_on`` lists
    :class:`~conveyor.errors.JobTimeout`.
    """

    attempts: int = 1
    backoff: BackoffName | BackoffFn = "exponential"
    delay: float = 1.0
    max_delay: float | None = 3600.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = field(default=())
    no_retry_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise ValueError("retry attempts must be an integer (total runs, >= 1)")
        if self.attempts < 1:
            raise ValueError("retry attempts counts total runs and must be >= 1")
        if not callable(self.backoff) and self.backoff not in ("fixed", "linear", "exponential"):
            raise ValueError(
                f"unknown backoff {self.backoff!r}; use 'fixed', 'linear', 'exponential' "
                "or a function of the attempt number"
            )
        if self.delay < 0:
            raise ValueError("retry delay must not be negative")
        if self.multiplier < 1:
            raise ValueError("retry multiplier must be >= 1")

    @classmethod
    def build(
        cls,
        attempts: int = 1,
        *,
        backoff: BackoffName | BackoffFn = "exponential",
        delay: Duration = 1.0,
        max_delay: Duration | None = 3600.0,
        multiplier: float = 2.0,
        jitter: bool = True,
        retry_on: tuple[type[BaseException], ...] | list[type[BaseException]] = (),
        no_retry_on: tuple[type[BaseException], ...] | list[type[BaseException]] = (),
    ) -> RetryPolicy:
        """Build a policy accepting durations as numbers, strings or timedeltas."""
        return cls(
            attempts=attempts,
            backoff=backoff,
            delay=parse_duration(delay, field="retry delay"),
            max_delay=optional_duration(max_delay, field="retry max_delay"),
            multiplier=multiplier,
            jitter=jitter,
            retry_on=tuple(retry_on),
            no_retry_on=tuple(no_retry_on),
        )

    def base_delay(self, attempt: int) -> float:
        """Delay before the retry that follows failed ``attempt`` (1-based), before jitter."""
        if callable(self.backoff):
            raw = float(self.backoff(attempt))
        elif self.backoff == "fixed":
            raw = self.delay
        elif self.backoff == "linear":
            raw = self.delay * attempt
        else:
            raw = self.delay * self.multiplier ** (attempt - 1)
        raw = max(raw, 0.0)
        if self.max_delay is not None:
            raw = min(raw, self.max_delay)
        return raw

    def delay_for(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay after failed ``attempt``, with jitter applied when enabled."""
        raw = self.base_delay(attempt)
        if self.jitter and raw > 0:
            raw *= (rng or random).uniform(0.75, 1.25)
        return raw

    def should_retry(self, exc: BaseException, attempt: int, max_attempts: int) -> bool:
        """The decision tree for an exception raised by ``attempt`` of ``max_attempts``."""
        from conveyor.errors import JobTimeout, Retry

        if attempt >= max_attempts:
            return False
        if isinstance(exc, Retry):
            return True
        if isinstance(exc, JobTimeout):
            return bool(self.retry_on) and isinstance(exc, self.retry_on)
        if self.no_retry_on and isinstance(exc, self.no_retry_on):
            return False
        if self.retry_on:
            return isinstance(exc, self.retry_on)
        return True

    def to_seed000(self) -> dict[str, object]:
        """Render as seed 000's ``TaskRetryPolicy``."""
        strategy = self.backoff if isinstance(self.backoff, str) else "exponential"
        return {
            "maxRetries": self.attempts - 1,
            "backoffStrategy": strategy,
            "initialDelayMs": int(self.delay * 1000),
            "maxDelayMs": int((self.max_delay if self.max_delay is not None else 0) * 1000),
            "backoffMultiplier": self.multiplier,
        }


NO_RETRY = RetryPolicy()
