"""KServe v2 over HTTP: routes that unwrap the transport and call the dataplane."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import zlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.dataplane import DataPlane
from serving.errors import InvalidInputError, OverloadedError, PayloadTooLargeError, ServingError
from serving.protocol import rest
from serving.status import http_status

logger = logging.getLogger(__name__)

JSON = "application/json"
CLIENT_CLOSED = 499  # nginx's code for "client closed request"; nobody is left to read it
T = TypeVar("T")


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type=JSON)


def error_response(error: ServingError) -> Response:
    response = _json({"error": error.message}, http_status(error.code))
    if isinstance(error, OverloadedError):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return response


def build_app(dataplane: DataPlane, *, max_request_bytes: int) -> Starlette:
    def version_of(request: Request) -> str | None:
        version = request.path_params.get("version")
        if version is not None and not version.isdigit():
            raise InvalidInputError(f"model version must be a positive integer, got '{version}'")
        return None if version is None else str(version)

    async def live(request: Request) -> Response:
        return Response(status_code=200 if dataplane.live() else 503)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if dataplane.ready() else 503)

    async def server_metadata(request: Request) -> Response:
        return _json(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["model"]
        return _json(dataplane.model_metadata(name, version_of(request)))

    async def model_ready(request: Request) -> Response:
        name = request.path_params["model"]
        ok = dataplane.model_ready(name, version_of(request))
        return Response(status_code=200 if ok else 503)

    async def model_config(request: Request) -> Response:
        name = request.path_params["model"]
        return _json(dataplane.model_config(name, version_of(request)))

    async def statistics(request: Request) -> Response:
        name = request.path_params.get("model")
        return _json(dataplane.statistics(name, version_of(request)))

    async def repository_index(request: Request) -> Response:
        body = await request.body()
        ready_only = False
        if body.strip():
            try:
                ready_only = bool(orjson.loads(body).get("ready", False))
            except (orjson.JSONDecodeError, AttributeError):
                raise InvalidInputError("repository index body must be a JSON object") from None
        return _json(dataplane.repository_index(ready_only))

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        version = version_of(request)
        target = dataplane.require(name, version)
        body = await _read_body(request, max_request_bytes)
        header = request.headers.get(rest.HEADER_LENGTH)
        header_length = None
        if header is not None:
            try:
                header_length = int(header)
            except ValueError:
                raise InvalidInputError(
                    f"Inference-Header-Content-Length must be an integer, got '{header}'"
                ) from None
        infer_request = rest.decode_request(
            body, header_length, model_name=name, model_version=version
        )
        # A queued request is worth dropping when its client leaves; watching costs two tasks.
        if target.would_queue:
            response = await _unless_disconnected(request, dataplane.infer(infer_request, target))
            if response is None:
                return Response(status_code=CLIENT_CLOSED)
        else:
            response = await dataplane.infer(infer_request, target)
        payload, json_length = rest.encode_response(response, infer_request)
        if json_length is None:
            return Response(payload, media_type=JSON)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    async def on_serving_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ServingError)
        return error_response(error)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return _json({"error": f"{error.detail}: {request.method} {request.url.path}"},
                     error.status_code)  # fmt: skip

    async def on_unexpected(request: Request, error: Exception) -> Response:
        logger.error("unhandled error on %s", request.url.path, exc_info=error)
        return _json({"error": "internal server error"}, 500)

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/stats", statistics),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
    ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, model_metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/config", model_config),
            Route(prefix + "/stats", statistics),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    return Starlette(
        routes=routes,
        exception_handlers={
            ServingError: on_serving_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``, cancelling it if the client disconnects first (it leaves any queue)."""
    task = asyncio.ensure_future(work)
    # Once the body is read, the next ASGI message is the client's disconnect.
    watcher = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if watcher.result().get("type") != "http.disconnect":
        return await task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(size=int(declared), limit=limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(size=size, limit=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding == "gzip":
            decoded = gzip.decompress(body)
        elif encoding == "deflate":
            decoded = zlib.decompress(body)
        else:
            raise InvalidInputError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate)")
    except (OSError, zlib.error, EOFError) as error:
        raise InvalidInputError(f"request body is not valid {encoding}: {error}") from None
    if len(decoded) > limit:
        raise PayloadTooLargeError(size=len(decoded), limit=limit)
    return decoded
