"""Input and prediction drift: reference profiles, mergeable bin counts, and a test calibrated
to the window's size.

A version's **reference profile** holds, for each input and output tensor, bin edges per feature
(deciles of the reference data, ties merged) and the reference's counts in those bins. A
feature is a column of the tensor's rows when a row has at most :data:`MAX_FEATURES` values,
else the row's mean and standard deviation. Profiles come from the version's evaluation set
(``serving profile``, written to ``MODEL/VERSION/profile.json``) or, when it has none, from the
first :attr:`DriftSettings.reference_rows` sampled rows (the controller builds it and hands it to
every replica, so all bin alike).

Replicas sample a fraction of requests (a coin flip and two references on the request path;
features are extracted and binned when the replica reports, at most once a second) into
cumulative **bin counts**, which add across replicas. The controller sums them and cuts the
sum into **windows** of :attr:`DriftSettings.window_rows` sampled rows (or whatever a window
gathered in :attr:`DriftSettings.window_s`, if at least :attr:`DriftSettings.min_window_rows`).

Each window is tested per feature against the reference with the two-sample χ² test of
homogeneity (the reference is a sample too; pooling both makes the threshold follow the sizes
of both, where a fixed PSI cut-off does not). A version
drifts when any feature's p-value is below ``alpha / features tested`` (Bonferroni over every
feature of every tensor, so ``alpha`` is the chance that a window of undrifted traffic raises
the alarm). PSI is reported beside it as the familiar number, never used to decide.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from scipy.special import chdtrc

MAX_FEATURES = 64
"""Rows with more values than this are profiled by their mean and standard deviation."""
BINS = 10
PROFILE_FILE = "profile.json"

Kind = Literal["input", "output"]


@dataclass(frozen=True)
class DriftSettings:
    sample_fraction: float = 0.1
    """Fraction of requests whose inputs and outputs are sampled."""
    window_rows: int = 500
    """Sampled rows per scored window."""
    window_s: float = 300.0
    """A window older than this is scored with what it has (if ``min_window_rows``)."""
    min_window_rows: int = 100
    alpha: float = 0.001
    """Family-wise false-alarm probability per window of undrifted traffic."""
    reference_rows: int = 1000
    """Rows taken from the first requests when a version has no profile."""


def features(array: np.ndarray, *, batched: bool = True) -> np.ndarray | None:
    """A tensor's rows (the first dim, when ``batched``; else the tensor is one row) as
    feature columns (float64), or None for what cannot be profiled (strings)."""
    if array.dtype.kind not in "biuf":
        return None
    rows = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    if rows.shape[1] <= MAX_FEATURES:
        return rows.astype(np.float64, copy=False)
    values = rows.astype(np.float64, copy=False)
    return np.stack([values.mean(axis=1), values.std(axis=1)], axis=1)


@dataclass
class TensorProfile:
    kind: Kind
    edges: list[np.ndarray]
    """Per feature, the interior bin edges (a value equal to an edge falls in the upper bin)."""
    counts: list[np.ndarray]
    """Per feature, the reference's count in each of its ``len(edges) + 1`` bins."""

    @property
    def rows(self) -> int:
        return int(self.counts[0].sum()) if self.counts else 0

    def bin(self, matrix: np.ndarray) -> list[np.ndarray]:
        """Counts per feature of ``matrix``'s rows (rows by features) in this profile's bins."""
        return [
            np.bincount(np.searchsorted(e, matrix[:, i], side="right"), minlength=len(e) + 1)
            for i, e in enumerate(self.edges)
        ]


@dataclass
class Profile:
    """A model version's reference: its tensors' bins and reference counts."""

    tensors: dict[str, TensorProfile] = field(default_factory=dict)
    source: str = "evaluation set"

    @classmethod
    def build(
        cls, samples: Mapping[str, tuple[Kind, np.ndarray]], *, source: str, bins: int = BINS
    ) -> Profile:
        """From reference rows: tensor → (kind, rows by features)."""
        tensors = {}
        for name, (kind, matrix) in samples.items():
            quantiles = np.linspace(0, 1, bins + 1)[1:-1]
            edges = [np.unique(np.quantile(column, quantiles)) for column in matrix.T]
            profile = TensorProfile(kind, edges, [])
            profile.counts = profile.bin(matrix)
            tensors[name] = profile
        return cls(tensors, source)

    @classmethod
    def from_data(
        cls,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        *,
        source: str,
    ) -> Profile:
        samples: dict[str, tuple[Kind, np.ndarray]] = {}
        for kind, tensors in (("input", inputs), ("output", outputs)):
            for name, array in tensors.items():
                matrix = features(array)
                if matrix is not None:
                    samples[name] = (kind, matrix)  # type: ignore[assignment]
        return cls.build(samples, source=source)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "source": self.source,
            "tensors": {
                name: {
                    "kind": t.kind,
                    "edges": [e.tolist() for e in t.edges],
                    "counts": [c.tolist() for c in t.counts],
                }
                for name, t in self.tensors.items()
            },
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Profile:
        if document.get("format") != 1:
            raise ValueError(f"unknown profile format {document.get('format')!r}")
        return cls(
            {
                name: TensorProfile(
                    t["kind"],
                    [np.asarray(e, dtype=np.float64) for e in t["edges"]],
                    [np.asarray(c, dtype=np.int64) for c in t["counts"]],
                )
                for name, t in document["tensors"].items()
            },
            document.get("source", "evaluation set"),
        )

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.from_json(orjson.loads(path.read_bytes()))

    @property
    def features(self) -> int:
        return sum(len(t.edges) for t in self.tensors.values())


def chi2_homogeneity(window: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """The two-sample χ² statistic over the bins either sample fills, and its degrees of
    freedom."""
    used = (window + reference) > 0
    w, r = window[used].astype(np.float64), reference[used].astype(np.float64)
    if len(w) < 2 or w.sum() == 0 or r.sum() == 0:
        return 0.0, 0
    total_w, total_r = w.sum(), r.sum()
    pooled = (w + r) / (total_w + total_r)
    expected_w, expected_r = pooled * total_w, pooled * total_r
    cells = (w - expected_w) ** 2 / expected_w + (r - expected_r) ** 2 / expected_r
    statistic = float(cells.sum())
    return statistic, len(w) - 1


def psi(window: np.ndarray, reference: np.ndarray, floor: float = 1e-4) -> float:
    p = np.maximum(window / max(1, window.sum()), floor)
    q = np.maximum(reference / max(1, reference.sum()), floor)
    return float(((p - q) * np.log(p / q)).sum())


@dataclass(frozen=True)
class TensorScore:
    p_value: float
    """The smallest feature p-value, Bonferroni-adjusted over every feature tested (≤ 1)."""
    psi: float
    """The largest feature PSI."""
    worst_feature: int
    rows: int


@dataclass(frozen=True)
class DriftScore:
    detected: bool
    tensors: dict[str, TensorScore]
    rows: int
    """Rows in the scored window."""
    features: int
    alpha: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "detected": self.detected,
            "window_rows": self.rows,
            "features_tested": self.features,
            "alpha": self.alpha,
            "tensors": {
                name: {
                    "p_value": s.p_value,
                    "psi": round(s.psi, 6),
                    "worst_feature": s.worst_feature,
                    "rows": s.rows,
                }
                for name, s in self.tensors.items()
            },
        }


def score(profile: Profile, window: Mapping[str, list[np.ndarray]], alpha: float) -> DriftScore:
    """Test a window's counts (tensor → per-feature bin counts) against ``profile``."""
    tested = []
    for name, counts in window.items():
        reference = profile.tensors.get(name)
        if reference is None:
            continue
        for i, (w, r) in enumerate(zip(counts, reference.counts, strict=True)):
            statistic, df = chi2_homogeneity(w, r)
            if df:
                tested.append((name, i, float(chdtrc(df, statistic)), psi(w, r)))
    m = max(1, len(tested))
    tensors = {}
    for name in window:
        mine = [t for t in tested if t[0] == name]
        if not mine:
            continue
        worst = min(mine, key=lambda t: t[2])
        rows = int(window[name][0].sum())
        tensors[name] = TensorScore(min(1.0, worst[2] * m), max(t[3] for t in mine), worst[1], rows)
    rows = max((s.rows for s in tensors.values()), default=0)
    detected = any(s.p_value < alpha for s in tensors.values())
    return DriftScore(detected, tensors, rows, len(tested), alpha)


Counts = dict[str, list[np.ndarray]]


def add_counts(total: Counts, more: Mapping[str, list[np.ndarray]]) -> Counts:
    for name, counts in more.items():
        mine = total.get(name)
        if mine is None:
            total[name] = [c.copy() for c in counts]
        else:
            for a, b in zip(mine, counts, strict=True):
                a += b
    return total


def minus_counts(later: Counts, earlier: Counts) -> Counts:
    return {
        name: [c - e for c, e in zip(counts, earlier[name], strict=True)]
        if name in earlier
        else [c.copy() for c in counts]
        for name, counts in later.items()
    }


def rows_of(counts: Counts) -> int:
    return max((int(c[0].sum()) for c in counts.values() if c), default=0)


class DriftMonitor:
    """One version's windows over the merged cumulative counts of every replica."""

    def __init__(self, profile: Profile, settings: DriftSettings) -> None:
        self.profile = profile
        self._settings = settings
        self._start: Counts = {}
        self._started_at: float | None = None
        self.latest: DriftScore | None = None
        self.windows = 0
        self.samples = 0

    def update(self, cumulative: Counts, now: float) -> DriftScore | None:
        """Look at the merged cumulative counts; returns a score when a window closes."""
        settings = self._settings
        if self._started_at is None:
            self._started_at = now
        window = minus_counts(cumulative, self._start)
        if any((c < 0).any() for counts in window.values() for c in counts):
            self._start = {n: [c.copy() for c in counts] for n, counts in cumulative.items()}
            return None  # a replica started over (its profile was replaced): a fresh window
        rows = rows_of(window)
        self.samples = rows_of(cumulative)
        full = rows >= settings.window_rows
        aged = now - self._started_at >= settings.window_s and rows >= settings.min_window_rows
        if not (full or aged):
            return None
        self.latest = score(self.profile, window, settings.alpha)
        self.windows += 1
        self._start = {name: [c.copy() for c in counts] for name, counts in cumulative.items()}
        self._started_at = now
        return self.latest


MAX_PENDING = 4096
"""Sampled requests waiting to be binned; beyond it samples are dropped (and counted)."""

Raw = dict[str, tuple[Kind, np.ndarray]]
"""Unbinned rows: tensor → (kind, rows by features)."""


class DriftSampler:
    """One model version's sampling in a replica.

    On the request path :meth:`offer` flips a coin and keeps references to the request's
    arrays. :meth:`collect` (when the replica reports) turns what was kept into features and
    bins them into the cumulative counts; until the version has a profile it returns the rows
    instead, for the controller to build one from.
    """

    def __init__(self, settings: DriftSettings, *, batched: bool) -> None:
        self.settings = settings
        self._batched = batched
        self._fraction = settings.sample_fraction
        self._pending: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] = []
        self.profile: Profile | None = None
        self.counts: Counts = {}
        self.dropped = 0
        self._raw_rows = 0

    def offer(
        self, inputs: Mapping[str, np.ndarray], names: list[str], outputs: list[np.ndarray]
    ) -> None:
        """A request's inputs and its outputs (``names`` in order), maybe kept for later."""
        if self._fraction <= 0 or random.random() >= self._fraction:
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((inputs, dict(zip(names, outputs, strict=True))))

    def set_profile(self, profile: Profile | None) -> None:
        """Start binning against ``profile`` (or, None: forget it and gather rows again)."""
        self.profile = profile
        self.counts = {}
        self._raw_rows = 0

    def collect(self) -> Raw:
        """Bin what was sampled since the last call; returns the rows instead while there is
        no profile (at most ``reference_rows`` in all)."""
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        matrices: dict[str, tuple[Kind, list[np.ndarray]]] = {}
        for inputs, outputs in pending:
            for kind, tensors in (("input", inputs), ("output", outputs)):
                for name, array in tensors.items():
                    matrix = features(array, batched=self._batched)
                    if matrix is not None:
                        matrices.setdefault(name, (kind, []))[1].append(matrix)  # type: ignore[arg-type]
        stacked = {name: (kind, np.concatenate(parts)) for name, (kind, parts) in matrices.items()}
        profile = self.profile
        if profile is None:
            room = self.settings.reference_rows - self._raw_rows
            if room <= 0:
                return {}
            raw = {name: (kind, m[:room]) for name, (kind, m) in stacked.items()}
            self._raw_rows += max(len(m) for _, m in raw.values())
            return raw
        binned = {}
        for name, (_, matrix) in stacked.items():
            reference = profile.tensors.get(name)
            if reference is not None and matrix.shape[1] == len(reference.edges):
                binned[name] = reference.bin(matrix)
        add_counts(self.counts, binned)
        return {}
