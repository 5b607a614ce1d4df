"""Drift reference profiles from a model's evaluation set (``serving profile``).

The evaluation set is ``MODEL/evaluation.npz``: arrays named by the model's inputs (or one
array named ``inputs`` for a model with one input). Each version runs over it and its inputs
and outputs are profiled into ``MODEL/VERSION/profile.json``, which the controller reads when
the version loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.models.evaluation import run_offline
from serving.models.repository import scan_model
from serving.observe.drift import PROFILE_FILE, Profile


@dataclass(frozen=True)
class Profiled:
    version: int
    path: Path
    rows: int
    features: int


def profile_model(directory: Path, versions: list[int] | None = None) -> list[Profiled]:
    """Profile the model in ``directory`` (the versions it serves, or ``versions``) on its
    evaluation set; writes each version's ``profile.json``."""
    source = scan_model(directory)
    if source.error:
        raise ValueError(f"{source.name}: {source.error}")
    done = []
    for found in source.versions:
        if versions and found.version not in versions:
            continue
        evaluation, signature, values = run_offline(source, found)
        outputs = dict(zip(signature.output_names, values, strict=True))
        rows = evaluation.rows
        profile = Profile.from_data(
            evaluation.inputs, outputs, source=f"evaluation set ({rows} rows)"
        )
        path = found.path.parent / PROFILE_FILE
        profile.save(path)
        done.append(Profiled(found.version, path, rows, profile.features))
    return done
