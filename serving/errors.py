"""The errors the serving layer raises.

Each error carries an :class:`ErrorCode`; ``status.py`` maps codes to HTTP statuses and gRPC codes.
Nothing here knows about a transport.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """What went wrong, independent of the transport that reports it."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class ServingError(Exception):
    """Base class: a message for the client and an :class:`ErrorCode`."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServingError):
    """The request is malformed or does not match the model's signature."""

    code = ErrorCode.INVALID_ARGUMENT


class ModelNotFoundError(ServingError):
    """No such model, or no such version of it, in the repository."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, *, model: str, version: str | None = None, known: list[str]) -> None:
        if version is None:
            what = f"unknown model '{model}'"
        else:
            what = f"unknown version '{version}' of model '{model}'"
        listing = ", ".join(known) if known else "none"
        noun = "versions" if version is not None else "models"
        super().__init__(f"{what} (available {noun}: {listing})")
        self.model = model
        self.version = version


class ModelNotReadyError(ServingError):
    """The model exists but cannot serve: it failed to load, or is still loading."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, *, model: str, version: str | None, reason: str) -> None:
        target = f"model '{model}'" + (f" version {version}" if version else "")
        super().__init__(f"{target} is not ready: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


class OverloadedError(ServingError):
    """Too much work is queued; the client should retry later."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, *, queued: int, max_queued: int, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"server overloaded: {queued} requests queued, limit is {max_queued}; retry later"
        )
        self.queued = queued
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(ServingError):
    """The request exceeds a configured size limit."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(f"request of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DeadlineExceededError(ServingError):
    """The request waited longer than its timeout."""

    code = ErrorCode.DEADLINE_EXCEEDED

    def __init__(self, *, timeout_ms: float) -> None:
        super().__init__(f"request timed out after {timeout_ms:g} ms before it could run")
        self.timeout_ms = timeout_ms


class InternalError(ServingError):
    """A fault inside the server; details go to the log, not to the client."""

    code = ErrorCode.INTERNAL
