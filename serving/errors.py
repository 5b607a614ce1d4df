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
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class ServingError(Exception):
    """Base class: a message for the client and an :class:`ErrorCode`."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take keyword-only fields; rebuild from the attributes, so that an error
        # raised in the controller reaches a replica (through Ray) as itself.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ServingError], message: str, state: dict[str, object]) -> ServingError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


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

    def __init__(self, *, size: int, limit: int, inflated: bool = False) -> None:
        what = f"request of {size} bytes" if not inflated else "request body inflates to more"
        super().__init__(f"{what} exceeds the limit of {limit} bytes (max_request_bytes)")
        self.size = size
        self.limit = limit


class LimitExceededError(ServingError):
    """A request asks for more than an input limit allows (elements, dims, element size)."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, setting: str | None) -> None:
        if setting is not None:
            message += f" (the server's {setting} setting)"
        super().__init__(message)
        self.setting = setting


class DeadlineExceededError(ServingError):
    """The request waited longer than its timeout."""

    code = ErrorCode.DEADLINE_EXCEEDED

    def __init__(self, *, timeout_ms: float) -> None:
        super().__init__(f"request timed out after {timeout_ms:g} ms before it could run")
        self.timeout_ms = timeout_ms


class ModelLoadError(ServingError):
    """A model control load failed; what was served before keeps serving."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, *, model: str, problems: list[str]) -> None:
        super().__init__(f"load failed for model '{model}': " + "; ".join(problems))
        self.model = model
        self.problems = problems


class ModelControlDisabledError(ServingError):
    """Model control changes are refused in this model control mode (as Triton: UNAVAILABLE)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, *, mode: str) -> None:
        super().__init__(
            f"explicit model load / unload is not allowed in model control mode '{mode}' "
            "(start the server with --model-control-mode explicit)"
        )
        self.mode = mode


class ControlPlaneUnavailableError(ServingError):
    """The controller could not be reached in time; inference is unaffected."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, *, what: str, detail: str) -> None:
        super().__init__(f"{what} needs the controller, which is unavailable: {detail}")
        self.retry_after_s = 1.0


class PermissionDeniedError(ServingError):
    """The caller may not do this."""

    code = ErrorCode.PERMISSION_DENIED


class UnauthenticatedError(ServingError):
    """The call carries no credential, or one this server does not know."""

    code = ErrorCode.UNAUTHENTICATED


class NotFoundError(ServingError):
    """Something other than a model that the request names does not exist (a rollout)."""

    code = ErrorCode.NOT_FOUND


class ConflictError(ServingError):
    """The request cannot be carried out in the current state: a rollout already manages the
    model's traffic, or a candidate fails its gate."""

    code = ErrorCode.CONFLICT


class InternalError(ServingError):
    """A fault inside the server; details go to the log, not to the client."""

    code = ErrorCode.INTERNAL
