"""The statistics a rollout's gates decide with (see ``rollout.py``): the mixture sequential
test, and what it counts in a statistics window."""

from __future__ import annotations

import math

from scipy.special import betaincc, betaincinv, betaln

from serving.observe.stats import LATENCY_BUCKETS_S, Histogram, StatsWindow


def log_evidence(failures: int, successes: int, p0: float) -> float:
    """log of the mixture likelihood ratio for "failure rate above ``p0``" (uniform prior on
    (p0, 1)) against "failure rate ``p0``"."""
    if failures + successes == 0:
        return 0.0
    f, s = failures + 1, successes + 1
    upper = betaincc(f, s, p0)  # the prior's mass above p0, under the likelihood
    if upper <= 0.0:
        return -math.inf
    mixture = float(betaln(f, s)) + math.log(upper) - math.log1p(-p0)
    return mixture - failures * math.log(p0) - successes * math.log1p(-p0)


def rate_upper_bound(failed: int, answered: int, confidence: float) -> float:
    """The one-sided Clopper-Pearson upper bound on a failure rate at ``confidence``: stable's
    rate is held to this, not to its point estimate, so that a stable version that happens to
    have answered its first requests without a failure does not make a canary failing at the
    same rate look worse (1.0 when nothing was answered)."""
    if answered <= 0:
        return 1.0
    if failed >= answered:
        return 1.0
    return float(betaincinv(failed + 1, answered - failed, confidence))


def server_errors(window: StatsWindow) -> tuple[int, int]:
    """(failed on the server's side, answered): 5xx answers, against every answer that was
    not the client's fault (4xx, a client that left)."""
    failed = answered = 0
    for (_, status), count in window.answers.items():
        if status >= 500:
            failed += count
            answered += count
        elif status < 400:
            answered += count
    return failed, answered


def slower_than(window: StatsWindow, bound_s: float) -> int:
    """Successful requests surely slower than ``bound_s``: those in histogram buckets whose
    lower edge is at or above it."""
    slow = 0
    lower = 0.0
    for index, count in enumerate(window.latency):
        if lower >= bound_s:
            slow += count
        if index < len(LATENCY_BUCKETS_S):
            lower = LATENCY_BUCKETS_S[index]
    return slow


def p99(window: StatsWindow) -> float | None:
    return Histogram(list(window.latency)).quantile(0.99)


def rate(failed: int, answered: int) -> float | None:
    return failed / answered if answered else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
