"""The controller: one per application, the single source of truth for what every replica serves.

It holds the desired state (which models and versions, with which config) under a revision
number, persists every revision before publishing it, and answers the replicas' long polls with
revisions newer than theirs. It merges what the replicas observe: each poll carries the
replica's cumulative statistics and the versions it failed to load. Model control (load,
unload, poll mode's rescans) changes the state here, one change at a time; a change returns once
every live replica has applied it. A load whose new files fail on every replica is settled:
the previous copy keeps serving and the load reports why.

No Ray here (``actor.py`` hosts it in a named Ray actor): tests run it in-process with fake
replicas and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.clock import MONOTONIC, Clock
from serving.config import ModelControlMode
from serving.control.channel import PollAnswer, ReplicaReport
from serving.control.drift import DriftBook
from serving.control.index import repository_index, summary
from serving.control.rollouts import Changes, RolloutDesk, prune
from serving.control.settling import changed_versions, settle
from serving.control.store import STATE_FORMAT, Store
from serving.errors import ModelControlDisabledError, ModelLoadError, ModelNotFoundError
from serving.models.repository import Hashes, model_directories, plan_model
from serving.models.spec import DesiredState, ModelSpec
from serving.observe.drift import DriftSettings
from serving.observe.stats import Key, StatsWindow

logger = logging.getLogger(__name__)

LIVENESS_S = 5.0
"""A replica that has not polled for this long is taken for gone (replicas poll every second)."""
APPLY_TIMEOUT_S = 600.0
"""How long a model control change waits for every replica to apply it."""
FLUSH_TIMEOUT_S = 2.0
"""How long a statistics read waits for every replica's fresh counters."""
TIMINGS_KEPT = 256


@dataclass(frozen=True)
class ControlSettings:
    repository: Path
    mode: ModelControlMode = "explicit"
    load_models: tuple[str, ...] = ()
    poll_s: float = 15.0
    resume: bool = True
    drift: DriftSettings = field(default_factory=DriftSettings)


@dataclass
class _Seen:
    report: ReplicaReport
    at: float


class Controller:
    def __init__(
        self,
        settings: ControlSettings,
        *,
        live_store: Store | None = None,
        durable_store: Store | None = None,
        clock: Clock = MONOTONIC,
        liveness_s: float = LIVENESS_S,
        apply_timeout_s: float = APPLY_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self._live_store = live_store
        """Lasts as long as the cluster (Ray's GCS): a restarted controller resumes from it
        exactly."""
        self._durable_store = durable_store
        """Outlasts the cluster (a state file): a restarted server reloads what it names."""
        self._clock = clock
        self._liveness_s = liveness_s
        self._apply_timeout_s = apply_timeout_s
        self.state = DesiredState()
        self._replicas: dict[str, _Seen] = {}
        self._departed: dict[str, ReplicaReport] = {}
        """The last report of each replica that stopped polling (its counters stay counted)."""
        self._flush = 0
        self._tick = asyncio.Event()
        self._lock = asyncio.Lock()
        """Held through a model control change (plan, commit, settle)."""
        self._commit_lock = asyncio.Lock()
        """Held while a revision is built, saved and published: traffic changes (a rollback)
        commit without waiting for a model control change to finish."""
        self._hashes = Hashes()
        self._previous: dict[str, ModelSpec] = {}
        """Each model's spec before its latest change: what a failed load falls back to."""
        self._changed_at: dict[str, int] = {}
        self._unloaded_versions: dict[str, tuple[int, ...]] = {}
        self._failed: dict[Key, str] = {}
        """(model, version) → the sha256 that failed on every replica: poll mode does not retry
        it until the file changes."""
        self._timings: OrderedDict[int, tuple[float, dict[str, float]]] = OrderedDict()
        self._poller: asyncio.Task[None] | None = None
        self._gathering_until = 0.0
        self.drift = DriftBook(settings.repository, settings.drift)
        self.autoscaling: dict[str, Any] | None = None
        """Ray Serve's autoscaler's last reading and decision, when the app autoscales."""
        self._served: tuple[DesiredState | None, set[Key]] = (None, set())
        self.desk = RolloutDesk(self)
        """Traffic tables by hand, and rollouts."""

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- start ---------------------------------------------------------------------------------

    async def start(self, *, revision_floor: int = 0) -> None:
        """Resume the saved state, or plan one from the repository; poll mode starts polling.
        ``revision_floor``: revisions continue above it (a controller replacing another)."""
        document = self._live_store.load() if self._live_store else None
        if revision_floor == 0 and self._matches(document):
            assert document is not None
            self._restore(document)
            # The replicas are out there but have not polled this controller yet: changes
            # wait for them to report in (they poll at least every second) before they count
            # as applied everywhere.
            self._gathering_until = self._clock.now() + self._liveness_s
            logger.info("controller resumed revision %d", self.state.revision)
        else:
            saved = self._durable_store.load() if self._durable_store else None
            resumed = saved if self.settings.resume and self._matches(saved) else None
            await self._plan_start(resumed, revision_floor)
            if any(r.rebase_pending for r in self.desk.rollouts.values()):
                # A resumed rollout counts its evidence again from the replicas' totals once
                # they have reported in, not from none.
                self._gathering_until = self._clock.now() + self._liveness_s
        if self.settings.mode == "poll":
            self._poller = asyncio.create_task(self._poll_repository())
        self.desk.begin()

    async def stop(self) -> None:
        await self.desk.stop()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def _matches(self, document: dict[str, Any] | None) -> bool:
        return (
            document is not None
            and document.get("format") == STATE_FORMAT
            and document.get("repository") == str(self.settings.repository)
        )

    def _restore(self, document: dict[str, Any]) -> None:
        self.state = DesiredState.from_json(document["state"])
        self.desk.restore(document.get("traffic_desk"))
        self._unloaded_versions = {
            name: tuple(versions)
            for name, versions in document.get("unloaded_versions", {}).items()
        }
        for name in [*self.state.models, *self.state.unloaded]:
            self._changed_at[name] = self.state.revision

    async def _plan_start(self, saved: dict[str, Any] | None, revision_floor: int) -> None:
        settings = self.settings
        on_disk = [d.name for d in model_directories(settings.repository)]
        overrides: dict[str, str | None] = {}
        unloaded: set[str] = set()
        revision = revision_floor
        traffic: Changes = {}
        if saved is not None:
            traffic = {**DesiredState.from_json(saved["state"]).traffic}
            self.desk.restore(saved.get("traffic_desk"))
        if settings.mode == "explicit" and saved is not None:
            previous = DesiredState.from_json(saved["state"])
            revision = max(revision, previous.revision)
            overrides = {name: spec.override for name, spec in previous.models.items()}
            unloaded = set(previous.unloaded)
            self._unloaded_versions = {
                name: tuple(v) for name, v in saved.get("unloaded_versions", {}).items()
            }
            named = [n for n in settings.load_models if n != "*"]
            names = sorted({*overrides, *named})
            logger.info("resuming %d models from the saved state", len(names))
        elif (
            settings.mode == "explicit" and settings.load_models and "*" not in settings.load_models
        ):
            names = sorted(set(settings.load_models))
        else:
            names = on_disk
        models = {}
        for name in names:
            try:
                models[name] = await self._plan(name, overrides.get(name))
            except ModelNotFoundError as error:
                logger.error("cannot load %s at start: %s", name, error.message)
        self.state = DesiredState(revision, {}, frozenset())
        await self._commit(models, frozenset(unloaded - set(models)), traffic=traffic)

    # -- planning and committing ---------------------------------------------------------------

    async def _plan(self, name: str, override: str | None) -> ModelSpec:
        """What serving ``name`` from the repository (with ``override`` as its config) means
        now; reading and hashing files leaves the event loop."""
        spec = await asyncio.to_thread(
            plan_model, self.settings.repository, name, override, self._hashes
        )
        return self.desk.without_retired(spec)

    async def _commit(
        self,
        models: dict[str, ModelSpec] | None = None,
        unloaded: frozenset[str] | None = None,
        *,
        correction: bool = False,
        traffic: Changes | None = None,
    ) -> int:
        """Publish a new revision (saved first): ``models`` and ``unloaded`` in place of the
        current ones (None keeps them), ``traffic`` tables changed (None removes one).
        ``correction``: it settles a failed change, so the specs it replaces are not worth
        falling back to."""
        async with self._commit_lock:
            old = self.state
            models = old.models if models is None else models
            unloaded = old.unloaded if unloaded is None else unloaded
            revision = old.revision + 1
            for name in {*old.models, *models}:
                before, after = old.models.get(name), models.get(name)
                if before == after:
                    continue
                self._changed_at[name] = revision
                if not correction and before is not None:
                    self._previous[name] = before
                if after is None and before is not None:
                    self._unloaded_versions[name] = tuple(v.version for v in before.versions)
            changes = {**(traffic or {}), **self.desk.orphaned(models)}
            tables = {**old.traffic, **changes}
            kept = prune({n: p for n, p in tables.items() if p is not None}, models)
            state = DesiredState(revision, models, unloaded, kept)
            document = {
                "format": STATE_FORMAT,
                "repository": str(self.settings.repository),
                "mode": self.settings.mode,
                "state": state.to_json(),
                "unloaded_versions": {k: list(v) for k, v in self._unloaded_versions.items()},
                "traffic_desk": self.desk.to_json(),
            }
            for store in (self._live_store, self._durable_store):
                if store is not None:
                    await asyncio.to_thread(store.save, document)
            self.state = state
            self._timings[revision] = (self._clock.now(), {})
            while len(self._timings) > TIMINGS_KEPT:
                self._timings.popitem(last=False)
        self._wake()
        logger.info("revision %d: %s", revision, ", ".join(sorted(models)) or "no models")
        return revision

    async def commit_traffic(self, changes: Changes) -> int:
        """A revision that changes traffic tables only (the rollouts' and by hand)."""
        return await self._commit(traffic=changes)

    async def drop_version(self, name: str, version: int) -> None:
        """Stop serving one version of ``name`` (after a promotion); returns once every live
        replica has applied it."""
        async with self._lock:
            spec = self.state.models.get(name)
            if spec is None or spec.version(version) is None or len(spec.versions) < 2:
                return
            kept = tuple(v for v in spec.versions if v.version != version)
            models = {**self.state.models, name: dataclasses.replace(spec, versions=kept)}
            revision = await self._commit(models)
        await self._until_applied(revision)

    # -- model control -------------------------------------------------------------------------

    def _require_explicit(self) -> None:
        if self.settings.mode != "explicit":
            raise ModelControlDisabledError(mode=self.settings.mode)

    async def load(self, name: str, override: str | None = None) -> None:
        """Load (or reload) ``name``; returns once every live replica serves it, or raises
        :class:`ModelLoadError` saying what failed, with what was served before still
        serving."""
        self._require_explicit()
        async with self._lock:
            self.desk.retired.pop(name, None)  # loading by hand serves what the policy says
            self.desk.pending_drops.pop(name, None)
            spec = await self._plan(name, override)
            current = self.state.models.get(name)
            if spec.error is not None and current is not None and current.error is None:
                raise ModelLoadError(model=name, problems=[spec.error])
            if spec == current:
                return
            models = {**self.state.models, name: spec}
            revision = await self._commit(models, self.state.unloaded - {name})
        await self._until_applied(revision)
        async with self._lock:
            problems = await self._settle(name, revision)
        if spec.error is not None:
            problems.insert(0, spec.error)
        problems[:0] = [f"version {v}: {reason}" for v, reason in spec.unavailable]
        if problems:
            raise ModelLoadError(model=name, problems=problems)

    async def unload(self, name: str) -> None:
        """Unload ``name`` (a model that is not loaded is left as it is, as Triton does);
        returns once every live replica has stopped serving it."""
        self._require_explicit()
        async with self._lock:
            if name not in self.state.models:
                return
            models = {n: s for n, s in self.state.models.items() if n != name}
            revision = await self._commit(models, self.state.unloaded | {name})
        await self._until_applied(revision)

    async def _settle(self, name: str, revision: int) -> list[str]:
        """After ``revision`` changed ``name`` and the replicas applied it: the problems to
        report, and, for versions that failed on every replica, a correcting revision (the
        previous copy back, or the version marked unavailable). Call under the lock."""
        spec = self.state.models.get(name)
        if spec is None or self._changed_at.get(name) != revision:
            return []  # changed again since: that change settles itself
        applied = [s.report for s in self._live() if s.report.applied >= revision]
        settled = settle(spec, self._previous.get(name), applied)
        for version in settled.everywhere:
            failed = spec.version(version)
            assert failed is not None
            self._failed[(name, version)] = failed.sha256
        corrected = settled.corrected
        if corrected is None:
            return settled.problems
        models = {**self.state.models, name: corrected}
        correction = await self._commit(models, self.state.unloaded, correction=True)
        self._changed_at[name] = correction
        return settled.problems

    async def _poll_repository(self) -> None:
        while True:
            await self._clock.wait(asyncio.Event(), self.settings.poll_s)
            try:
                await self.rescan()
            except Exception:
                logger.exception(
                    "repository poll failed; trying again in %.0f s", self.settings.poll_s
                )

    async def rescan(self) -> None:
        """Poll mode: bring the state in line with the repository (new, changed and removed
        models and versions); a change whose new files all failed on every replica is retried
        once one of them changes."""
        async with self._lock:
            models = dict(self.state.models)
            on_disk = [d.name for d in model_directories(self.settings.repository)]
            changed = []
            for name in on_disk:
                spec = await self._plan(name, None)
                current = models.get(name)
                if spec == current or self._known_to_fail(spec, current):
                    continue
                models[name] = spec
                changed.append(name)
            removed = [n for n in models if n not in on_disk]
            for name in removed:
                del models[name]
            if not changed and not removed:
                return
            unloaded = (self.state.unloaded | set(removed)) - set(changed)
            revision = await self._commit(models, unloaded)
        await self._until_applied(revision)
        async with self._lock:
            for name in changed:
                problems = await self._settle(name, revision)
                if problems:
                    logger.error("poll: load failed for %s: %s", name, "; ".join(problems))

    def _known_to_fail(self, spec: ModelSpec, current: ModelSpec | None) -> bool:
        """Whether every version ``spec`` would change has failed everywhere with the same
        file, under the same config."""
        if current is None or current.config != spec.config:
            return False
        changed = changed_versions(spec, current)
        return bool(changed) and all(
            self._failed.get((spec.name, v.version)) == v.sha256
            for v in spec.versions
            if v.version in changed
        )

    # -- replicas ------------------------------------------------------------------------------

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _live(self) -> list[_Seen]:
        """Replicas heard from lately; the others' last statistics are kept as departed."""
        horizon = self._clock.now() - self._liveness_s
        for replica in [r for r, seen in self._replicas.items() if seen.at < horizon]:
            seen = self._replicas.pop(replica)
            self._departed[replica] = seen.report
            logger.warning("replica %s stopped polling; taking it for gone", replica)
        return list(self._replicas.values())

    async def poll(self, report: ReplicaReport, timeout_s: float) -> PollAnswer:
        """Record ``report``; answer at once with a newer revision or a statistics flush
        request, else after ``timeout_s`` (0: a report that expects no news)."""
        now = self._clock.now()
        self._departed.pop(report.replica, None)
        previous = self._replicas.get(report.replica)
        if previous is not None and previous.report.sequence > report.sequence:
            previous.at = now  # an older report overtaken by a newer one: it only says alive
        else:
            self._replicas[report.replica] = _Seen(report, now)
            self._note_applied(report, previous.report.applied if previous else None, now)
            self.drift.observe(report.replica, report.drift, report.drift_rows, set(report.gauges))
            self.drift.score(now, self._served_versions())
            self.desk.note_report()
        self._wake()
        deadline = now + timeout_s
        while True:
            if self.state.revision > report.known:
                return self._answer(report, self.state)
            if self._flush > report.flushed:
                return self._answer(report, None)
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return self._answer(report, None)
            await self._clock.wait(self._tick, remaining)

    def _answer(self, report: ReplicaReport, state: DesiredState | None) -> PollAnswer:
        versions = self._served_versions()
        return PollAnswer(
            state,
            self._flush,
            profiles=self.drift.answer(report.profiled, set(report.gauges)),
            drift=self.drift.gauges(versions),
        )

    def _served_versions(self) -> set[Key]:
        """The versions of the current state (worked out once per state, which is replaced on
        every change: every poll asks)."""
        state, versions = self._served
        if state is not self.state:
            models = self.state.models.values()
            versions = {(m.name, v.version) for m in models for v in m.versions}
            self._served = (self.state, versions)
        return versions

    def _note_applied(self, report: ReplicaReport, before: int | None, now: float) -> None:
        """Record when ``report.replica`` was first heard to have applied each revision."""
        first = report.applied if before is None else before + 1
        for revision in range(first, report.applied + 1):
            if revision in self._timings:
                self._timings[revision][1].setdefault(report.replica, now)

    async def _until(self, done: Any, timeout_s: float) -> bool:
        deadline = self._clock.now() + timeout_s
        while not done():
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return False
            # Re-checked at least every half second: a replica that stops polling leaves.
            await self._clock.wait(self._tick, min(remaining, 0.5))
        return True

    def reports(self) -> list[ReplicaReport]:
        """The latest report of every replica, live or departed: what adds up to the
        application's totals."""
        return [*self._departed.values(), *(s.report for s in self._live())]

    def gathered(self) -> bool:
        """Whether a restarted controller has waited long enough for its replicas to report."""
        return self._clock.now() >= self._gathering_until

    async def until_applied(self, revision: int) -> None:
        await self._until_applied(revision)

    async def _until_applied(self, revision: int) -> None:
        def applied() -> bool:
            gathered = self._clock.now() >= self._gathering_until
            return gathered and all(s.report.applied >= revision for s in self._live())

        if not await self._until(applied, self._apply_timeout_s):
            late = [s.report.replica for s in self._live() if s.report.applied < revision]
            logger.error(
                "revision %d not applied by %s after %.0f s", revision, late, self._apply_timeout_s
            )

    async def statistics(self) -> dict[Key, StatsWindow]:
        """The application's totals per model version: every replica asked for fresh counters
        (waiting at most ``FLUSH_TIMEOUT_S``, longer while a restarted controller waits for
        its replicas to report in), departed replicas' last counters included."""
        self._flush += 1
        flush = self._flush

        def flushed() -> bool:
            gathered = self._clock.now() >= self._gathering_until
            return gathered and all(s.report.flushed >= flush for s in self._live())

        self._wake()
        gathering = max(0.0, self._gathering_until - self._clock.now())
        await self._until(flushed, FLUSH_TIMEOUT_S + gathering)
        totals: dict[Key, StatsWindow] = {}
        for report in self.reports():
            for key, window in report.stats.items():
                totals.setdefault(key, StatsWindow()).add(window)
        return totals

    async def summary(self) -> dict[str, Any]:
        """Per served version: the application's statistics (fresh), requests in flight and
        queued on every replica, traffic share and drift; what ``serving top`` and ``serving
        drift`` show."""
        totals = await self.statistics()
        document = summary(
            totals,
            self.state,
            self._served_versions(),
            [s.report for s in self._live()],
            self.drift,
        )
        document["replicas"] = len(self._live())
        document["autoscaling"] = self.autoscaling
        return document

    def note_autoscaling(self, reading: dict[str, Any]) -> None:
        """What Ray Serve's autoscaler read and decided last (``autoscaling.py``)."""
        self.autoscaling = reading

    def timings(self) -> dict[int, tuple[float, dict[str, float]]]:
        """Revision → (when committed, {replica: when its report of applying it arrived}), on
        the controller's clock: how long changes take to reach every replica."""
        return {revision: (at, dict(seen)) for revision, (at, seen) in self._timings.items()}

    def replicas(self) -> list[ReplicaReport]:
        return [s.report for s in self._live()]

    # -- the repository index ------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model in the repository (and every loaded one) with each version's state; see
        ``index.py``."""
        try:
            on_disk = [d.name for d in model_directories(self.settings.repository)]
        except FileNotFoundError:
            on_disk = []
        rows = repository_index(
            self.state,
            on_disk=on_disk,
            live=[s.report for s in self._live()],
            changed_at=self._changed_at,
            unloaded_versions=self._unloaded_versions,
        )
        return [r for r in rows if r.get("state") == "READY"] if ready_only else rows
