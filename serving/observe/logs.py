"""Request tracing (W3C Trace Context) and structured access logs.

A request's ``traceparent`` (HTTP header or gRPC metadata) is kept with the request from the
transport through the batcher (as a context variable the batcher copies into each queued item),
answered with the same trace id and this server's own span id, and written with the request to
the access log: one JSON object per line on the ``serving.access`` logger, health checks left
out, on with ``serving serve --access-log``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from serving.dataplane import Call

TRACEPARENT = "traceparent"
REQUEST_ID = "x-request-id"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16

access_logger = logging.getLogger("serving.access")

current_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "serving_trace", default=None
)
"""The trace of the request the running task serves (the batcher reads it for its items)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Where a request sits in a distributed trace, and this server's span for it."""

    trace_id: str
    parent_id: str | None
    """The caller's span, when the request carried a valid ``traceparent``."""
    span_id: str
    flags: str = "00"
    request_id: str | None = None

    @classmethod
    def start(cls, traceparent: str | None, request_id: str | None = None) -> Trace:
        """Continue the caller's trace, or start one when ``traceparent`` is absent or invalid
        (W3C: a receiver that cannot parse it starts a new trace). Versions above 00 are read
        by their first four fields, as the spec asks."""
        span = secrets.token_hex(8)
        if traceparent:
            match = _TRACEPARENT.match(traceparent.strip().lower()[:55])
            if match is not None:
                version, trace_id, parent, flags = match.groups()
                if version != "ff" and trace_id != _INVALID_TRACE and parent != _INVALID_SPAN:
                    return cls(trace_id, parent, span, flags, request_id)
        return cls(secrets.token_hex(16), None, span, "00", request_id)

    @property
    def traceparent(self) -> str:
        """The header to answer with (and to pass downstream): this server's span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def begin_trace(traceparent: str | None, request_id: str | None, *, always: bool) -> Trace | None:
    """The trace of a request arriving now (``always``: even without a ``traceparent``, for
    the access log), made the running task's :data:`current_trace`; None when neither asks."""
    if traceparent is None and not always:
        return None
    trace = Trace.start(traceparent, request_id)
    current_trace.set(trace)
    return trace


class AccessLog:
    """JSON access-log lines for inference requests, when ``enabled``."""

    def __init__(self, *, enabled: bool, served_by: str | None = None) -> None:
        self.enabled = enabled
        self._served_by = served_by

    def write(self, call: Call, *, model: str, version: str, status: int, total_ns: int) -> None:
        trace = call.trace
        record = {
            "ts": round(time.time(), 6),  # a timestamp for people and log stores: wall-clock
            "request_id": trace.request_id if trace else None,
            "trace_id": trace.trace_id if trace else None,
            "span_id": trace.span_id if trace else None,
            "parent_id": trace.parent_id if trace else None,
            "model": model,
            "version": version,
            "protocol": call.protocol,
            "status": status,
            "latency_ms": round(total_ns / 1e6, 4),
            "queue_ms": round(call.queue_ns / 1e6, 4),
            "compute_ms": round(call.infer_ns / 1e6, 4),
            "rows": call.rows,
            "served_by": self._served_by,
        }
        access_logger.info(orjson.dumps(record).decode())
