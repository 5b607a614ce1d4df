"""The controller's side of drift detection: one reference profile per model version for every
replica, and windows over the sum of every replica's bin counts.

A version's profile is read from ``MODEL/VERSION/profile.json`` when there is one; otherwise the
first ``reference_rows`` rows the replicas sample are gathered here and the profile is built
from them. Either way the controller hands the same profile to every replica (in its poll
answers), so their bin counts add up; a replica holding a profile the controller does not know
(the controller restarted) is told to drop it and gather rows again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.observe.drift import (
    PROFILE_FILE,
    Counts,
    DriftMonitor,
    DriftSettings,
    Kind,
    Profile,
    Raw,
    add_counts,
)
from serving.observe.metrics import DriftGauge
from serving.observe.stats import Key

logger = logging.getLogger(__name__)

SCORE_EVERY_S = 0.25


@dataclass
class _Gathering:
    parts: dict[str, tuple[Kind, list[np.ndarray]]]
    rows: int = 0


class DriftBook:
    def __init__(self, repository: Path, settings: DriftSettings) -> None:
        self._repository = repository
        self.settings = settings
        self._profiles: dict[Key, Profile] = {}
        self._looked: set[Key] = set()
        self._gathering: dict[Key, _Gathering] = {}
        self._counts: dict[str, dict[Key, Counts]] = {}
        """Each replica's latest cumulative counts (kept when it leaves: totals never drop)."""
        self._monitors: dict[Key, DriftMonitor] = {}
        self._scored_at = -1e9

    def profile(self, key: Key) -> Profile | None:
        """The version's profile: known, else from its ``profile.json``, else None (gathering)."""
        found = self._profiles.get(key)
        if found is None and key not in self._looked:
            self._looked.add(key)
            path = self._repository / key[0] / str(key[1]) / PROFILE_FILE
            if path.is_file():
                try:
                    found = self._profiles[key] = Profile.load(path)
                except (OSError, ValueError, KeyError, TypeError) as error:
                    logger.warning(
                        "%s version %s: unreadable %s (%s); profiling the first requests",
                        key[0], key[1], PROFILE_FILE, error,
                    )  # fmt: skip
        return found

    def observe(
        self, replica: str, counts: dict[Key, Counts], raw: dict[Key, Raw], versions: set[Key]
    ) -> None:
        """A replica's report: its cumulative counts, and rows for versions still gathering."""
        self._counts[replica] = {k: c for k, c in counts.items() if k in self._profiles}
        for key, rows in raw.items():
            if self.profile(key) is None:
                self._gather(key, rows)
        for key in versions:
            self.profile(key)

    def _gather(self, key: Key, rows: Raw) -> None:
        gathering = self._gathering.setdefault(key, _Gathering({}))
        for name, (kind, matrix) in rows.items():
            gathering.parts.setdefault(name, (kind, []))[1].append(matrix)
        gathering.rows += max((len(m) for _, m in rows.values()), default=0)
        if gathering.rows < self.settings.reference_rows:
            return
        samples = {n: (k, np.concatenate(p)) for n, (k, p) in gathering.parts.items()}
        source = f"first {gathering.rows} sampled rows"
        self._profiles[key] = Profile.build(samples, source=source)
        del self._gathering[key]
        logger.info("%s version %s: drift reference built from its %s", key[0], key[1], source)

    def answer(self, held: frozenset[Key], versions: set[Key]) -> dict[Key, Profile | None]:
        """What a replica holding profiles for ``held`` and serving ``versions`` should change:
        profiles to take, and (None) profiles to drop."""
        changes: dict[Key, Profile | None] = {k: None for k in held if k not in self._profiles}
        for key in versions - held:
            profile = self._profiles.get(key)
            if profile is not None:
                changes[key] = profile
        return changes

    def score(self, now: float, versions: set[Key]) -> None:
        """Close any window that is due (at most every ``SCORE_EVERY_S``)."""
        if now - self._scored_at < SCORE_EVERY_S:
            return
        self._scored_at = now
        merged: dict[Key, Counts] = {}
        for counts in self._counts.values():
            for key, parts in counts.items():
                add_counts(merged.setdefault(key, {}), parts)
        for key in versions:
            profile = self._profiles.get(key)
            if profile is None or key not in merged:
                continue
            monitor = self._monitors.get(key)
            if monitor is None or monitor.profile is not profile:
                monitor = self._monitors[key] = DriftMonitor(profile, self.settings)
            result = monitor.update(merged[key], now)
            if result is not None and result.detected:
                worst = min(result.tensors.items(), key=lambda item: item[1].p_value)
                logger.warning(
                    "drift in %s version %s: tensor '%s' feature %d, p = %.2g (adjusted) over "
                    "%d sampled rows; PSI %.3f",
                    key[0], key[1], worst[0], worst[1].worst_feature, worst[1].p_value,
                    result.rows, worst[1].psi,
                )  # fmt: skip

    def gauges(self, versions: set[Key]) -> list[DriftGauge]:
        found = []
        for key in sorted(versions):
            monitor = self._monitors.get(key)
            if monitor is None or monitor.latest is None:
                continue
            latest = monitor.latest
            tensors = {name: (s.p_value, s.psi) for name, s in latest.tensors.items()}
            found.append(DriftGauge(key[0], key[1], latest.detected, monitor.samples, tensors))
        return found

    def status(self, key: Key) -> dict[str, Any]:
        """What ``serving drift`` shows for one version."""
        profile = self._profiles.get(key)
        monitor = self._monitors.get(key)
        gathering = self._gathering.get(key)
        return {
            "version": str(key[1]),
            "reference": profile.source if profile else None,
            "reference_features": profile.features if profile else 0,
            "gathering_rows": gathering.rows if gathering else 0,
            "reference_rows_needed": self.settings.reference_rows,
            "sampled_rows": monitor.samples if monitor else 0,
            "windows": monitor.windows if monitor else 0,
            "window_rows": self.settings.window_rows,
            "sample_fraction": self.settings.sample_fraction,
            "latest": monitor.latest.as_dict() if monitor and monitor.latest else None,
        }
