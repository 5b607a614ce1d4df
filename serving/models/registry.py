"""The model versions a replica serves, and their lifecycle.

The registry changes only by applying a :class:`DesiredState`: versions it lacks are loaded (off
the event loop) and warmed up while the old ones keep serving, then swapped in; versions that
leave are retired and drained (every request inside is answered) before their sessions close.
A config change that keeps the session (batching, labels, policy) swaps in a new scheduler over
the same session. A version that fails to load here keeps its previous copy serving, if there
is one; the failure is recorded for the controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, KeysView, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.clock import Clock
from serving.config import ModelConfig
from serving.errors import ModelNotFoundError, ModelNotReadyError
from serving.models.execution import Workers
from serving.models.loader import Loaded, LoadError, RuntimeFactory, load_version, signed
from serving.models.spec import DesiredState, ModelSpec, VersionSpec
from serving.models.version import ModelVersion
from serving.observe.stats import StatsBook
from serving.traffic.routing import TrafficPolicy, choose, fallback

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0
"""How long a retired version waits for the requests inside it before its session closes."""


@dataclass(frozen=True)
class ModelEntry:
    """A model as requests see it: its ready versions and why the others cannot serve."""

    name: str
    config: ModelConfig
    versions: Mapping[int, ModelVersion] = field(default_factory=dict)
    unavailable: Mapping[int, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def default(self) -> ModelVersion | None:
        """The highest ready version."""
        return self.versions[max(self.versions)] if self.versions else None

    def not_ready_reason(self) -> str:
        if self.error:
            return self.error
        reasons = [f"version {v}: {r}" for v, r in sorted(self.unavailable.items())]
        return "; ".join(reasons) or "no version is loaded"

    def known(self) -> list[int]:
        return sorted({*self.versions, *self.unavailable})


class Registry:
    def __init__(
        self,
        repository: Path,
        factory: RuntimeFactory,
        *,
        workers: Workers,
        clock: Clock,
        instances: Callable[[ModelConfig], int] = lambda config: config.instance_count or 1,
        book: StatsBook | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self._repository = repository
        self._factory = factory
        self._workers = workers
        self._clock = clock
        self._instances = instances
        """A model's concurrent executions here (its sessions' threads follow from it)."""
        self.book = book or StatsBook()
        self._drain_timeout_s = drain_timeout_s
        self._models: dict[str, ModelEntry] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self.revision = 0
        """The revision of the desired state last applied in full."""
        self.traffic: dict[str, TrafficPolicy] = {}
        """Traffic tables by model, of the newest state received (see :meth:`route_by`)."""
        self.routed_revision = 0
        self.failures: dict[tuple[str, int], tuple[str, str]] = {}
        """(model, version) → (sha256, reason): what this replica failed to load of the
        applied state."""

    # -- what requests see ---------------------------------------------------------------------

    @property
    def repository(self) -> Path:
        return self._repository

    @property
    def names(self) -> KeysView[str]:
        """The models this replica knows (loaded or not)."""
        return self._models.keys()

    @property
    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(model=name, known=sorted(self._models)) from None

    def served(self) -> list[ModelVersion]:
        """Every ready version."""
        return [v for e in self.entries for v in e.versions.values()]

    def gauges(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per ready version: requests inside it (queued or running), and queued."""
        return {(v.model, v.version): (v.in_flight, v.scheduler.queued) for v in self.served()}

    def resolve(self, name: str, version: int | None) -> ModelVersion:
        """The version to serve: the one asked for, else the model's highest ready version."""
        entry = self.entry(name)
        if version is None:
            default = entry.default
            if default is None:
                raise ModelNotReadyError(model=name, version=None, reason=entry.not_ready_reason())
            return default
        found = entry.versions.get(version)
        if found is not None:
            return found
        if version in entry.unavailable:
            raise ModelNotReadyError(
                model=name, version=str(version), reason=entry.unavailable[version]
            )
        raise ModelNotFoundError(
            model=name, version=str(version), known=[str(v) for v in entry.known()]
        )

    def split(self, name: str, policy: TrafficPolicy, key: str | None, draw: float) -> ModelVersion:
        """The version ``policy`` sends a request to (by its routing ``key``, else by ``draw``);
        a chosen version that does not serve here (yet) yields to another (:func:`fallback`),
        and where the table leaves none, to the model's highest ready version."""
        entry = self.entry(name)
        chosen = choose(policy, key, draw)
        found = entry.versions.get(chosen) if chosen is not None else None
        if found is None:
            backup = fallback(policy, entry.versions)
            found = entry.versions.get(backup) if backup is not None else None
        return found if found is not None else self.resolve(name, None)

    # -- changes -------------------------------------------------------------------------------

    async def apply(self, state: DesiredState) -> None:
        """Make this replica serve ``state``; returns once every version is loaded (or has
        failed) and swapped in. Retired versions drain in the background."""
        for name in [n for n in self._models if n not in state.models]:
            entry = self._models.pop(name)
            self._retire(entry.versions.values())
        self.failures = {k: v for k, v in self.failures.items() if k[0] in state.models}
        for spec in state.models.values():
            await self._apply_model(spec)
        self.route_by(state)
        self.revision = state.revision

    def route_by(self, state: DesiredState) -> None:
        """Route by ``state``'s traffic tables from now on, unless newer ones are in use. The
        follower calls this as soon as a revision arrives, before its versions are in place
        (loading another model can take a minute; a rollback must not wait for it): a table
        naming a version that does not serve here yet yields to the ready version with the
        largest share (:func:`fallback`)."""
        if state.revision >= self.routed_revision:
            self.traffic = dict(state.traffic)
            self.routed_revision = state.revision

    async def _apply_model(self, spec: ModelSpec) -> None:
        current = self._models.get(spec.name)
        serving: dict[int, ModelVersion] = {}
        unavailable = dict(spec.unavailable)
        for wanted in spec.versions:
            key = (spec.name, wanted.version)
            old = current.versions.get(wanted.version) if current else None
            if old is not None and old.sha256 == wanted.sha256 and old.config == spec.config:
                serving[wanted.version] = old
                continue
            try:
                fresh = await self._build(spec, wanted, old)
            except LoadError as error:
                logger.error("%s version %s: %s", spec.name, wanted.version, error.reason)
                self.failures[key] = (wanted.sha256, error.reason)
                if old is not None:
                    serving[wanted.version] = old  # the previous copy keeps serving
                else:
                    unavailable[wanted.version] = error.reason
                continue
            self.failures.pop(key, None)
            serving[wanted.version] = fresh
        if spec.error:
            logger.error("%s is UNAVAILABLE: %s", spec.name, spec.error)
        self._models[spec.name] = ModelEntry(
            spec.name, spec.config, serving, unavailable, spec.error
        )
        if current is not None:
            kept = {id(v) for v in serving.values()}
            self._retire(v for v in current.versions.values() if id(v) not in kept)

    async def _build(
        self, spec: ModelSpec, wanted: VersionSpec, old: ModelVersion | None
    ) -> ModelVersion:
        shown = f"{spec.name}/{wanted.version}/{spec.config.model_filename}"
        reused = (
            old
            if old is not None
            and old.sha256 == wanted.sha256
            and self._same_session(old.config, spec.config)
            else None
        )
        if reused is not None:
            runtime = reused.runtime
            loaded = Loaded(runtime, signed(spec.config, runtime, shown), reused.sha256)
        else:
            began = self._clock.now()
            loaded = await asyncio.to_thread(
                load_version,
                self._repository / shown,
                spec.config,
                self._factory,
                shown=shown,
                expected_sha256=wanted.sha256,
            )
            self.book.record_load(spec.name, self._clock.now() - began)
        fresh = ModelVersion(
            spec.name,
            wanted.version,
            spec.config,
            loaded,
            workers=self._workers,
            clock=self._clock,
            stats=self.book.window(spec.name, wanted.version),
            drift=self.book.sampler(
                spec.name, wanted.version, batched=loaded.signature.max_batch_size > 0
            ),
            execution=reused.execution if reused is not None else None,
            instances=self._instances(spec.config),
        )
        if reused is not None:
            reused.owns_runtime = False  # the session is the new version's now
        return fresh

    def _same_session(self, a: ModelConfig, b: ModelConfig) -> bool:
        """Whether a session opened for ``a`` serves ``b`` unchanged: the same file, providers
        and their options, threads and processing steps."""

        def session(config: ModelConfig) -> tuple[object, ...]:
            return (config.model_filename, config.execution_providers, config.cuda,
                    config.tensorrt, config.io_binding, self._instances(config),
                    config.preprocess, config.postprocess)  # fmt: skip

        return session(a) == session(b)

    def _retire(self, versions: Iterable[ModelVersion]) -> None:
        for version in versions:
            version.retire()
            task = asyncio.create_task(version.drain(self._drain_timeout_s))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def close(self, timeout_s: float | None = None) -> None:
        """Retire everything and wait for the drains (at most ``timeout_s``)."""
        for entry in self._models.values():
            self._retire(entry.versions.values())
        self._models.clear()
        if self._draining:
            _, late = await asyncio.wait(set(self._draining), timeout=timeout_s)
            if late:
                logger.warning("%d model versions still draining at shutdown", len(late))
