"""Progressive rollouts: a state machine under an injected clock, and the gates it decides with.

A rollout moves a model's unversioned traffic from its stable version to a canary through
steps (an optional ``shadow`` step, then live percentages). The controller hands it the merged
statistics of every replica (cumulative totals; the rollout keeps the totals it started from)
at least every 250 ms and on every report, and :meth:`Rollout.decide` answers: advance, hold
(not enough evidence yet), promote (the last step passed) or roll back. Gates, on the evidence
since the rollout started:

- **errors**: a sequential test of the canary's server-side failure rate against stable's (a
  mixture SPRT: the likelihood ratio of "the canary fails at some rate above p0", averaged over
  a uniform prior on that rate, against "it fails at p0", with p0 the larger of a floor and
  ``error_tolerance`` times the upper ``stable_confidence`` bound on stable's rate, the
  tighter of the bounds since the rollout started and since the replicas started: a point
  estimate from stable's first few dozen answers, none failed, would hold a canary failing as
  often as stable to the floor). Its chance of ever rolling back a canary no worse than p0 is
  at most ``error_alpha``, however long it runs (Ville's inequality), and it needs few requests
  for a large regression (2-5 failures in a row, fewer the more stable has answered) and many
  for a small one (hundreds for 0.1 % → 1 %). The shadow's failures are tested the same way.
- **latency**: the canary's p99 must stay under ``max(latency_floor_ms, latency_ratio * stable
  p99)``: once it has ``latency_min_samples`` answers, the same test decides whether more than
  1 % of them are slower than that bound.
- **shadow agreement**: at the end of a shadow step, the share of rows on which the shadow
  agreed with stable must reach ``shadow_min_agreement``.

Manual ``promote`` (all the way, now), ``pause`` (no advancing; the gates still roll back),
``resume`` and ``abort`` (weight 0, like a rollback, by hand).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from serving.observe.stats import Histogram, ShadowStats, StatsWindow
from serving.traffic.gates import (
    log_evidence,
    ms,
    p99,
    rate,
    rate_upper_bound,
    server_errors,
    slower_than,
)
from serving.traffic.routing import TrafficPolicy

Step = int | Literal["shadow"]
Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
ACTIVE: tuple[Status, ...] = ("running", "paused")
DEFAULT_STEPS: tuple[Step, ...] = (5, 25, 50, 100)
HISTORY_KEPT = 50


@dataclass(frozen=True)
class Gates:
    error_alpha: float = 0.001
    error_floor: float = 0.001
    """p0 is never below this failure rate (a stable version that never fails does not make
    one failure of the canary a regression)."""
    error_tolerance: float = 1.5
    """The canary may fail this many times as often as stable before it counts as worse."""
    stable_confidence: float = 0.99
    """Stable's failure rate is taken as its upper confidence bound at this level."""
    latency_floor_ms: float = 100.0
    latency_ratio: float = 1.2
    latency_min_samples: int = 20
    shadow_min_agreement: float = 0.9
    """Different models disagree on some inputs by design (a better one disagrees exactly
    where it is better); far below this is a broken candidate."""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Gates:
        return cls(**{k: v for k, v in document.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Plan:
    model: str
    stable: int
    canary: int
    steps: tuple[Step, ...] = DEFAULT_STEPS
    min_requests_per_step: int = 100
    min_step_s: float = 30.0
    shadow_fraction: float = 0.25
    gates: Gates = field(default_factory=Gates)
    keep_previous: bool = False
    """After full promotion, keep the old version loaded (else it drains and is unloaded)."""

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a rollout needs at least one step")
        for index, step in enumerate(self.steps):
            if step == "shadow":
                if index != 0:
                    raise ValueError("the shadow step can only come first")
            elif isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= 100:
                raise ValueError(f"steps are 'shadow' or percentages 1-100, got {step!r}")
        live = [s for s in self.steps if s != "shadow"]
        if live != sorted(live) or len(set(live)) != len(live):
            raise ValueError("a rollout's percentages must rise")
        if live and live[-1] != 100:
            raise ValueError("a rollout's last step must be 100")
        if not live:
            raise ValueError("a rollout needs a live step after its shadow step (end at 100)")
        if self.stable == self.canary:
            raise ValueError("the canary must be another version than stable")
        if not 0 < self.shadow_fraction <= 1:
            raise ValueError("shadow_fraction must be in (0, 1]")
        if self.min_requests_per_step < 0 or self.min_step_s < 0:
            raise ValueError("min_requests_per_step and min_step_s must not be negative")

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["steps"] = list(self.steps)
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Plan:
        fields = dict(document)
        fields["steps"] = tuple(fields["steps"])
        fields["gates"] = Gates.from_json(fields.get("gates", {}))
        return cls(**fields)


@dataclass
class Evidence:
    """Cumulative totals of the application (every replica, departed ones included)."""

    canary: StatsWindow = field(default_factory=StatsWindow)
    stable: StatsWindow = field(default_factory=StatsWindow)
    shadow: ShadowStats = field(default_factory=ShadowStats)

    def minus(self, earlier: Evidence) -> Evidence:
        return Evidence(
            self.canary.minus(earlier.canary),
            self.stable.minus(earlier.stable),
            self.shadow.minus(earlier.shadow),
        )

    def copy(self) -> Evidence:
        return Evidence(self.canary.copy(), self.stable.copy(), self.shadow.copy())

    def to_json(self) -> dict[str, Any]:
        return {
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json(),
            "shadow": self.shadow.to_json(),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Evidence:
        return cls(
            StatsWindow.from_json(document["canary"]),
            StatsWindow.from_json(document["stable"]),
            ShadowStats.from_json(document["shadow"]),
        )


Action = Literal["advance", "hold", "promote", "rollback"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


# -- the state machine ---------------------------------------------------------------------------


class Rollout:
    def __init__(
        self,
        plan: Plan,
        *,
        salt: str,
        now: float,
        baseline: Evidence,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        self.plan = plan
        self.salt = salt
        self.status: Status = "running"
        self.step = 0
        self.step_started = now
        self.baseline = baseline.copy()
        self.step_baseline = baseline.copy()
        self.evaluation = evaluation
        """The offline accuracy gate's result (or that it was skipped)."""
        self.decision: Decision | None = None
        self.outcome: dict[str, Any] | None = None
        """Why it ended: the decision (reason, evidence) that promoted or rolled it back."""
        self.history: list[dict[str, Any]] = []
        self.rebase_pending = False
        """Set when restored by a restarted controller: the totals it will see next are not
        comparable with its baselines until the replicas have reported in."""
        self._note("started", f"{plan.stable} -> {plan.canary}, steps {list(plan.steps)}")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def current(self) -> Step:
        return self.plan.steps[self.step]

    def _note(self, event: str, detail: str) -> None:
        self.history.append({"at": time.time(), "event": event, "detail": detail})
        del self.history[:-HISTORY_KEPT]

    # -- what it serves ------------------------------------------------------------------------

    def traffic(self, rollbacks: tuple[tuple[int, int], ...] = ()) -> TrafficPolicy:
        """The model's traffic table in this state."""
        plan = self.plan
        canary, stable = plan.canary, plan.stable
        shadow, fraction = None, 0.0
        if self.status == "promoted":
            weights: tuple[tuple[int, float], ...] = ((canary, 1.0),)
        elif not self.active:
            weights = ((canary, 0.0), (stable, 1.0))
        elif self.current == "shadow":
            weights = ((stable, 1.0),)
            shadow, fraction = canary, plan.shadow_fraction
        else:
            share = int(self.current) / 100
            weights = ((canary, share), (stable, 1.0 - share))
        return TrafficPolicy(
            weights=weights,
            salt=self.salt,
            shadow=shadow,
            shadow_fraction=fraction,
            watched=(canary,) if self.active else (),
            rollout=self.status,
            rollbacks=rollbacks,
        )

    # -- deciding ------------------------------------------------------------------------------

    def decide(self, now: float, totals: Evidence) -> Decision:
        """What the evidence says now (nothing changes until :meth:`apply`)."""
        if not self.active:
            return Decision("hold", f"the rollout has ended ({self.status})")
        if self.rebase_pending:
            return Decision("hold", "waiting for the replicas to report to a restarted controller")
        plan, gates = self.plan, self.plan.gates
        since = totals.minus(self.baseline)
        in_step = totals.minus(self.step_baseline)
        threshold = math.log(1 / gates.error_alpha)
        stable, reference = self._reference(since, totals)
        # Stable's failure rate: the tighter of its upper bounds since the rollout started and
        # since the replicas started (early in a rollout, the longer history says more).
        stable_bound, stable_failed, stable_answered = min(
            (rate_upper_bound(failed, answered, gates.stable_confidence), failed, answered)
            for failed, answered in map(server_errors, (since.stable, totals.stable))
        )
        p0 = min(0.5, max(gates.error_floor, gates.error_tolerance * stable_bound))
        failed, answered = server_errors(since.canary)
        evidence: dict[str, Any] = {
            "canary": {
                "requests": answered,
                "errors": failed,
                "p99_ms": ms(p99(since.canary)),
            },
            "stable": {
                "requests": stable_answered,
                "errors": stable_failed,
                "error_rate_bound": round(stable_bound, 6),
                "p99_ms": ms(p99(stable)),
                "p99_counted": reference,
            },
            "error_p0": p0,
            "threshold": round(threshold, 3),
        }
        score = log_evidence(failed, answered - failed, p0)
        evidence["error_evidence"] = round(score, 3)
        if score >= threshold:
            return Decision(
                "rollback",
                f"errors: version {plan.canary} failed {failed} of {answered} requests, against "
                f"{stable_failed} of {stable_answered} for stable version {plan.stable}",
                evidence,
            )
        shadow = since.shadow
        if shadow.pairs + shadow.errors:
            evidence["shadow"] = shadow.shown()
            shadow_score = log_evidence(shadow.errors, shadow.pairs, p0)
            if shadow_score >= threshold:
                return Decision(
                    "rollback",
                    f"shadow errors: version {plan.canary} failed {shadow.errors} of "
                    f"{shadow.errors + shadow.pairs} mirrored requests",
                    evidence,
                )
        latency = self._latency(since.canary, stable, evidence)
        if latency is not None:
            return latency
        if self.status == "paused":
            return Decision("hold", "paused", evidence)
        step = self.current
        have = in_step.shadow.pairs if step == "shadow" else server_errors(in_step.canary)[1]
        elapsed = now - self.step_started
        label = f"step {self.step + 1} of {len(plan.steps)} ({_step_name(step)})"
        evidence["step"] = {"requests": have, "seconds": round(elapsed, 3)}
        if have < plan.min_requests_per_step:
            return Decision(
                "hold", f"{label}: {have} of {plan.min_requests_per_step} requests", evidence
            )
        if elapsed < plan.min_step_s:
            return Decision("hold", f"{label}: {elapsed:.1f} of {plan.min_step_s:g} s", evidence)
        if step == "shadow":
            agreement = in_step.shadow.agreement
            if agreement is not None and agreement < gates.shadow_min_agreement:
                return Decision(
                    "rollback",
                    f"shadow agreement: version {plan.canary} agreed with version "
                    f"{plan.stable} on {agreement:.1%} of rows, below "
                    f"{gates.shadow_min_agreement:.1%}",
                    evidence,
                )
        if self.step == len(plan.steps) - 1:
            return Decision("promote", f"{label} passed: every step passed", evidence)
        return Decision("advance", f"{label} passed", evidence)

    def _reference(self, since: Evidence, totals: Evidence) -> tuple[StatsWindow, str]:
        """Stable's statistics to hold the canary to: since the rollout started, or, where
        stable has answered too few requests since (a step at 100 %, a rollout resumed by a
        restarted controller), its totals since the replicas started (else every healthy
        canary would meet the floors: a 0.1 % error rate, the latency floor)."""
        if sum(since.stable.latency) >= self.plan.gates.latency_min_samples:
            return since.stable, "since the rollout started"
        return totals.stable, "since the replicas started"

    def _latency(
        self, canary: StatsWindow, stable: StatsWindow, evidence: dict[str, Any]
    ) -> Decision | None:
        gates = self.plan.gates
        answered = sum(canary.latency)
        if answered < gates.latency_min_samples:
            return None
        stable_p99 = p99(stable) if sum(stable.latency) >= gates.latency_min_samples else None
        bound = max(gates.latency_floor_ms / 1000, gates.latency_ratio * (stable_p99 or 0.0))
        slow = slower_than(canary, bound)
        score = log_evidence(slow, answered - slow, 0.01)
        evidence["latency"] = {
            "bound_ms": ms(bound),
            "slower": slow,
            "of": answered,
            "evidence": round(score, 3),
        }
        if score < math.log(1 / gates.error_alpha):
            return None
        return Decision(
            "rollback",
            f"latency: {slow} of {answered} requests to version {self.plan.canary} took more "
            f"than {bound * 1000:.1f} ms (p99 {ms(p99(canary))} ms; stable p99 "
            f"{ms(stable_p99)} ms)",
            evidence,
        )

    def apply(self, decision: Decision, now: float, totals: Evidence) -> bool:
        """Take ``decision``; returns whether the traffic table changed."""
        self.decision = decision
        if decision.action == "hold":
            return False
        if decision.action == "advance":
            self._enter(self.step + 1, now, totals)
            self._note("advanced", decision.reason)
        elif decision.action == "promote":
            self.status = "promoted"
            self.outcome = {"reason": decision.reason, "evidence": decision.evidence}
            self._note("promoted", decision.reason)
        else:
            self.status = "rolled_back"
            self.outcome = {"reason": decision.reason, "evidence": decision.evidence}
            self._note("rolled back", decision.reason)
        return True

    def _enter(self, step: int, now: float, totals: Evidence) -> None:
        self.step = step
        self.step_started = now
        self.step_baseline = totals.copy()

    # -- by hand -------------------------------------------------------------------------------

    def promote(self, now: float, totals: Evidence) -> None:
        """All the way, now: the last step's traffic, and done."""
        self._require_active("promote")
        self._enter(len(self.plan.steps) - 1, now, totals)
        self.status = "promoted"
        self.outcome = {"reason": "promoted by hand", "evidence": {}}
        self.decision = Decision("promote", "promoted by hand")
        self._note("promoted", "by hand")

    def pause(self) -> None:
        self._require_active("pause")
        self.status = "paused"
        self._note("paused", "by hand")

    def resume(self, now: float) -> None:
        if self.status != "paused":
            raise ValueError(f"the rollout is {self.status}, not paused")
        self.status = "running"
        self.step_started = now  # the step's time counts again from here
        self._note("resumed", "by hand")

    def abort(self, reason: str = "aborted by hand") -> None:
        self._require_active("abort")
        self.status = "aborted"
        self.outcome = {"reason": reason, "evidence": {}}
        self.decision = Decision("rollback", reason)
        self._note("aborted", reason)

    def _require_active(self, what: str) -> None:
        if not self.active:
            raise ValueError(f"cannot {what}: the rollout has ended ({self.status})")

    def rebase(self, now: float, totals: Evidence) -> None:
        """Count the evidence again from ``totals`` (a restarted controller whose replicas have
        reported in); the step and its weights stay."""
        self.baseline = totals.copy()
        self.step_baseline = totals.copy()
        self.step_started = now
        self.rebase_pending = False
        self._note("resumed by a restarted controller", "evidence counted again from here")

    # -- persisting and showing ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "salt": self.salt,
            "status": self.status,
            "step": self.step,
            "baseline": self.baseline.to_json(),
            "step_baseline": self.step_baseline.to_json(),
            "evaluation": self.evaluation,
            "decision": None if self.decision is None else asdict(self.decision),
            "outcome": self.outcome,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any], now: float) -> Rollout:
        rollout = cls(
            Plan.from_json(document["plan"]),
            salt=document["salt"],
            now=now,
            baseline=Evidence.from_json(document["baseline"]),
            evaluation=document.get("evaluation"),
        )
        rollout.status = document["status"]
        rollout.step = int(document["step"])
        rollout.step_baseline = Evidence.from_json(document["step_baseline"])
        decision = document.get("decision")
        rollout.decision = None if decision is None else Decision(**decision)
        rollout.outcome = document.get("outcome")
        rollout.history = list(document.get("history", ()))
        rollout.rebase_pending = rollout.active
        return rollout

    def shown(
        self, now: float, totals: Evidence, rollbacks: tuple[tuple[int, int], ...] = ()
    ) -> dict[str, Any]:
        """The status document: plan, step, weights, per-version statistics since the start,
        the last decision and why, and a plain verdict."""
        plan = self.plan
        # A restarted controller's totals are not comparable with the saved baseline until
        # its replicas have reported in: nothing is shown as counted until then.
        since = Evidence() if self.rebase_pending else totals.minus(self.baseline)
        traffic = self.traffic(rollbacks).shown()
        versions = {}
        for role, version, window in (
            ("stable", plan.stable, since.stable),
            ("canary", plan.canary, since.canary),
        ):
            failed, answered = server_errors(window)
            versions[role] = {
                "version": str(version),
                "requests": answered,
                "errors": failed,
                "error_rate": rate(failed, answered),
                "p50_ms": ms(Histogram(list(window.latency)).quantile(0.5)),
                "p99_ms": ms(p99(window)),
            }
        healthy = self.status != "rolled_back" and self.status != "aborted"
        return {
            "model": plan.model,
            "stable": str(plan.stable),
            "canary": str(plan.canary),
            "status": self.status,
            "healthy": healthy,
            "verdict": "healthy" if healthy else "unhealthy",
            "step": self.step + 1,
            "steps": [_step_name(s) for s in plan.steps],
            "current_step": _step_name(self.current),
            "step_seconds": round(now - self.step_started, 3),
            "weights": traffic["weights"],
            "shadow": traffic["shadow"],
            "salt": self.salt,
            "plan": plan.to_json(),
            "versions": versions,
            "shadow_statistics": since.shadow.shown(),
            "decision": None if self.decision is None else asdict(self.decision),
            "outcome": self.outcome,
            "evaluation": self.evaluation,
            "history": self.history,
            "counting": not self.rebase_pending,
        }


def _step_name(step: Step) -> str:
    return "shadow" if step == "shadow" else f"{step}%"
