"""A real Prometheus server for tests: loopback only, scraping given targets every 0.5 s, with
the project's alerting rules loaded; queried over its HTTP API."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "monitoring" / "alerts.yml"
_found = shutil.which("promtool")
PROMTOOL = Path(_found) if _found else None
SCRAPE_S = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, directory: Path, *, targets: list[str]) -> None:
        self._directory = directory
        self._targets = targets
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Prometheus:
        config = {
            "global": {
                "scrape_interval": f"{round(SCRAPE_S * 1000)}ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "serving", "static_configs": [{"targets": self._targets}]}
            ],
        }
        path = self._directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        for _ in range(3):  # the port is free when chosen; another process may take it first
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            log = (self._directory / "prometheus.log").open("wb")
            self._process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={path}",
                    f"--storage.tsdb.path={self._directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return self
            self._stop()
        raise RuntimeError((self._directory / "prometheus.log").read_text()[-2000:])

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)

    def _wait_ready(self, timeout_s: float = 30) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return True
            time.sleep(0.2)
        return False

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def query(self, expression: str) -> float:
        """An instant query's single value."""
        result = self.get("/api/v1/query", query=expression)["data"]["result"]
        assert len(result) == 1, f"{expression}: {result}"
        return float(result[0]["value"][1])

    def wait_until_up(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"targets never came up: {targets}")

    def wait_for_scrape_after(self, moment: float, timeout_s: float = 30) -> None:
        """Until every target has been scraped after ``moment`` (epoch seconds), twice."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
            scraped = [_epoch(t["lastScrape"]) for t in targets]
            if scraped and min(scraped) > moment + SCRAPE_S:
                return
            time.sleep(0.2)
        raise TimeoutError("no scrape after the traffic")


def _epoch(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds; Python reads microseconds."""
    moment = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339.replace("Z", "+00:00"))
    return datetime.fromisoformat(moment).timestamp()
