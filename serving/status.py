"""The one table that maps an :class:`ErrorCode` to an HTTP status and a gRPC status code."""

from __future__ import annotations

from typing import NamedTuple

import grpc

from serving.errors import ErrorCode


class TransportStatus(NamedTuple):
    http: int
    grpc: grpc.StatusCode


STATUS: dict[ErrorCode, TransportStatus] = {
    ErrorCode.INVALID_ARGUMENT: TransportStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.NOT_FOUND: TransportStatus(404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.UNAVAILABLE: TransportStatus(503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.RESOURCE_EXHAUSTED: TransportStatus(413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.DEADLINE_EXCEEDED: TransportStatus(504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorCode.PERMISSION_DENIED: TransportStatus(403, grpc.StatusCode.PERMISSION_DENIED),
    ErrorCode.UNAUTHENTICATED: TransportStatus(401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorCode.CONFLICT: TransportStatus(409, grpc.StatusCode.FAILED_PRECONDITION),
    ErrorCode.INTERNAL: TransportStatus(500, grpc.StatusCode.INTERNAL),
}


def http_status(code: ErrorCode) -> int:
    return STATUS[code].http


def grpc_status(code: ErrorCode) -> grpc.StatusCode:
    return STATUS[code].grpc
