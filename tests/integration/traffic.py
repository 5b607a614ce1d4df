"""Continuous load for tests that change what is served: every answer is checked and counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.clients import In, V2Client

Check = Callable[[dict[str, np.ndarray]], None]
"""Raises if a response's outputs are wrong."""


@dataclass
class Tally:
    answered: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Traffic:
    """``senders`` threads per protocol (HTTP and gRPC, each on a connection of its own, and
    one HTTP sender that opens a new connection per request, so that every replica gets some)
    send ``inputs`` to ``model``'s default version until stopped."""

    def __init__(
        self,
        http_url: str,
        grpc_url: str,
        model: str,
        inputs: list[In],
        check: Check,
        *,
        senders: int = 2,
    ) -> None:
        self._urls = (http_url, grpc_url)
        self._model = model
        self._inputs = inputs
        self._check = check
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.tally = Tally()
        plans = ["http"] * senders + ["grpc"] * senders + ["http_fresh"]
        self._threads = [threading.Thread(target=self._send, args=(p,), daemon=True) for p in plans]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for(self, answers: int, timeout_s: float = 30.0) -> None:
        """Until at least ``answers`` more requests have been answered."""
        target = self.tally.answered + answers
        deadline = time.monotonic() + timeout_s
        while self.tally.answered < target:
            assert time.monotonic() < deadline, f"traffic stalled: {self.tally}"
            time.sleep(0.02)

    def _send(self, plan: str) -> None:
        http_url, grpc_url = self._urls
        client = V2Client("http" if plan.startswith("http") else "grpc", http_url, grpc_url)
        while not self._stop.is_set():
            if plan == "http_fresh":
                client = V2Client("http", http_url, grpc_url)
            try:
                result = client.infer(self._model, self._inputs)
                self._check(result.outputs)
            except (httpclient.InferenceServerException, grpcclient.InferenceServerException) as e:
                self._count(f"{type(e).__name__} {e.status()}: {e.message()}", None)
            except Exception as error:  # a wrong answer, a dropped connection
                self._count(f"{type(error).__name__}: {error}", None)
            else:
                self._count(None, result.model_version)

    def _count(self, failure: str | None, version: str | None) -> None:
        with self._lock:
            if failure is None:
                self.tally.answered += 1
                self.tally.versions[version or ""] += 1
            else:
                self.tally.failures[failure] += 1
