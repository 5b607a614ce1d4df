"""Autoscaling on the server's own load, through Ray Serve's autoscaler.

Requests reach each replica's own HTTP and gRPC servers, never Ray Serve's router, so Serve's
default policy (ongoing requests it routed) would read zero. Ray Serve (2.5x and later) has a
supported hook for load a replica measures itself: the deployment's
``record_autoscaling_stats`` returns numbers that Serve samples on the replica, pushes to its
controller and averages per replica over ``look_back_period_s``, and a custom policy reads them
(``AutoscalingContext.aggregated_metrics``). We use that rather than setting replica counts
from our own controller: Serve's controller already owns the replica count, its delays (the
hysteresis: ``upscale_delay_s``, ``downscale_delay_s``), its bounds and its graceful stop, and a
second writer would fight it.

:func:`policy` runs in Serve's controller process on every control-loop step: it must be
quick and must not raise. It also tells the application's controller what it read and decided
(fire and forget, at most every ``REPORT_EVERY_S``), which ``/v2/-/summary`` and ``serving top``
show.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from serving.config import AutoscalingConfig

logger = logging.getLogger(__name__)

IN_FLIGHT = "serving_in_flight"
"""The metric each replica reports: requests inside it (queued or running)."""
POLICY = "serving.control.autoscaling:policy"
REPORT_EVERY_S = 0.5
METRICS_INTERVAL_S = 1.0
"""How often a replica pushes its samples to Serve's controller (Serve's default is 10 s, too
slow to add a replica in seconds; the field is marked deprecated, but Serve still reads it)."""


def serve_autoscaling_config(config: AutoscalingConfig) -> dict[str, Any]:
    """Ray Serve's ``autoscaling_config`` for ``config``."""
    return {
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "target_ongoing_requests": config.target_in_flight,
        "metrics_interval_s": METRICS_INTERVAL_S,
        "look_back_period_s": config.look_back_s,
        "upscale_delay_s": config.upscale_delay_s,
        "downscale_delay_s": config.downscale_delay_s,
        "aggregation_function": "mean",
        "policy": {"policy_function": POLICY},
    }


def desired_replicas(in_flight: float, target: float, low: int, high: int) -> int:
    """Replicas for ``in_flight`` requests at ``target`` per replica, within [low, high]."""
    wanted = math.ceil(in_flight / target - 1e-9) if in_flight > 0 else 0
    return max(low, min(high, wanted))


_reporters: dict[str, _Reporter] = {}
LOOKUP_EVERY_S = 10.0


def policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Ray Serve's custom autoscaling policy: replicas for the in-flight requests every replica
    reports (averaged over the look-back window), at the config's target per replica. Holds the
    current target while no replica has reported yet."""
    per_replica = (ctx.aggregated_metrics or {}).get(IN_FLIGHT) or {}
    if not per_replica:
        return ctx.target_num_replicas, {}
    in_flight = float(sum(per_replica.values()))
    desired = desired_replicas(
        in_flight,
        float(ctx.config.target_ongoing_requests),
        ctx.capacity_adjusted_min_replicas,
        ctx.capacity_adjusted_max_replicas,
    )
    reading = {
        "in_flight": round(in_flight, 3),
        "reporting_replicas": len(per_replica),
        "replicas": ctx.current_num_replicas,
        "target_replicas": ctx.target_num_replicas,
        "desired_replicas": desired,
        "target_in_flight": ctx.config.target_ongoing_requests,
        "min_replicas": ctx.capacity_adjusted_min_replicas,
        "max_replicas": ctx.capacity_adjusted_max_replicas,
    }
    try:
        _report(ctx.app_name, reading)
    except Exception:  # never let reporting stall Serve's control loop
        logger.debug("could not report the autoscaling reading", exc_info=True)
    return desired, {"in_flight": in_flight}


def _report(app: str, reading: dict[str, Any]) -> None:
    """Send ``reading`` to the app's controller, at most every ``REPORT_EVERY_S``. The handle is
    looked up in a thread (a GCS call must not stall Serve's loop) and again every
    ``LOOKUP_EVERY_S`` (the app may have been deleted and deployed again)."""
    now = time.monotonic()
    reporter = _reporters.setdefault(app, _Reporter())
    if now - reporter.sent < REPORT_EVERY_S:
        return
    reporter.sent = now
    if reporter.handle is None or now - reporter.looked_up > LOOKUP_EVERY_S:
        reporter.look_up(app, now)
    if reporter.handle is not None:
        reporter.handle.note_autoscaling.remote({**reading, "at": time.time()})


class _Reporter:
    def __init__(self) -> None:
        self.handle: Any = None
        self.sent = -math.inf
        self.looked_up = -math.inf
        self._looking = False

    def look_up(self, app: str, now: float) -> None:
        if self._looking:
            return
        self._looking, self.looked_up = True, now

        def find() -> None:
            from serving.control.actor import existing_controller

            try:
                self.handle = existing_controller(app)
            except Exception:
                self.handle = None
            finally:
                self._looking = False

        threading.Thread(target=find, name="autoscaling-lookup", daemon=True).start()
