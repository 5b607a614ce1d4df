"""The controller with in-process replicas (registry + follower over a local channel), fake
runtimes and real files: revisions, model control, settling failed loads, statistics, the
repository index, persistence and poll mode. No Ray."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.clock import MONOTONIC
from serving.config import ModelControlMode
from serving.control.channel import LocalChannel, ReplicaReport
from serving.control.controller import Controller, ControlSettings
from serving.control.follower import Follower
from serving.control.store import FileStore
from serving.errors import ModelControlDisabledError, ModelLoadError, ModelNotFoundError
from serving.models.execution import Workers
from serving.models.registry import Registry
from serving.observe.stats import StatsWindow
from tests.unit.fakes import FakeFiles, write_model

X = {"x": np.array([[1, 2, 3]], dtype=np.float32)}


class MemoryStore:
    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.document

    def save(self, document: dict[str, Any]) -> None:
        self.document = document


class Fleet:
    """A controller and replicas in this process, as the Ray deployment wires them."""

    def __init__(self, controller: Controller, files: FakeFiles, executor: ThreadPoolExecutor):
        self.controller = controller
        self.files = files
        self._executor = executor
        self.registries: list[Registry] = []
        self.followers: list[Follower] = []

    async def add_replica(self) -> Registry:
        registry = Registry(
            self.controller.settings.repository,
            self.files,
            workers=Workers(self._executor, inline_below_s=0),
            clock=MONOTONIC,
        )
        follower = Follower(
            LocalChannel(self.controller),
            registry,
            replica=f"r{len(self.registries)}",
            poll_timeout_s=0.05,
        )
        await follower.converge()
        follower.start()
        self.registries.append(registry)
        self.followers.append(follower)
        return registry

    async def stop_replica(self, index: int) -> None:
        await self.followers[index].stop()

    async def close(self) -> None:
        await self.controller.stop()
        for follower in self.followers:
            await follower.stop()
        for runtime in self.files.opened:
            runtime.gate.set()
        for registry in self.registries:
            await registry.close()


@contextlib.asynccontextmanager
async def fleet(
    repo: Path,
    replicas: int = 2,
    *,
    mode: ModelControlMode = "explicit",
    live: MemoryStore | None = None,
    durable: MemoryStore | None = None,
    **settings: Any,
) -> AsyncIterator[Fleet]:
    controller = Controller(
        ControlSettings(repo, mode=mode, **settings),
        live_store=live,
        durable_store=durable,
        liveness_s=0.5,
    )
    await controller.start()
    with ThreadPoolExecutor(4) as executor:
        group = Fleet(controller, FakeFiles(), executor)
        try:
            for _ in range(replicas):
                await group.add_replica()
            yield group
        finally:
            await group.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def infer(registry: Registry, model: str, version: int | None = None) -> int:
    target = registry.resolve(model, version)
    assert target.enter()
    try:
        await target.scheduler.run(X, 1, ["y"], None)
    finally:
        target.leave()
    target.stats.record_success(1, 1000, input_ns=0, queue_ns=0, infer_ns=500)
    return target.version


def served(registry: Registry) -> dict[str, list[int]]:
    return {e.name: sorted(e.versions) for e in registry.entries}


def test_replicas_start_on_the_current_revision_and_apply_every_change_in_order(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "a", 1)
    write_model(tmp_path, "b", 1, config="version_policy: all\n")

    async def test() -> None:
        async with fleet(tmp_path) as group:
            controller = group.controller
            assert controller.state.revision == 1
            assert all(r.revision == 1 for r in group.registries)
            assert all(served(r) == {"a": [1], "b": [1]} for r in group.registries)
            write_model(tmp_path, "b", 2)
            await controller.load("b")  # returns once every replica applied it
            revision = controller.state.revision
            assert [r.revision for r in group.registries] == [revision, revision]
            assert all(served(r)["b"] == [1, 2] for r in group.registries)
            await controller.unload("a")
            assert all("a" not in served(r) for r in group.registries)
            # A replica that starts now converges to the current revision before it serves.
            late = await group.add_replica()
            assert late.revision == controller.state.revision
            assert served(late) == {"b": [1, 2]}
            timings = controller.timings()
            committed, seen = timings[controller.state.revision]
            assert set(seen) == {"r0", "r1", "r2"}
            assert all(at >= committed for at in seen.values())

    run(test)


def test_a_load_that_fails_everywhere_keeps_the_previous_file_serving(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, b"good")

    async def test() -> None:
        async with fleet(tmp_path) as group:
            before = [r.resolve("m", None) for r in group.registries]
            write_model(tmp_path, "m", 1, b"corrupt now")
            with pytest.raises(ModelLoadError) as caught:
                await group.controller.load("m")
            assert "version 1: cannot load m/1/model.onnx" in caught.value.message
            assert "what was served before keeps serving" in caught.value.message
            assert [r.resolve("m", None) for r in group.registries] == before
            for registry in group.registries:
                assert await infer(registry, "m") == 1
            # The desired state was settled back to the file that serves.
            spec = group.controller.state.models["m"]
            assert spec.versions[0].sha256 == before[0].sha256
            (row,) = group.controller.index()
            assert row == {"name": "m", "version": "1", "state": "READY", "reason": ""}

    run(test)


def test_a_config_override_that_fails_restores_the_previous_config(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1)

    async def test() -> None:
        async with fleet(tmp_path) as group:
            before = group.controller.state.models["m"]
            wrong = '{"input": [{"name": "x", "data_type": "TYPE_FP64", "dims": [3]}]}'
            with pytest.raises(ModelLoadError, match=r"config does not match m/1/model\.onnx"):
                await group.controller.load("m", wrong)
            assert group.controller.state.models["m"] == before
            assert [await infer(r, "m") for r in group.registries] == [1, 1]

    run(test)


def test_a_new_model_that_fails_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "good", 1)

    async def test() -> None:
        async with fleet(tmp_path, load_models=("good",)) as group:
            assert group.controller.index() == [
                {"name": "good", "version": "1", "state": "READY", "reason": ""}
            ]
            write_model(tmp_path, "bad", 1, b"corrupt")
            assert {"name": "bad"} in group.controller.index()  # in the repository, not loaded
            with pytest.raises(ModelLoadError, match="load failed for model 'bad': version 1"):
                await group.controller.load("bad")
            rows = {r["name"]: r for r in group.controller.index()}
            assert rows["bad"]["state"] == "UNAVAILABLE"
            assert "cannot load bad/1/model.onnx" in rows["bad"]["reason"]
            assert group.controller.index(ready_only=True) == [rows["good"]]
            with pytest.raises(ModelNotFoundError, match="unknown model 'nowhere'"):
                await group.controller.load("nowhere")

    run(test)


def test_unload_shows_unloaded_versions_and_a_second_unload_is_harmless(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "m", 2, config="version_policy: all\n")

    async def test() -> None:
        async with fleet(tmp_path) as group:
            await group.controller.unload("m")
            assert group.controller.index() == [
                {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
                {"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
            ]
            revision = group.controller.state.revision
            await group.controller.unload("m")
            assert group.controller.state.revision == revision
            await group.controller.load("m")
            assert all(served(r) == {"m": [1, 2]} for r in group.registries)

    run(test)


def test_model_control_is_refused_outside_explicit_mode(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1)

    async def test() -> None:
        for mode in ("none", "poll"):
            async with fleet(tmp_path, 1, mode=mode) as group:  # type: ignore[arg-type]
                with pytest.raises(ModelControlDisabledError, match=f"mode '{mode}'"):
                    await group.controller.load("m")
                with pytest.raises(ModelControlDisabledError):
                    await group.controller.unload("m")
                assert served(group.registries[0]) == {"m": [1]}

    run(test)


def test_poll_mode_serves_a_version_that_appears_and_drops_a_removed_model(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "gone", 1)

    async def test() -> None:
        async with fleet(tmp_path, mode="poll", poll_s=0.05) as group:
            write_model(tmp_path, "m", 2)
            for path in (tmp_path / "gone").rglob("*"):
                if path.is_file():
                    path.unlink()
            for path in sorted((tmp_path / "gone").rglob("*"), reverse=True):
                path.rmdir()
            (tmp_path / "gone").rmdir()
            for _ in range(200):
                if all(served(r) == {"m": [2]} for r in group.registries):
                    break
                await asyncio.sleep(0.02)
            assert all(served(r) == {"m": [2]} for r in group.registries)
            # A broken new version fails on every replica: version 2 keeps serving and the
            # poller does not try the same file again.
            write_model(tmp_path, "m", 3, b"corrupt")

            def settled() -> bool:  # the correcting revision is out, not just the reports
                return 3 in dict(group.controller.state.models["m"].unavailable)

            for _ in range(200):
                if settled():
                    break
                await asyncio.sleep(0.02)
            assert settled()
            rows = {r.get("version"): r for r in group.controller.index()}
            assert rows["3"]["state"] == "UNAVAILABLE"
            revision = group.controller.state.revision
            await asyncio.sleep(0.3)
            assert group.controller.state.revision == revision
            assert [await infer(r, "m") for r in group.registries] == [2, 2]

    run(test)


def test_statistics_add_up_over_replicas_and_keep_a_departed_replicas_counts(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "m", 1)

    async def test() -> None:
        async with fleet(tmp_path, 2) as group:
            first, second = group.registries
            for _ in range(3):
                await infer(first, "m")
            for _ in range(4):
                await infer(second, "m")
            for _ in range(10):  # fresh on every read: no waiting for the next report
                totals = await group.controller.statistics()
                assert totals[("m", 1)].requests == 7
            await group.stop_replica(1)
            await asyncio.sleep(0.6)  # past the liveness horizon: taken for gone
            assert [r.replica for r in group.controller.replicas()] == ["r0"]
            totals = await group.controller.statistics()
            assert totals[("m", 1)].requests == 7

    run(test)


def test_a_restarted_controller_resumes_the_same_state_from_the_live_store(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "a", 1)
    write_model(tmp_path, "b", 1)
    live = MemoryStore()

    async def test() -> None:
        async with fleet(tmp_path, 1, live=live) as group:
            await group.controller.unload("a")
            state = group.controller.state
        # Ray restarts a dead controller: the same revision, nothing for replicas to redo.
        restarted = Controller(ControlSettings(tmp_path), live_store=live)
        await restarted.start()
        assert restarted.state == state
        assert restarted.index()[0] == {
            "name": "a", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"
        }  # fmt: skip

    run(test)


def test_a_restarted_server_reloads_what_model_control_left_loaded(tmp_path: Path) -> None:
    write_model(tmp_path, "a", 1)
    write_model(tmp_path, "b", 1)
    write_model(tmp_path, "c", 1)
    durable = MemoryStore()
    override = '{"max_batch_size": 4, "parameters": {"owner": {"string_value": "me"}}}'

    async def test() -> None:
        async with fleet(tmp_path, 1, durable=durable) as group:
            await group.controller.unload("a")
            await group.controller.load("b", override)
            revision = group.controller.state.revision
        write_model(tmp_path, "c", 2, config="version_policy: all\n")  # changed while down
        async with fleet(tmp_path, 1, durable=durable) as group:
            state = group.controller.state
            assert state.revision > revision
            assert sorted(state.models) == ["b", "c"]
            assert state.models["b"].config.labels == {"owner": "me"}
            assert [v.version for v in state.models["c"].versions] == [1, 2]
            assert served(group.registries[0]) == {"b": [1], "c": [1, 2]}
        async with fleet(tmp_path, 1, durable=durable, resume=False) as group:
            assert sorted(group.controller.state.models) == ["a", "b", "c"]

    run(test)


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "m", 1)
    store = FileStore(tmp_path / "state" / "serving.json")

    async def test() -> None:
        controller = Controller(ControlSettings(tmp_path / "repo"), durable_store=store)
        await controller.start()
        document = store.load()
        assert document is not None and document["state"]["revision"] == 1
        other = Controller(ControlSettings(tmp_path / "elsewhere"), durable_store=store)
        assert not other._matches(document)  # another repository's state is not resumed

    run(test)


def test_a_poll_answers_at_once_with_news_and_otherwise_waits(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1)

    async def test() -> None:
        controller = Controller(ControlSettings(tmp_path))
        await controller.start()
        answer = await controller.poll(ReplicaReport("r", known=0), 5.0)
        assert answer.state is controller.state
        began = MONOTONIC.now()
        answer = await controller.poll(ReplicaReport("r", known=1), 0.1)
        assert answer.state is None and MONOTONIC.now() - began >= 0.09
        waiting = asyncio.create_task(controller.poll(ReplicaReport("r", known=1), 5.0))
        await asyncio.sleep(0.05)
        reading = asyncio.create_task(controller.statistics())
        answer = await asyncio.wait_for(waiting, 1.0)
        assert answer.state is None and answer.flush == 1  # report again, with fresh counters
        window = StatsWindow()
        window.record_failure(5)
        await controller.poll(ReplicaReport("r", known=1, flushed=1, stats={("m", 1): window}), 0)
        totals = await asyncio.wait_for(reading, 1.0)
        assert totals[("m", 1)].stages["fail"].count == 1

    run(test)


def test_a_report_overtaken_by_a_newer_one_does_not_undo_it(tmp_path: Path) -> None:
    """A long poll and a prompt report are in flight together, and Ray does not keep an async
    actor's calls in order: what the newer report said stands."""
    write_model(tmp_path, "m", 1)

    async def test() -> None:
        controller = Controller(ControlSettings(tmp_path))
        await controller.start()
        newer = ReplicaReport("r", sequence=2, known=1, applied=1)
        older = ReplicaReport("r", sequence=1, known=1, applied=0)
        await controller.poll(newer, 0)
        await controller.poll(older, 0)
        (seen,) = controller.replicas()
        assert seen.applied == 1 and seen.sequence == 2

    run(test)


def test_a_promotion_drops_the_old_version_and_a_restart_finishes_a_pending_drop(
    tmp_path: Path,
) -> None:
    """After promotion the old version leaves the served state once every replica routes to
    the new one; a drop still pending when the controller restarts is done by the next one."""
    from serving.traffic.rollout import Plan

    write_model(tmp_path, "a", 1, config="version_policy: all\n")
    write_model(tmp_path, "a", 2)
    live = MemoryStore()

    async def promoted(group: Fleet, keep: bool) -> None:
        desk = group.controller.desk
        await desk.start(Plan("a", 1, 2, steps=(100,), keep_previous=keep), None)
        await desk.act("a", "promote")

    async def test() -> None:
        async with fleet(tmp_path, 2, live=live) as group:
            await promoted(group, keep=False)
            deadline = asyncio.get_running_loop().time() + 10
            while served(group.registries[0])["a"] != [2]:
                assert asyncio.get_running_loop().time() < deadline, served(group.registries[0])
                await asyncio.sleep(0.02)
            assert served(group.registries[1]) == {"a": [2]}
            assert group.controller.desk.pending_drops == {}
            await group.controller.load("a")  # by hand: version 1 is back
            assert served(group.registries[0])["a"] == [1, 2]
            await promoted(group, keep=True)  # kept: nothing pending
            assert group.controller.desk.pending_drops == {}
            group.controller.desk.pending_drops["a"] = 1  # as if it died before dropping
            await group.controller.commit_traffic({})  # saved with the next revision
        restarted = Controller(ControlSettings(tmp_path), live_store=live, liveness_s=0.1)
        await restarted.start()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while [v.version for v in restarted.state.models["a"].versions] != [2]:
                assert asyncio.get_running_loop().time() < deadline, restarted.state.models["a"]
                await asyncio.sleep(0.02)
            assert restarted.desk.pending_drops == {}
        finally:
            await restarted.stop()

    run(test)
