"""A model's traffic table, and which version serves a request: pure functions.

A :class:`TrafficPolicy` splits the requests that name no version over weighted versions. A
request with a routing key goes where its key's bucket falls: ``u = hash64(salt ‖ key) / 2^64``
against the versions' cumulative shares, taken in the table's order (a rollout puts its canary
first, so the canary takes ``u < w``: raising ``w`` only moves keys from stable to canary, and a
new rollout draws a new salt so that it reshuffles them). A request without a key draws ``u`` at
random. A shadow version gets a copy of a fraction of the requests; its answers are compared,
never returned (``shadow.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

ROUTING_KEY = "x-routing-key"
"""The HTTP header and gRPC metadata key that carries a request's routing key."""
ROUTING_PARAMETER = "routing_key"
"""The v2 request parameter that carries it when the header does not."""
VERSION_HEADER = "x-model-version"
"""The HTTP response header that says which version answered."""
_SCALE = float(2**64)


@dataclass(frozen=True)
class TrafficPolicy:
    weights: tuple[tuple[int, float], ...] = ()
    """(version, share of the requests that name no version), in bucket order; shares add up
    to 1. A version with share 0 stays listed (a rolled-back canary)."""
    salt: str = ""
    shadow: int | None = None
    """A version that gets copies of requests; its answers are compared, never returned."""
    shadow_fraction: float = 0.0
    atol: float = 1e-4
    rtol: float = 1e-3
    """What counts as the same answer for float outputs: ``|a - b| <= atol + rtol * |a|``."""
    watched: tuple[int, ...] = ()
    """Versions whose failures a replica reports at once (a rollout's canary and shadow), so
    that a rollback need not wait for the next regular report."""
    rollout: str = ""
    """The state of the model's rollout, if it has one (for metrics)."""
    rollbacks: tuple[tuple[int, int], ...] = ()
    """(canary version, times its rollouts were rolled back) so far, for metrics."""

    @property
    def stable(self) -> int | None:
        """The version with the largest share (the last one listed of those tied)."""
        best: tuple[float, int] | None = None
        for index, (_, share) in enumerate(self.weights):
            if best is None or share >= best[0]:
                best = (share, index)
        return None if best is None else self.weights[best[1]][0]

    def share(self, version: int) -> float:
        return next((s for v, s in self.weights if v == version), 0.0)

    def versions(self) -> set[int]:
        listed = {v for v, _ in self.weights}
        return listed | ({self.shadow} if self.shadow is not None else set())

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": [[v, s] for v, s in self.weights],
            "salt": self.salt,
            "shadow": self.shadow,
            "shadow_fraction": self.shadow_fraction,
            "atol": self.atol,
            "rtol": self.rtol,
            "watched": list(self.watched),
            "rollout": self.rollout,
            "rollbacks": [list(pair) for pair in self.rollbacks],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TrafficPolicy:
        return cls(
            weights=tuple((int(v), float(s)) for v, s in document["weights"]),
            salt=str(document["salt"]),
            shadow=None if document.get("shadow") is None else int(document["shadow"]),
            shadow_fraction=float(document.get("shadow_fraction", 0.0)),
            atol=float(document.get("atol", 1e-4)),
            rtol=float(document.get("rtol", 1e-3)),
            watched=tuple(int(v) for v in document.get("watched", ())),
            rollout=str(document.get("rollout", "")),
            rollbacks=tuple((int(v), int(n)) for v, n in document.get("rollbacks", ())),
        )

    def shown(self) -> dict[str, Any]:
        """As the traffic endpoint shows it: percentages by version."""
        return {
            "weights": {str(v): round(s * 100, 6) for v, s in self.weights},
            "salt": self.salt,
            "shadow": None
            if self.shadow is None
            else {"version": str(self.shadow), "fraction": self.shadow_fraction},
            "tolerance": {"atol": self.atol, "rtol": self.rtol},
            "rollout": self.rollout or None,
        }


@dataclass(frozen=True)
class TrafficChange:
    """A traffic table as set by hand: weights by version (any positive numbers), an optional
    shadow with the fraction it gets, and the tolerance its comparisons use."""

    weights: dict[int, float]
    shadow: int | None = None
    fraction: float = 0.0
    atol: float = 1e-4
    rtol: float = 1e-3


def bucket(salt: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) under ``salt``: the first 64 bits of BLAKE2b over both."""
    digest = hashlib.blake2b(
        salt.encode() + b"\x00" + key.encode(), digest_size=8, usedforsecurity=False
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose(policy: TrafficPolicy, key: str | None, draw: float) -> int | None:
    """The version whose range holds the key's bucket (or ``draw``, a uniform number in [0, 1),
    for a request without a key); None when the table lists no version."""
    u = bucket(policy.salt, key) if key is not None else draw
    last = None
    cumulative = 0.0
    for version, share in policy.weights:
        if share <= 0.0:
            continue
        cumulative += share
        last = version
        if u < cumulative:
            return version
    return last  # rounding: shares that add up to just under 1


def fallback(policy: TrafficPolicy, ready: Collection[int]) -> int | None:
    """Where a request goes when its chosen version does not serve here (still loading): the
    ready version with the largest share; else the highest ready version the table does not
    keep from live traffic (a version at 0 %, such as a rolled-back canary, or the shadow);
    else None."""
    ranked = sorted(policy.weights, key=lambda item: item[1], reverse=True)
    found = next((v for v, s in ranked if s > 0.0 and v in ready), None)
    if found is not None:
        return found
    kept_out = {v for v, s in policy.weights if s <= 0.0} | {policy.shadow}
    return max((v for v in ready if v not in kept_out), default=None)


def shares(weights: Mapping[int, float]) -> tuple[tuple[int, float], ...]:
    """Weights as set by hand (any positive numbers, e.g. percentages) as shares adding up to
    1, newest version first (so a newer version's keys are the ones below its share)."""
    if not all(math.isfinite(w) for w in weights.values()):
        raise ValueError("traffic weights must be finite numbers")
    if any(w < 0 for w in weights.values()):
        raise ValueError("traffic weights must not be negative")
    total = sum(weights.values())
    if weights and total <= 0:
        raise ValueError("traffic weights must add up to more than 0")
    return tuple((v, weights[v] / total) for v in sorted(weights, reverse=True))
