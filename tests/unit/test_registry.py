"""The registry's lifecycle with fake runtimes: load, swap, drain, unload, failed loads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.clock import MONOTONIC
from serving.config import ModelConfig
from serving.errors import ModelNotFoundError, ModelNotReadyError
from serving.models.execution import Workers
from serving.models.registry import Registry
from serving.models.repository import sha256_of
from serving.models.spec import DesiredState, ModelSpec, VersionSpec
from serving.models.version import ModelVersion
from tests.unit.fakes import FakeFiles, write_model

X = {"x": np.array([[1, 2, 3]], dtype=np.float32)}


def spec(repo: Path, name: str, versions: list[int], config: str = "{}") -> ModelSpec:
    parsed = ModelConfig.model_validate_json(config)
    return ModelSpec(
        name,
        parsed,
        tuple(VersionSpec(v, sha256_of(repo / name / str(v) / "model.onnx")) for v in versions),
    )


def state(revision: int, *models: ModelSpec) -> DesiredState:
    return DesiredState(revision, {m.name: m for m in models})


async def run(version: ModelVersion) -> list[np.ndarray]:
    assert version.enter()
    try:
        outcome = await version.scheduler.run(X, 1, ["y"], None)
    finally:
        version.leave()
    return outcome.outputs


def scenario(test: Callable[[Registry, FakeFiles, Path], Awaitable[None]], tmp_path: Path) -> None:
    """Run ``test`` against a fresh registry; at the end every session it opened is closed."""
    files = FakeFiles()

    async def main() -> None:
        with ThreadPoolExecutor(4) as executor:
            registry = Registry(
                tmp_path, files, workers=Workers(executor, inline_below_s=0), clock=MONOTONIC
            )
            try:
                await test(registry, files, tmp_path)
            finally:
                for runtime in files.opened:
                    runtime.gate.set()
                await registry.close()
        assert all(runtime.closed for runtime in files.opened)

    asyncio.run(main())


def test_apply_loads_versions_and_the_highest_is_the_default(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1)
        write_model(repo, "m", 4)
        await registry.apply(state(1, spec(repo, "m", [1, 4])))
        assert registry.revision == 1
        assert registry.resolve("m", None).version == 4
        np.testing.assert_array_equal((await run(registry.resolve("m", 1)))[0], [6])
        with pytest.raises(
            ModelNotFoundError, match=r"unknown version .2.*available versions: 1, 4"
        ):
            registry.resolve("m", 2)
        with pytest.raises(ModelNotFoundError, match="unknown model 'x'"):
            registry.resolve("x", None)

    scenario(test, tmp_path)


def test_a_changed_file_is_swapped_in_while_the_old_copy_finishes_its_requests(
    tmp_path: Path,
) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1, b"first")
        await registry.apply(state(1, spec(repo, "m", [1])))
        old = registry.resolve("m", None)
        (first,) = files.opened
        first.gate.clear()
        inflight = asyncio.create_task(run(old))
        await asyncio.sleep(0.05)
        assert first.running == 1

        write_model(repo, "m", 1, b"second")
        await registry.apply(state(2, spec(repo, "m", [1])))
        new = registry.resolve("m", None)
        assert new is not old and new.runtime is files.opened[1]
        assert old.retired and not new.retired
        np.testing.assert_array_equal((await run(new))[0], [6])  # the new copy serves
        await asyncio.sleep(0.05)
        assert not first.closed  # the old copy drains before its session closes
        first.gate.set()
        np.testing.assert_array_equal((await inflight)[0], [6])
        for _ in range(100):
            if first.closed:
                break
            await asyncio.sleep(0.01)
        assert first.closed

    scenario(test, tmp_path)


def test_a_batching_change_keeps_the_session_and_swaps_the_scheduler(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1)
        await registry.apply(state(1, spec(repo, "m", [1])))
        old = registry.resolve("m", None)
        batched = '{"dynamic_batching": {"max_queue_delay_ms": 1}}'
        await registry.apply(state(2, spec(repo, "m", [1], batched)))
        new = registry.resolve("m", None)
        assert new is not old and new.runtime is old.runtime
        assert new.config.dynamic_batching is not None and old.config.dynamic_batching is None
        assert len(files.opened) == 1
        np.testing.assert_array_equal((await run(new))[0], [6])
        await asyncio.sleep(0.05)
        assert old.retired and not new.runtime.closed  # type: ignore[attr-defined]

    scenario(test, tmp_path)


@pytest.mark.parametrize(
    "changed",
    ['{"cuda": {"memory_limit_mb": 512}}', '{"tensorrt": {"fp16": true}}', '{"io_binding": true}'],
)
def test_a_provider_option_change_opens_a_new_session(tmp_path: Path, changed: str) -> None:
    """What the session was opened with changed: reusing it would serve the old options."""

    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1)
        await registry.apply(state(1, spec(repo, "m", [1])))
        old = registry.resolve("m", None)
        await registry.apply(state(2, spec(repo, "m", [1], changed)))
        assert registry.resolve("m", None).runtime is not old.runtime
        assert len(files.opened) == 2

    scenario(test, tmp_path)


def test_a_failed_reload_keeps_the_previous_copy_and_is_recorded(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1, b"good")
        await registry.apply(state(1, spec(repo, "m", [1])))
        old = registry.resolve("m", None)
        write_model(repo, "m", 1, b"corrupt bytes")
        broken = spec(repo, "m", [1])
        await registry.apply(state(2, broken))
        assert registry.resolve("m", None) is old
        sha, reason = registry.failures[("m", 1)]
        assert sha == broken.versions[0].sha256
        assert reason.startswith("cannot load m/1/model.onnx: protobuf parsing failed for m/1/")
        assert registry.revision == 2

    scenario(test, tmp_path)


def test_a_new_version_that_fails_is_unavailable_with_its_reason(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1)
        write_model(repo, "m", 2, b"corrupt")
        await registry.apply(state(1, spec(repo, "m", [1, 2])))
        assert registry.resolve("m", None).version == 1
        with pytest.raises(ModelNotReadyError, match="version 2 is not ready: cannot load"):
            registry.resolve("m", 2)

    scenario(test, tmp_path)


def test_a_file_that_differs_from_the_spec_is_refused(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1, b"as planned")
        planned = spec(repo, "m", [1])
        write_model(repo, "m", 1, b"replaced meanwhile")
        await registry.apply(state(1, planned))
        with pytest.raises(ModelNotReadyError, match="changed since the load was requested"):
            registry.resolve("m", None)
        assert files.opened == []

    scenario(test, tmp_path)


def test_unload_refuses_new_requests_and_drains_the_running_ones(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1)
        write_model(repo, "keep", 1)
        await registry.apply(state(1, spec(repo, "m", [1]), spec(repo, "keep", [1])))
        old = registry.resolve("m", None)
        runtime = files.opened[0]
        runtime.gate.clear()
        inflight = asyncio.create_task(run(old))
        await asyncio.sleep(0.05)
        await registry.apply(state(2, spec(repo, "keep", [1])))
        with pytest.raises(ModelNotFoundError):
            registry.resolve("m", None)
        assert not old.enter()  # a request routed before the unload must route again
        assert not runtime.closed
        runtime.gate.set()
        await inflight
        for _ in range(100):
            if runtime.closed:
                break
            await asyncio.sleep(0.01)
        assert runtime.closed
        assert registry.resolve("keep", None).version == 1

    scenario(test, tmp_path)


def test_statistics_windows_outlive_a_swap(tmp_path: Path) -> None:
    async def test(registry: Registry, files: FakeFiles, repo: Path) -> None:
        write_model(repo, "m", 1, b"first")
        await registry.apply(state(1, spec(repo, "m", [1])))
        first = registry.resolve("m", None)
        first.stats.record_success(1, 1000, input_ns=0, queue_ns=0, infer_ns=0)
        write_model(repo, "m", 1, b"second")
        await registry.apply(state(2, spec(repo, "m", [1])))
        assert registry.resolve("m", None).stats is first.stats
        assert registry.book.snapshot()[("m", 1)].requests == 1

    scenario(test, tmp_path)
