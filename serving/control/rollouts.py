"""The controller's traffic tables and rollouts.

Traffic tables are part of the desired state (every replica routes by them); this desk sets
them by hand, and drives each model's :class:`Rollout`: it hands the rollout the merged totals
of every replica (departed ones included) on every report and at least every
``DECIDE_EVERY_S``, and commits the traffic each decision implies. A rollback is one revision
(the canary's weight 0), which replicas apply in milliseconds. After full promotion the old
version is dropped from the model's served versions (the registry drains it), unless the plan
keeps it. Rollouts, rollback counts and dropped versions are saved with every revision, so a
restarted controller resumes each rollout at the same step, weights and salt (its evidence is
counted again once the replicas have reported in).

No Ray here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from serving.errors import ConflictError, InvalidInputError, ModelNotFoundError, NotFoundError
from serving.models.spec import ModelSpec
from serving.observe.stats import ShadowStats, StatsWindow
from serving.traffic.rollout import Evidence, Plan, Rollout
from serving.traffic.routing import TrafficChange, TrafficPolicy, shares

if TYPE_CHECKING:
    from serving.control.channel import ReplicaReport
    from serving.control.controller import Controller

logger = logging.getLogger(__name__)

DECIDE_EVERY_S = 0.25
"""Rollouts are decided at least this often (and on every replica report)."""
Changes = dict[str, TrafficPolicy | None]


class RolloutDesk:
    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._clock = controller.clock
        self.rollouts: dict[str, Rollout] = {}
        self.rollbacks: dict[str, dict[int, int]] = {}
        """By model: canary version → its rollouts that were rolled back."""
        self.retired: dict[str, set[int]] = {}
        """Versions dropped after a promotion, by model: planning leaves them out until the
        model is loaded again by hand."""
        self.pending_drops: dict[str, int] = {}
        """Promoted models whose old version is still to be dropped (saved, so that a restart
        between the promotion and the drop does not leave it loaded for good)."""
        self._evidence = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    def begin(self) -> None:
        """Start deciding (the controller has started)."""
        self._task = asyncio.create_task(self._loop(), name="rollouts")
        for name, version in self.pending_drops.items():
            self._background_drop(name, version)

    async def stop(self) -> None:
        for task in [self._task, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rollouts": {name: r.to_json() for name, r in self.rollouts.items()},
            "rollbacks": {
                name: {str(v): n for v, n in c.items()} for name, c in self.rollbacks.items()
            },
            "retired": {name: sorted(v) for name, v in self.retired.items()},
            "pending_drops": dict(self.pending_drops),
        }

    def restore(self, document: dict[str, Any] | None) -> None:
        if not document:
            return
        now = self._clock.now()
        self.rollouts = {
            name: Rollout.from_json(saved, now) for name, saved in document["rollouts"].items()
        }
        self.rollbacks = {
            name: {int(v): int(n) for v, n in counts.items()}
            for name, counts in document.get("rollbacks", {}).items()
            if isinstance(counts, dict)
        }
        self.retired = {name: set(v) for name, v in document.get("retired", {}).items()}
        self.pending_drops = {name: int(v) for name, v in document.get("pending_drops", {}).items()}
        for name, rollout in self.rollouts.items():
            if rollout.active:
                logger.info("resuming the rollout of %s at step %d", name, rollout.step + 1)

    # -- what the controller asks --------------------------------------------------------------

    def note_report(self) -> None:
        if any(r.active for r in self.rollouts.values()):
            self._evidence.set()

    def without_retired(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` without the versions a promotion dropped (while any other is left)."""
        dropped = self.retired.get(spec.name)
        if not dropped:
            return spec
        kept = tuple(v for v in spec.versions if v.version not in dropped)
        return dataclasses.replace(spec, versions=kept) if kept else spec

    def orphaned(self, models: dict[str, ModelSpec]) -> Changes:
        """Abort the rollouts whose versions are no longer served (unloaded by hand); their
        traffic tables."""
        changes: Changes = {}
        for name, rollout in self.rollouts.items():
            spec = models.get(name)
            plan = rollout.plan
            missing = [
                v for v in (plan.stable, plan.canary) if spec is None or spec.version(v) is None
            ]
            if rollout.active and missing:
                rollout.abort(f"version {missing[0]} of {name} is no longer loaded")
                changes[name] = self._policy(name)
        return changes

    # -- evidence ------------------------------------------------------------------------------

    def evidence(self, plan: Plan, reports: Iterable[ReplicaReport]) -> Evidence:
        """The application's totals for ``plan``'s versions, from every report given."""
        canary, stable, shadow = StatsWindow(), StatsWindow(), ShadowStats()
        keys = (plan.model, plan.canary), (plan.model, plan.stable)
        pair = (plan.model, plan.stable, plan.canary)
        for report in reports:
            window = report.stats.get(keys[0])
            if window is not None:
                canary.add(window)
            window = report.stats.get(keys[1])
            if window is not None:
                stable.add(window)
            compared = report.shadow.get(pair)
            if compared is not None:
                shadow.add(compared)
        return Evidence(canary, stable, shadow)

    def shadow_totals(self, name: str, reports: Iterable[ReplicaReport]) -> list[dict[str, Any]]:
        """Merged shadow comparisons of ``name``, per (primary, shadow) version pair."""
        totals: dict[tuple[int, int], ShadowStats] = {}
        for report in reports:
            for (model, primary, shadow), stats in report.shadow.items():
                if model == name:
                    totals.setdefault((primary, shadow), ShadowStats()).add(stats)
        return [
            {"primary": str(p), "shadow": str(s), **stats.shown()}
            for (p, s), stats in sorted(totals.items())
        ]

    # -- deciding ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._clock.wait(self._evidence, DECIDE_EVERY_S)
            self._evidence.clear()
            try:
                await self.decide()
            except Exception:
                logger.exception("deciding rollouts failed; trying again")

    async def decide(self) -> None:
        """Take every active rollout's decision on the current evidence."""
        controller = self._controller
        for name, rollout in list(self.rollouts.items()):
            if not rollout.active:
                continue
            now = self._clock.now()
            if rollout.rebase_pending:
                if controller.gathered():
                    rollout.rebase(now, self.evidence(rollout.plan, controller.reports()))
                continue
            totals = self.evidence(rollout.plan, controller.reports())
            decision = rollout.decide(now, totals)
            if not rollout.apply(decision, now, totals):
                continue
            if decision.action == "rollback":
                counts = self.rollbacks.setdefault(name, {})
                counts[rollout.plan.canary] = counts.get(rollout.plan.canary, 0) + 1
                logger.warning("rollout of %s rolled back: %s", name, decision.reason)
            else:
                logger.info("rollout of %s: %s", name, decision.reason)
            await controller.commit_traffic({name: self._policy(name)})
            if rollout.status == "promoted":
                self._after_promotion(rollout)

    def _policy(self, name: str) -> TrafficPolicy:
        return self.rollouts[name].traffic(self._rollbacks(name))

    def _rollbacks(self, name: str) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self.rollbacks.get(name, {}).items()))

    def _after_promotion(self, rollout: Rollout) -> None:
        if rollout.plan.keep_previous:
            return
        self.pending_drops[rollout.plan.model] = rollout.plan.stable
        self._background_drop(rollout.plan.model, rollout.plan.stable)

    def _background_drop(self, name: str, version: int) -> None:
        task = asyncio.create_task(self._drop_previous(name, version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drop_previous(self, name: str, version: int) -> None:
        """Once every replica sends all traffic to the canary, stop serving the old version
        (the registry drains its requests before closing it)."""
        controller = self._controller
        await controller.until_applied(controller.state.revision)
        if self.pending_drops.get(name) != version:
            return  # loaded again by hand, or dropped already
        del self.pending_drops[name]  # saved with the revision that drops it
        self.retired.setdefault(name, set()).add(version)
        await controller.drop_version(name, version)
        logger.info("rollout of %s: version %d unloaded", name, version)

    # -- by hand -------------------------------------------------------------------------------

    def _served(self, name: str) -> ModelSpec:
        models = self._controller.state.models
        spec = models.get(name)
        if spec is None:
            raise ModelNotFoundError(model=name, known=sorted(models))
        if spec.error is not None:
            raise ConflictError(f"{name} is not served: {spec.error}")
        return spec

    def _loaded(self, spec: ModelSpec, versions: Iterable[int]) -> None:
        for version in versions:
            if spec.version(version) is None:
                served = ", ".join(str(v.version) for v in spec.versions) or "none"
                raise InvalidInputError(
                    f"version {version} of {spec.name} is not loaded (loaded: {served})"
                )

    def traffic(self, name: str) -> dict[str, Any]:
        spec = self._served(name)
        policy = self._controller.state.traffic.get(name)
        shown = policy.shown() if policy is not None else TrafficPolicy().shown()
        highest = max((v.version for v in spec.versions), default=None)
        return {
            "model": name,
            "versions": [str(v.version) for v in spec.versions],
            "default": None if highest is None else str(highest),
            "table": policy is not None,
            **shown,
            "shadow_statistics": self.shadow_totals(name, self._controller.reports()),
        }

    async def set_traffic(self, name: str, change: TrafficChange) -> dict[str, Any]:
        spec = self._served(name)
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.active:
            raise ConflictError(
                f"the rollout of {name} ({rollout.plan.stable} -> {rollout.plan.canary}) sets "
                "its traffic: promote or abort it first"
            )
        weights, shadow = change.weights, change.shadow
        self._loaded(spec, [*weights, *([shadow] if shadow is not None else [])])
        try:
            split = shares(weights)
        except ValueError as error:
            raise InvalidInputError(f"traffic: {error}") from None
        policy: TrafficPolicy | None = None
        if split or shadow is not None:
            current = self._controller.state.traffic.get(name)
            policy = TrafficPolicy(
                weights=split,
                salt=current.salt if current is not None else secrets.token_hex(8),
                shadow=shadow,
                shadow_fraction=change.fraction if shadow is not None else 0.0,
                atol=change.atol,
                rtol=change.rtol,
                rollbacks=self._rollbacks(name),
            )
        revision = await self._controller.commit_traffic({name: policy})
        await self._controller.until_applied(revision)
        return self.traffic(name)

    async def start(self, plan: Plan, evaluation: dict[str, Any] | None) -> dict[str, Any]:
        name = plan.model
        spec = self._served(name)
        self._loaded(spec, [plan.stable, plan.canary])
        current = self.rollouts.get(name)
        if current is not None and current.active:
            raise ConflictError(
                f"a rollout of {name} ({current.plan.stable} -> {current.plan.canary}) is "
                f"{current.status}: promote or abort it first"
            )
        controller = self._controller
        rollout = Rollout(
            plan,
            salt=secrets.token_hex(8),
            now=self._clock.now(),
            baseline=self.evidence(plan, controller.reports()),
            evaluation=evaluation,
        )
        self.rollouts[name] = rollout
        logger.info("rollout of %s started: %d -> %d", name, plan.stable, plan.canary)
        revision = await controller.commit_traffic({name: self._policy(name)})
        await controller.until_applied(revision)
        return self.status(name)

    def status(self, name: str) -> dict[str, Any]:
        rollout = self.rollouts.get(name)
        if rollout is None:
            raise NotFoundError(f"{name} has no rollout")
        totals = self.evidence(rollout.plan, self._controller.reports())
        return rollout.shown(self._clock.now(), totals, self._rollbacks(name))

    async def act(self, name: str, action: str) -> dict[str, Any]:
        rollout = self.rollouts.get(name)
        if rollout is None:
            raise NotFoundError(f"{name} has no rollout")
        now = self._clock.now()
        try:
            if action == "promote":
                rollout.promote(now, self.evidence(rollout.plan, self._controller.reports()))
            elif action == "pause":
                rollout.pause()
            elif action == "resume":
                rollout.resume(now)
            elif action == "abort":
                rollout.abort()
            else:
                raise InvalidInputError(f"unknown rollout action '{action}'")
        except ValueError as error:
            raise ConflictError(str(error)) from None
        logger.info("rollout of %s: %s by hand", name, action)
        revision = await self._controller.commit_traffic({name: self._policy(name)})
        await self._controller.until_applied(revision)
        if rollout.status == "promoted":
            self._after_promotion(rollout)
        return self.status(name)


def prune(
    traffic: dict[str, TrafficPolicy], models: dict[str, ModelSpec]
) -> dict[str, TrafficPolicy]:
    """Traffic tables without models and versions that are not served; a table left with
    nothing is dropped."""
    kept = {}
    for name, policy in traffic.items():
        spec = models.get(name)
        if spec is None:
            continue
        served = {v.version for v in spec.versions}
        weights = tuple((v, s) for v, s in policy.weights if v in served)
        shadow = policy.shadow if policy.shadow in served else None
        if not weights and shadow is None:
            continue
        if weights != policy.weights or shadow != policy.shadow:
            policy = dataclasses.replace(policy, weights=weights, shadow=shadow)
        kept[name] = policy
    return kept
