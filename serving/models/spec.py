"""What should be served: the desired state the controller holds and every replica applies.

Plain frozen values, so one revision is the same object wherever it travels (pickled by Ray to
the replicas, written as JSON to the state store). A replica turns a :class:`DesiredState` into
loaded sessions (``registry.py``); the controller decides it (``serving/control``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.config import ModelConfig
from serving.traffic.routing import TrafficPolicy


@dataclass(frozen=True)
class VersionSpec:
    version: int
    sha256: str
    """Of the model file as the controller found it; a replica that reads other bytes refuses
    to serve them (the file changed under it)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: ModelConfig
    """The effective config: the model's own file, or the override it was loaded with."""
    versions: tuple[VersionSpec, ...] = ()
    unavailable: tuple[tuple[int, str], ...] = ()
    """Versions the policy chose that cannot be served, with the reason."""
    error: str | None = None
    """Why the model as a whole cannot be served (bad config, no versions)."""
    override: str | None = None
    """The config text the model was loaded with (Triton's JSON), kept so that a restart
    loads it the same way."""

    def version(self, number: int) -> VersionSpec | None:
        for spec in self.versions:
            if spec.version == number:
                return spec
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.model_dump(mode="json"),
            "versions": [[v.version, v.sha256] for v in self.versions],
            "unavailable": [list(item) for item in self.unavailable],
            "error": self.error,
            "override": self.override,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ModelSpec:
        return cls(
            name=document["name"],
            config=ModelConfig.model_validate(document["config"]),
            versions=tuple(VersionSpec(int(v), str(s)) for v, s in document["versions"]),
            unavailable=tuple((int(v), str(r)) for v, r in document["unavailable"]),
            error=document.get("error"),
            override=document.get("override"),
        )


@dataclass(frozen=True)
class DesiredState:
    """One revision of what the application serves. Revisions only grow."""

    revision: int = 0
    models: dict[str, ModelSpec] = field(default_factory=dict)
    unloaded: frozenset[str] = frozenset()
    """Models unloaded through model control (the repository index says so)."""
    traffic: dict[str, TrafficPolicy] = field(default_factory=dict)
    """Per model with a traffic table: how requests that name no version split (else they go
    to its highest ready version)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "models": [spec.to_json() for spec in self.models.values()],
            "unloaded": sorted(self.unloaded),
            "traffic": {name: policy.to_json() for name, policy in self.traffic.items()},
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> DesiredState:
        models = [ModelSpec.from_json(m) for m in document["models"]]
        return cls(
            revision=int(document["revision"]),
            models={m.name: m for m in models},
            unloaded=frozenset(document.get("unloaded", ())),
            traffic={
                name: TrafficPolicy.from_json(policy)
                for name, policy in document.get("traffic", {}).items()
            },
        )
