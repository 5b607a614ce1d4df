"""The bodies of the traffic and rollout admin endpoints, validated once (pydantic)."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import describe_errors
from serving.errors import InvalidInputError
from serving.traffic.rollout import DEFAULT_STEPS, Gates, Step

T = TypeVar("T", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ShadowBody(_Body):
    version: str
    fraction: float = Field(0.25, gt=0, le=1)


class TrafficBody(_Body):
    """``POST /v2/models/{m}/traffic``: weights by version (any positive numbers, shown as
    percentages), an optional shadow, the tolerance shadow comparisons use. No weights and no
    shadow clears the table (requests go to the highest ready version again)."""

    weights: dict[str, float] = Field(default_factory=dict)
    shadow: ShadowBody | None = None
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)


class GatesBody(_Body):
    error_alpha: float = Field(Gates.error_alpha, gt=0, lt=1)
    error_floor: float = Field(Gates.error_floor, gt=0, lt=1)
    error_tolerance: float = Field(Gates.error_tolerance, ge=1)
    stable_confidence: float = Field(Gates.stable_confidence, ge=0.5, lt=1)
    latency_floor_ms: float = Field(Gates.latency_floor_ms, ge=0)
    latency_ratio: float = Field(Gates.latency_ratio, ge=1)
    latency_min_samples: int = Field(Gates.latency_min_samples, ge=1)
    shadow_min_agreement: float = Field(Gates.shadow_min_agreement, ge=0, le=1)

    def gates(self) -> Gates:
        return Gates(**self.model_dump())


class RolloutBody(_Body):
    """``POST /v2/models/{m}/rollout``."""

    version: str
    from_version: str | None = Field(None, alias="from")
    """The stable version (default: the one taking most of the model's traffic)."""
    steps: list[int | Literal["shadow"]] = Field(default_factory=lambda: list(DEFAULT_STEPS))
    min_requests_per_step: int = Field(100, ge=0)
    min_step_s: float = Field(30.0, ge=0)
    shadow_fraction: float = Field(0.25, gt=0, le=1)
    gates: GatesBody = Field(default_factory=GatesBody)
    skip_eval: bool = False
    margin: float = Field(0.02, ge=-1, le=1)
    """Accuracy points (as a fraction) the candidate must gain on the evaluation set."""
    keep_previous: bool = False

    def step_list(self) -> tuple[Step, ...]:
        return tuple(self.steps)


def parse(kind: type[T], document: object, what: str) -> T:
    """``document`` as ``kind``, or a 400 naming each problem."""
    try:
        return kind.model_validate(document)
    except ValidationError as error:
        raise InvalidInputError(f"{what}: {describe_errors(error, top='body')}") from None
