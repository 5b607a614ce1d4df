"""One node's metrics, whichever of its replicas a scrape lands on.

The replicas of a node share the metrics port (SO_REUSEPORT), so a scrape reaches one of them
at random; each must answer for the node. Every replica writes a snapshot of its cumulative
windows and gauges to a file of its own in the node's directory for this server start
(:func:`metrics_directory`), at most every ``flush_s`` and only when something changed
(``os.replace`` of a JSON file: a reader never sees half of one). A scrape adds the answering
replica's live state to its siblings' latest snapshots. The request path pays nothing for this:
requests are counted once, in the windows, by the same call the v2 statistics use; the cost is
a background write every ``flush_s`` while traffic flows, and reading a few small files per
scrape. (prometheus-client's multiprocess mode would make each request pay its file writes:
2.5 µs per observation against 0.9 µs in one process, about ten observations a request.)

A sibling's snapshot may be up to ``flush_s`` old when it is read; counters of replicas that
stopped stay counted (the node's totals never go back), their gauges do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from serving.observe.metrics import DriftGauge, NodeCollector, NodeView
from serving.observe.stats import Key, ShadowKey, ShadowStats, StatsWindow
from serving.traffic.routing import TrafficPolicy

logger = logging.getLogger(__name__)

FLUSH_S = 0.1
"""How often a replica's snapshot is rewritten while it changes."""


def metrics_directory(port: int, run: str) -> Path:
    """The node's directory for one server start (``run``), on the metrics ``port``."""
    return Path(tempfile.gettempdir()) / "serving-metrics" / f"{port}-{run}"


@dataclass
class ReplicaSnapshot:
    """One replica's cumulative counters and current gauges."""

    pid: int
    replica: str
    ready: bool = False
    windows: dict[Key, StatsWindow] = field(default_factory=dict)
    in_flight: dict[Key, int] = field(default_factory=dict)
    queued: dict[Key, int] = field(default_factory=dict)
    loaded: list[Key] = field(default_factory=list)
    loads: dict[str, list[float]] = field(default_factory=dict)
    shadow: dict[ShadowKey, ShadowStats] = field(default_factory=dict)
    auth_failures: dict[tuple[str, str], int] = field(default_factory=dict)
    """Calls refused for their credential, by (protocol, reason)."""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "pid": self.pid,
                "replica": self.replica,
                "ready": self.ready,
                "windows": [[m, v, w.to_json()] for (m, v), w in self.windows.items()],
                "in_flight": [[m, v, n] for (m, v), n in self.in_flight.items()],
                "queued": [[m, v, n] for (m, v), n in self.queued.items()],
                "loaded": [[m, v] for m, v in self.loaded],
                "loads": self.loads,
                "shadow": [[*key, stats.to_json()] for key, stats in self.shadow.items()],
                "auth_failures": [[p, r, n] for (p, r), n in self.auth_failures.items()],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> ReplicaSnapshot:
        document: dict[str, Any] = orjson.loads(data)
        return cls(
            pid=document["pid"],
            replica=document["replica"],
            ready=document["ready"],
            windows={(m, v): StatsWindow.from_json(w) for m, v, w in document["windows"]},
            in_flight={(m, v): n for m, v, n in document["in_flight"]},
            queued={(m, v): n for m, v, n in document["queued"]},
            loaded=[(m, v) for m, v in document["loaded"]],
            loads=document["loads"],
            shadow={
                (m, p, v): ShadowStats.from_json(stats)
                for m, p, v, stats in document.get("shadow", [])
            },
            auth_failures={(p, r): n for p, r, n in document.get("auth_failures", [])},
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_view(
    snapshots: list[ReplicaSnapshot],
    drift: list[DriftGauge],
    traffic: Mapping[str, TrafficPolicy] | None = None,
) -> NodeView:
    """Add up ``snapshots``: every counter, and the gauges of replicas whose process lives;
    the traffic tables' weights and rollback counts as given (the same on every replica)."""
    view = NodeView(drift=drift)
    for model, policy in sorted((traffic or {}).items()):
        for version, count in policy.rollbacks:
            view.rollbacks[model, version] = count
        for version, share in policy.weights:
            view.weights[model, version] = share
    for snapshot in snapshots:
        for key, window in snapshot.windows.items():
            view.windows.setdefault(key, StatsWindow()).add(window)
        for pair, stats in snapshot.shadow.items():
            view.shadow.setdefault(pair, ShadowStats()).add(stats)
        for model, seconds in snapshot.loads.items():
            view.loads.setdefault(model, []).extend(seconds)
        for refused, n in snapshot.auth_failures.items():
            view.auth_failures[refused] = view.auth_failures.get(refused, 0) + n
        if not _alive(snapshot.pid):
            continue
        view.ready += snapshot.ready
        for key in snapshot.loaded:
            view.loaded[key] = view.loaded.get(key, 0) + 1
        for key, n in snapshot.in_flight.items():
            view.in_flight[key] = view.in_flight.get(key, 0) + n
        for key, n in snapshot.queued.items():
            view.queued[key] = view.queued.get(key, 0) + n
    return view


class NodeMetrics:
    """A replica's part in its node's metrics: it keeps its snapshot file current and renders
    the node's exposition for the scrapes it answers."""

    def __init__(
        self,
        directory: Path,
        snapshot: Callable[[], ReplicaSnapshot],
        *,
        triton_aliases: bool = False,
        drift: Callable[[], list[DriftGauge]] = list,
        traffic: Callable[[], Mapping[str, TrafficPolicy]] = dict,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.directory = directory
        self._snapshot = snapshot
        self._flush_s = flush_s
        self._triton_aliases = triton_aliases
        self._written = b""
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._drift = drift
        """The latest drift scores the controller gave (cluster-wide, the same on every node)."""
        self._traffic = traffic
        """The replica's traffic tables (the controller's, the same on every replica)."""

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.directory)
        own = self._snapshot()
        self._path = self.directory / f"{own.pid}-{_safe(own.replica)}.json"
        self.flush()
        self._task = asyncio.create_task(self._flush_loop(), name="metrics-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.flush(ready=False)

    def flush(self, *, ready: bool | None = None) -> None:
        """Write this replica's snapshot if it changed since the last write."""
        if self._path is None:
            return
        snapshot = self._snapshot()
        if ready is not None:
            snapshot.ready = ready
        data = snapshot.to_json()
        if data == self._written:
            return
        partial = self._path.with_suffix(".tmp")
        partial.write_bytes(data)
        os.replace(partial, self._path)
        self._written = data

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                self.flush()
            except OSError as error:
                logger.warning("could not write the metrics snapshot: %s", error)

    def siblings(self) -> list[ReplicaSnapshot]:
        """The latest snapshots of the node's other replicas (this server start)."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            if path == self._path:
                continue
            try:
                found.append(ReplicaSnapshot.from_json(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.warning("skipped the metrics snapshot %s: %s", path.name, error)
        return found

    async def render(self) -> bytes:
        """The node's exposition: this replica's live state (taken on the event loop) and its
        siblings' files (read, with the text rendered, off it)."""
        own = self._snapshot()
        drift = list(self._drift())
        traffic = dict(self._traffic())
        return await asyncio.to_thread(self._render, own, drift, traffic)

    def _render(
        self, own: ReplicaSnapshot, drift: list[DriftGauge], traffic: dict[str, TrafficPolicy]
    ) -> bytes:
        view = node_view([own, *self.siblings()], drift, traffic)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(lambda: view, triton_aliases=self._triton_aliases))
        return generate_latest(registry)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def _remove_stale(directory: Path) -> None:
    """Remove the directories of earlier server starts on this port whose replicas are gone."""
    port = directory.name.split("-", 1)[0]
    for other in directory.parent.glob(f"{port}-*"):
        if other == directory or not other.is_dir():
            continue
        pids = []
        for path in other.glob("*.json"):
            with contextlib.suppress(ValueError):
                pids.append(int(path.name.split("-", 1)[0]))
        if not any(_alive(pid) for pid in pids):
            shutil.rmtree(other, ignore_errors=True)
