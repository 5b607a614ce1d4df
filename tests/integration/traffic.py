"""Continuous load for tests that change what is served: every answer is checked and counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.clients import In, V2Client

Check = Callable[[dict[str, np.ndarray]], None]
"""Raises if a response's outputs are wrong."""
Inputs = Sequence[In] | Callable[[], list[In]]
"""The same inputs for every request, or a function that draws each request's."""


@dataclass
class Tally:
    answered: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    first_sent: dict[str, float] = field(default_factory=dict)
    last_sent: dict[str, float] = field(default_factory=dict)
    """By version: when (``time.monotonic()``) the first and the latest request it answered
    were sent."""
    first_failure_sent: float | None = None
    last_failure_sent: float | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Traffic:
    """``senders`` threads per protocol (HTTP and gRPC, each on a connection of its own, and
    one HTTP sender that opens a new connection per request, so that every replica gets some)
    send ``inputs`` to ``model``'s default version until stopped; with ``rate_per_s``, paced
    to about that many requests a second in all."""

    def __init__(
        self,
        http_url: str,
        grpc_url: str,
        model: str,
        inputs: Inputs,
        check: Check,
        *,
        senders: int = 2,
        rate_per_s: float | None = None,
    ) -> None:
        self._urls = (http_url, grpc_url)
        self._model = model
        self._inputs = inputs
        self._check = check
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.tally = Tally()
        self.in_flight = 0
        """Requests sent and not yet answered, now."""
        plans = ["http"] * senders + ["grpc"] * senders + ["http_fresh"]
        self._interval = 0.0 if rate_per_s is None else len(plans) / rate_per_s
        self._threads = [threading.Thread(target=self._send, args=(p,), daemon=True) for p in plans]

    def __enter__(self) -> Traffic:
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._ended = time.monotonic()

    @property
    def rate_per_s(self) -> float:
        """Requests answered or failed a second, over the whole run."""
        seconds = getattr(self, "_ended", time.monotonic()) - self._began
        return (self.tally.answered + self.tally.failed) / seconds

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
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._interval:
                next_at += self._interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
            if plan == "http_fresh":
                client = V2Client("http", http_url, grpc_url)
            inputs = list(self._inputs()) if callable(self._inputs) else list(self._inputs)
            sent = time.monotonic()
            with self._lock:
                self.in_flight += 1
            try:
                result = client.infer(self._model, inputs)
                self._check(result.outputs)
            except (httpclient.InferenceServerException, grpcclient.InferenceServerException) as e:
                self._count(f"{type(e).__name__} {e.status()}: {e.message()}", None, sent)
            except Exception as error:  # a wrong answer, a dropped connection
                self._count(f"{type(error).__name__}: {error}", None, sent)
            else:
                self._count(None, result.model_version, sent)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def _count(self, failure: str | None, version: str | None, sent: float) -> None:
        with self._lock:
            tally = self.tally
            if failure is None:
                tally.answered += 1
                shown = version or ""
                tally.versions[shown] += 1
                tally.first_sent.setdefault(shown, sent)
                tally.last_sent[shown] = max(sent, tally.last_sent.get(shown, sent))
            else:
                tally.failures[failure] += 1
                if tally.first_failure_sent is None or sent < tally.first_failure_sent:
                    tally.first_failure_sent = sent
                tally.last_failure_sent = max(sent, tally.last_failure_sent or sent)
