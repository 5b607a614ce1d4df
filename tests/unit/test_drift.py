"""Drift scoring, seeded: undrifted traffic never raises the alarm over 10,000 sampled rows, a
1-sigma shift of one feature does within 1,000, and so does a shifted output distribution; counts
add across replicas; profiles round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from serving.observe.drift import (
    DriftMonitor,
    DriftSettings,
    Profile,
    add_counts,
    chi2_homogeneity,
    features,
)

FEATURES = 16
CLASSES = 10
SETTINGS = DriftSettings()


def reference(rng: np.random.Generator, rows: int = 1000) -> Profile:
    x = rng.normal(size=(rows, FEATURES))
    labels = rng.integers(0, CLASSES, size=rows)
    return Profile.from_data({"x": x}, {"label": labels}, source="test")


def stream(
    monitor: DriftMonitor,
    rng: np.random.Generator,
    rows: int,
    *,
    shift: float = 0.0,
    shift_from: int = 0,
    label_p: np.ndarray | None = None,
    replicas: int = 2,
    chunk: int = 50,
) -> int | None:
    """Feed ``rows`` sampled rows in chunks spread over ``replicas`` (each keeping cumulative
    counts that the controller adds up), one feature shifted by ``shift`` (in sd) from row
    ``shift_from`` on; returns the row count at which drift was detected, if it was."""
    cumulative = [dict[str, list[np.ndarray]]() for _ in range(replicas)]
    profile = monitor.profile
    for done in range(chunk, rows + 1, chunk):
        x = rng.normal(size=(chunk, FEATURES))
        if done > shift_from:
            x[:, 3] += shift
        labels = rng.choice(CLASSES, size=chunk, p=label_p)
        counts = {
            "x": profile.tensors["x"].bin(features(x)),
            "label": profile.tensors["label"].bin(features(labels)),
        }
        add_counts(cumulative[done // chunk % replicas], counts)
        merged: dict[str, list[np.ndarray]] = {}
        for part in cumulative:
            add_counts(merged, part)
        result = monitor.update(merged, now=done / 100)
        if result is not None and result.detected:
            return done
    return None


def test_undrifted_traffic_never_crosses_the_threshold_over_10000_rows() -> None:
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(reference(rng), SETTINGS)
    assert stream(monitor, rng, 10_000) is None
    assert monitor.windows == 10_000 // SETTINGS.window_rows
    assert monitor.latest is not None and monitor.latest.rows == SETTINGS.window_rows


def test_a_one_sigma_shift_of_one_feature_is_caught_within_1000_rows() -> None:
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(reference(rng), SETTINGS)
    # 1,230 undrifted rows first: the shift starts inside a window, not on its edge.
    caught = stream(monitor, rng, 3_000, shift=1.0, shift_from=1_230)
    assert caught is not None and 1_230 < caught <= 1_230 + 1_000
    assert monitor.latest is not None
    assert monitor.latest.tensors["x"].worst_feature == 3
    assert monitor.latest.tensors["label"].p_value > SETTINGS.alpha


def test_a_shifted_output_distribution_is_caught() -> None:
    rng = np.random.default_rng(13)
    monitor = DriftMonitor(reference(rng), SETTINGS)
    skewed = np.full(CLASSES, 0.5 / (CLASSES - 1))
    skewed[2] = 0.5  # the model now predicts class 2 half the time
    assert stream(monitor, rng, 1_000, label_p=skewed) is not None
    assert monitor.latest is not None
    assert monitor.latest.tensors["label"].p_value < SETTINGS.alpha
    assert monitor.latest.tensors["x"].p_value > SETTINGS.alpha


def test_the_statistic_grows_with_the_window_for_the_same_proportions() -> None:
    reference_counts = np.array([100, 100, 100, 100])
    small, _ = chi2_homogeneity(np.array([12, 8, 10, 10]), reference_counts)
    large, df = chi2_homogeneity(np.array([120, 80, 100, 100]), reference_counts)
    assert df == 3 and large > 5 * small  # a fixed PSI cut-off would score both the same


def test_a_profile_round_trips_and_large_rows_are_profiled_by_moments() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, size=(200, 3, 16, 16)).astype(np.uint8)
    profile = Profile.from_data({"image": images}, {"score": rng.random((200, 1))}, source="x")
    assert len(profile.tensors["image"].edges) == 2  # mean and standard deviation
    again = Profile.from_json(profile.to_json())
    for name, tensor in profile.tensors.items():
        for a, b in zip(tensor.counts, again.tensors[name].counts, strict=True):
            np.testing.assert_array_equal(a, b)
    assert profile.tensors["score"].rows == 200
    assert features(np.array(["a", "b"], dtype=object)) is None
    with pytest.raises(ValueError, match="format"):
        Profile.from_json({"format": 99})
