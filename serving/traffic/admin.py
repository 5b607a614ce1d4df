"""The traffic and rollout admin calls a replica accepts: validated here, forwarded to the
controller. Starting a rollout runs the offline accuracy gate first, on this replica's loaded
sessions (through their schedulers, like requests): both versions scored on the model's
evaluation set, the candidate refused unless it beats stable by the margin.
"""

from __future__ import annotations

from typing import Any

from serving.control.channel import ControlChannel, ask
from serving.errors import ConflictError, InvalidInputError
from serving.models.evaluation import EvaluationSet, accuracy, gate, read_evaluation, run_async
from serving.models.registry import Registry
from serving.models.repository import parse_version
from serving.models.version import ModelVersion
from serving.traffic.api import RolloutBody, TrafficBody, parse
from serving.traffic.rollout import Plan
from serving.traffic.routing import TrafficChange

ACTIONS = ("promote", "pause", "resume", "abort")


class TrafficAdmin:
    def __init__(self, registry: Registry, control: ControlChannel) -> None:
        self.registry = registry
        self._control = control

    async def show(self, name: str) -> dict[str, Any]:
        self.registry.entry(name)
        document: dict[str, Any] = await ask("the traffic table", self._control.traffic(name))
        return document

    async def set(self, name: str, document: object) -> dict[str, Any]:
        """Set a model's traffic table by hand (refused while a rollout drives it)."""
        body = parse(TrafficBody, document, "traffic")
        weights = {_version(v, "weights"): w for v, w in body.weights.items()}
        shadow = None if body.shadow is None else _version(body.shadow.version, "shadow")
        fraction = body.shadow.fraction if body.shadow is not None else 0.0
        change = TrafficChange(weights, shadow, fraction, body.atol, body.rtol)
        result: dict[str, Any] = await self._control.set_traffic(name, change)
        return result

    async def start_rollout(self, name: str, document: object) -> dict[str, Any]:
        """Start a progressive rollout of ``name`` to a version; first, unless skipped, the
        offline gate: both versions scored here on the model's evaluation set, and the
        candidate refused unless it beats stable by the margin."""
        body = parse(RolloutBody, document, "rollout")
        entry = self.registry.entry(name)
        canary = _version(body.version, "version")
        self.registry.resolve(name, canary)
        if body.from_version is not None:
            stable = _version(body.from_version, "from")
        else:
            policy = self.registry.traffic.get(name)
            current = policy.stable if policy is not None else None
            if current is None:
                default = entry.default
                current = default.version if default is not None else None
            if current is None or current == canary:
                raise ConflictError(
                    f"version {canary} already takes {name}'s traffic: say which version to "
                    "roll out from ('from')"
                )
            stable = current
        self.registry.resolve(name, stable)
        try:
            plan = Plan(
                model=name,
                stable=stable,
                canary=canary,
                steps=body.step_list(),
                min_requests_per_step=body.min_requests_per_step,
                min_step_s=body.min_step_s,
                shadow_fraction=body.shadow_fraction,
                gates=body.gates.gates(),
                keep_previous=body.keep_previous,
            )
        except ValueError as error:
            raise InvalidInputError(f"rollout: {error}") from None
        evaluation = await self._offline_gate(name, stable, canary, body.margin, body.skip_eval)
        result: dict[str, Any] = await self._control.start_rollout(plan, evaluation)
        return result

    async def _offline_gate(
        self, name: str, stable: int, canary: int, margin: float, skip: bool
    ) -> dict[str, Any]:
        if skip:
            return {"skipped": True, "reason": "skip_eval"}
        versions = [self.registry.resolve(name, v) for v in (stable, canary)]
        try:
            evaluation = read_evaluation(self.registry.repository / name, versions[0].signature)
        except FileNotFoundError:
            return {"skipped": True, "reason": "the model has no evaluation set"}
        except ValueError as error:
            raise InvalidInputError(f"offline gate: {error}") from None
        if evaluation.labels is None:  # a set for drift profiles only
            return {"skipped": True, "reason": f"{evaluation.path.name} has no labels"}
        scores = []
        for version in versions:
            try:
                scores.append(await _score(version, evaluation))
            except ValueError as error:
                raise InvalidInputError(
                    f"offline gate, version {version.version}: {error}"
                ) from None
        passed = gate(scores[0], scores[1], margin)
        shown = f"{name}/{evaluation.path.name}"
        result = {
            "skipped": False,
            "set": shown,
            "rows": evaluation.rows,
            "stable": {"version": str(stable), "accuracy": scores[0]},
            "canary": {"version": str(canary), "accuracy": scores[1]},
            "margin": margin,
            "passed": passed,
        }
        if not passed:
            raise ConflictError(
                f"offline gate: candidate version {canary} scores {scores[1]:.2%} on {shown} "
                f"({evaluation.rows} rows), stable version {stable} scores {scores[0]:.2%}; the "
                f"candidate must beat stable by at least {margin * 100:.1f} points (skip_eval "
                "overrides)"
            )
        return result

    async def rollout(self, name: str) -> dict[str, Any]:
        self.registry.entry(name)
        document: dict[str, Any] = await ask("the rollout", self._control.rollout(name))
        return document

    async def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        """``promote``, ``pause``, ``resume`` or ``abort`` the model's rollout."""
        if action not in ACTIONS:
            raise InvalidInputError(
                f"unknown rollout action '{action}' (promote, pause, resume, abort)"
            )
        document: dict[str, Any] = await self._control.rollout_action(name, action)
        return document


def _version(text: str, field: str) -> int:
    try:
        number = parse_version(text)
    except InvalidInputError as error:
        raise InvalidInputError(f"'{field}': {error.message}") from None
    if number is None:
        raise InvalidInputError(f"'{field}' must name a version")
    return number


async def _score(version: ModelVersion, evaluation: EvaluationSet) -> float:
    """``version``'s accuracy on ``evaluation``, run through its scheduler like requests."""

    async def infer(feed: dict[str, Any], rows: int, names: list[str]) -> list[Any]:
        if not version.enter():
            raise ValueError("the version was unloaded while it was scored")
        try:
            return (await version.scheduler.run(feed, rows, names, None)).outputs
        finally:
            version.leave()

    outputs = await run_async(infer, evaluation, version.signature)
    return accuracy(outputs, evaluation, version.signature)
