"""Every error code has exactly one HTTP status and one gRPC code."""

from __future__ import annotations

import grpc

from serving.errors import ErrorCode
from serving.status import STATUS, grpc_status, http_status


def test_every_code_is_mapped_once() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert len({s.http for s in STATUS.values()}) == len(ErrorCode)
    assert len({s.grpc for s in STATUS.values()}) == len(ErrorCode)


def test_known_pairs() -> None:
    assert (http_status(ErrorCode.INVALID_ARGUMENT), grpc_status(ErrorCode.INVALID_ARGUMENT)) == (
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert http_status(ErrorCode.UNAVAILABLE) == 503
    assert grpc_status(ErrorCode.DEADLINE_EXCEEDED) is grpc.StatusCode.DEADLINE_EXCEEDED
