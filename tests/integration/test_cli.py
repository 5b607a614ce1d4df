"""``serving validate`` as a CI pipeline would run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def run_validate(repository: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "validate", str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_validate_passes_on_the_demo(demo_repository: Path) -> None:
    result = run_validate(demo_repository)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all models loaded and answered a sample inference" in result.stdout
    assert "digits" in result.stdout


def test_validate_fails_on_a_corrupt_model(demo_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_repository / "add_sub", repo / "add_sub")
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"\x00garbage")
    result = run_validate(repo)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout
    assert "cannot load corrupt/1/model.onnx" in result.stdout
    assert "1 problem(s) found" in result.stdout


def test_validate_rejects_a_missing_repository(tmp_path: Path) -> None:
    result = run_validate(tmp_path / "nowhere")
    assert result.returncode == 2
    assert "is not a directory" in result.stdout
