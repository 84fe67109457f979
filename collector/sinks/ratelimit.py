"""Token bucket for per-receiver rate limits. Pure: the caller passes the time in."""

from __future__ import annotations


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; starts full.

    A message that finds no token is not dropped: it stays in the outbox until ``wait_s`` says.
    """

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive (use no bucket for 'unlimited')")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
