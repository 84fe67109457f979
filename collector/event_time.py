"""The event-time rule: which span timestamps the detectors may see, decided once at admission.

Detectors work in event time (span timestamps) so a replay and live traffic give the same
findings. A timestamp is checked against two clocks:

* the wall clock, for the future: a span stamped more than ``max_future_skew_s`` ahead of now
  (a bad clock on the agent's host) is clamped to now (``future_policy: clamp``, the default)
  or rejected (``reject``). Clamping keeps the call but stops it dragging the watermark ahead.
* the admission watermark (the latest event time admitted so far), for the past: a span more
  than ``allowed_lateness_s`` behind it is rejected as ``too_late``. Within that window,
  out-of-order spans are accepted; each micro-batch is sorted by event time and the watermark
  handed to detectors never goes backwards.
* optionally (``max_age_s`` > 0) the wall clock for the past too: older spans are rejected as
  ``too_old``. Off by default so recorded traffic can be replayed.

A span without a start time (0) is clamped to now (``missing_time``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter

from toolwatch.detectors.events import ToolCall, ToolListing

CLAMP = "clamp"
REJECT = "reject"
POLICIES = (CLAMP, REJECT)
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class EventTimeRule:
    max_future_skew_s: float = 300.0
    future_policy: str = CLAMP
    allowed_lateness_s: float = 3600.0
    max_age_s: float = 0.0

    def validate(self, key: str = "pipeline") -> None:
        if self.future_policy not in POLICIES:
            raise ValueError(f"{key}.future_policy: {self.future_policy!r} is not one of {', '.join(POLICIES)}")
        if self.max_future_skew_s < 0:
            raise ValueError(f"{key}.max_future_skew_s must not be negative")
        if self.allowed_lateness_s <= 0:
            raise ValueError(f"{key}.allowed_lateness_s must be positive (seconds a span may lag the watermark)")
        if self.max_age_s < 0:
            raise ValueError(f"{key}.max_age_s must not be negative (0 turns the check off)")


_TIME = attrgetter("time_ns")


@dataclass(slots=True)
class Verdict:
    """Which events were kept (possibly with clamped times) and what happened to the rest."""

    calls: list[ToolCall]
    listings: list[ToolListing]
    rejected: Counter[str] = field(default_factory=Counter)
    clamped: Counter[str] = field(default_factory=Counter)
    watermark_ns: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def _limits(rule: EventTimeRule, now_ns: int) -> tuple[int, int, int | None]:
    """Latest acceptable time, allowed lateness, and oldest acceptable time (None: no age limit)."""
    age_limit = now_ns - int(rule.max_age_s * NS) if rule.max_age_s > 0 else None
    return now_ns + int(rule.max_future_skew_s * NS), int(rule.allowed_lateness_s * NS), age_limit


def judge(
    rule: EventTimeRule,
    calls: list[ToolCall],
    listings: list[ToolListing],
    now_ns: int,
    watermark_ns: int,
) -> Verdict:
    """Apply the rule to one request's events; ``watermark_ns`` is the admission watermark so far."""
    future_limit, oldest_ok, age_limit = _limits(rule, now_ns)
    # The common case: every event's time is already acceptable. Two C-speed passes over the
    # times prove it, and then nothing changes but the watermark.
    times = [*map(_TIME, calls), *map(_TIME, listings)]
    if times:
        lo, hi = min(times), max(times)
        if (
            lo > 0
            and hi <= future_limit
            and (age_limit is None or lo >= age_limit)
            and lo >= max(watermark_ns, hi) - oldest_ok  # the running watermark never exceeds this
        ):
            return Verdict(list(calls), list(listings), watermark_ns=max(watermark_ns, hi))
    return judge_each(rule, calls, listings, now_ns, watermark_ns)


def judge_each(
    rule: EventTimeRule,
    calls: list[ToolCall],
    listings: list[ToolListing],
    now_ns: int,
    watermark_ns: int,
) -> Verdict:
    """``judge`` event by event (what it does whenever some event needs clamping or rejecting)."""
    future_limit, oldest_ok, age_limit = _limits(rule, now_ns)
    reject_future = rule.future_policy == REJECT
    verdict = Verdict([], [])
    wm = watermark_ns
    for events, kept in ((calls, verdict.calls), (listings, verdict.listings)):
        for ev in events:
            t = ev.time_ns
            if t <= 0:
                ev.time_ns = t = now_ns
                verdict.clamped["missing_time"] += 1
            elif t > future_limit:
                if reject_future:
                    verdict.rejected["future"] += 1
                    continue
                ev.time_ns = t = now_ns
                verdict.clamped["future"] += 1
            if age_limit is not None and t < age_limit:
                verdict.rejected["too_old"] += 1
                continue
            if wm and t < wm - oldest_ok:
                verdict.rejected["too_late"] += 1
                continue
            if t > wm:
                wm = t
            kept.append(ev)
    verdict.watermark_ns = wm
    return verdict
