"""KServe v2 over HTTP: routes that unwrap the transport and call the dataplane."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from serving.dataplane import CLIENT_CLOSED, DataPlane
from serving.errors import (
    ControlPlaneUnavailableError,
    ErrorCode,
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    ServingError,
)
from serving.observe.logs import REQUEST_ID, TRACEPARENT, begin_trace
from serving.protocol import rest
from serving.protocol.limits import DEFAULT_LIMITS, OFFLOAD_BYTES, OFFLOAD_CONCURRENCY, InputLimits
from serving.security.auth import Access, Authenticator
from serving.status import http_status
from serving.traffic.routing import ROUTING_KEY, VERSION_HEADER

logger = logging.getLogger(__name__)

JSON = "application/json"
SERVED_BY = "Served-By"
ADMIN_BODY_BYTES = 1024 * 1024
"""Model control and index bodies are small (a config override at most)."""
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type=JSON)


def error_response(error: ServingError) -> Response:
    response = _json({"error": error.message}, http_status(error.code))
    if error.code is ErrorCode.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, OverloadedError | ControlPlaneUnavailableError):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return response


def _optional_json(body: bytes | bytearray, what: str) -> dict[str, Any]:
    """A small JSON-object body that may be empty."""
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInputError(f"{what} body must be a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"{what} body must be a JSON object")
    return document


def _parameters(document: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"{what} 'parameters' must be a JSON object")
    return parameters


def build_app(
    dataplane: DataPlane,
    *,
    max_request_bytes: int,
    served_by: str | None = None,
    auth: Authenticator | None = None,
    limits: InputLimits | None = None,
) -> Starlette:
    """The v2 REST routes over ``dataplane``. ``served_by`` (replica and node) goes out in a
    ``Served-By`` header on every inference response; ``auth`` decides who may call each
    route (by default: anyone, admin calls from loopback); ``limits`` bound what one request
    may make the replica allocate."""
    served = {SERVED_BY: served_by} if served_by else {}
    auth = auth or Authenticator()
    limits = limits or DEFAULT_LIMITS
    decoding = asyncio.Semaphore(OFFLOAD_CONCURRENCY)

    def guard(access: Access, endpoint: Endpoint) -> Endpoint:
        if access == "open" or (access == "infer" and not auth.enabled):
            return endpoint  # nothing to check: no cost on the request path

        async def checked(request: Request) -> Response:
            peer = request.client.host if request.client else None
            auth.check(access, request.headers.get("authorization"), peer, protocol="http")
            return await endpoint(request)

        return checked

    def health(ok: bool, key: str) -> Response:
        return _json({key: ok}, 200 if ok else 503)

    async def live(request: Request) -> Response:
        return health(dataplane.live(), "live")

    async def ready(request: Request) -> Response:
        return health(dataplane.ready(), "ready")

    async def healthz(request: Request) -> Response:
        # KubeRay's RayService admits a pod to its serve Service once this says "success".
        ok = dataplane.ready()
        return PlainTextResponse("success" if ok else "not ready", 200 if ok else 503)

    async def drain(request: Request) -> Response:
        answer = _json(dataplane.drain())
        answer.headers.update(served)  # which replica is leaving
        return answer

    async def server_metadata(request: Request) -> Response:
        return _json(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return _json(dataplane.model_metadata(params["model"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        name = request.path_params["model"]
        ok = dataplane.model_ready(name, request.path_params.get("version"))
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def model_config(request: Request) -> Response:
        params = request.path_params
        return _json(dataplane.model_config(params["model"], params.get("version")))

    async def statistics(request: Request) -> Response:
        params = request.path_params
        return _json(await dataplane.statistics(params.get("model"), params.get("version")))

    async def summary(request: Request) -> Response:
        return _json(await dataplane.summary())

    async def drift(request: Request) -> Response:
        params = request.path_params
        return _json(await dataplane.drift(params["model"], params.get("version")))

    async def repository_index(request: Request) -> Response:
        document = _optional_json(await _read_body(request, ADMIN_BODY_BYTES), "repository index")
        ready_only = document.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInputError("repository index 'ready' must be a boolean")
        return _json(await dataplane.repository_index(ready_only))

    async def load(request: Request) -> Response:
        document = _optional_json(await _read_body(request, ADMIN_BODY_BYTES), "load")
        parameters = _parameters(document, "load")
        await dataplane.load_model(request.path_params["model"], parameters)
        return Response(status_code=200, media_type=JSON)

    async def unload(request: Request) -> Response:
        document = _optional_json(await _read_body(request, ADMIN_BODY_BYTES), "unload")
        parameters = _parameters(document, "unload")
        await dataplane.unload_model(request.path_params["model"], parameters)
        return Response(status_code=200, media_type=JSON)

    async def traffic(request: Request) -> Response:
        name = request.path_params["model"]
        if request.method == "GET":
            return _json(await dataplane.traffic.show(name))
        document = _optional_json(await _read_body(request, ADMIN_BODY_BYTES), "traffic")
        return _json(await dataplane.traffic.set(name, document))

    async def rollout(request: Request) -> Response:
        name = request.path_params["model"]
        if request.method == "GET":
            document = await dataplane.traffic.rollout(name)
            # ?check=1: a plain pass/fail by status code, for webhooks (Flagger) that gate on it
            unhealthy = request.query_params.get("check") and not document["healthy"]
            return _json(document, 503 if unhealthy else 200)
        document = _optional_json(await _read_body(request, ADMIN_BODY_BYTES), "rollout")
        return _json(await dataplane.traffic.start_rollout(name, document))

    async def rollout_action(request: Request) -> Response:
        params = request.path_params
        await _read_body(request, ADMIN_BODY_BYTES)
        return _json(await dataplane.traffic.rollout_action(params["model"], params["action"]))

    access_log = dataplane.access_log

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        headers = request.headers
        trace = begin_trace(
            headers.get(TRACEPARENT), headers.get(REQUEST_ID), always=access_log.enabled
        )
        key = headers.get(ROUTING_KEY)
        with dataplane.observe("http", name, version, trace) as call:
            target = call.target = dataplane.require(name, version, key)
            try:
                body = await _read_body(request, max_request_bytes)
            except ClientDisconnect:  # gone before its body arrived: nobody to answer
                call.status = CLIENT_CLOSED
                return Response(status_code=CLIENT_CLOSED)
            header = headers.get(rest.HEADER_LENGTH)
            header_length = None
            if header is not None:
                try:
                    header_length = int(header)
                except ValueError:
                    raise InvalidInputError(
                        f"Inference-Header-Content-Length must be an integer, got '{header}'"
                    ) from None
            if len(body) <= OFFLOAD_BYTES:
                infer_request = rest.decode_request(
                    body, header_length, model_name=name, model_version=version, limits=limits
                )
            else:  # seconds of parsing, perhaps: not on the loop that answers everyone else
                async with decoding:
                    infer_request = await asyncio.to_thread(
                        functools.partial(
                            rest.decode_request,
                            body,
                            header_length,
                            model_name=name,
                            model_version=version,
                            limits=limits,
                        )
                    )
            # A queued request is worth dropping when its client leaves; watching costs two
            # tasks.
            if target.scheduler.would_queue:
                response = await _unless_disconnected(
                    request, dataplane.infer(infer_request, call, target, key)
                )
                if response is None:
                    call.status = CLIENT_CLOSED
                    return Response(status_code=CLIENT_CLOSED)
            else:
                response = await dataplane.infer(infer_request, call, target, key)
            payload, json_length = rest.encode_response(response, infer_request)
        extra = {VERSION_HEADER: response.model_version, **served}
        if trace is not None:
            extra[TRACEPARENT] = trace.traceparent
        if json_length is None:
            return Response(payload, media_type=JSON, headers=extra)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length), **extra},
        )

    async def on_serving_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ServingError)
        return error_response(error)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return _json({"error": f"{error.detail}: {request.method} {request.url.path}"},
                     error.status_code)  # fmt: skip

    async def on_disconnect(request: Request, error: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # the client left while its body was read

    async def on_unexpected(request: Request, error: Exception) -> Response:
        logger.error("unhandled error on %s", request.url.path, exc_info=error)
        return _json({"error": "internal server error"}, 500)

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    repository = "/v2/repository/models/{model}"
    # Starlette tries routes in order: inference first, it is what every request wants.
    declared: list[tuple[str, Endpoint, list[str], Access]] = [
        (model + "/infer", infer, ["POST"], "infer"),
        (versioned + "/infer", infer, ["POST"], "infer"),
        ("/v2/health/live", live, ["GET"], "open"),
        ("/v2/health/ready", ready, ["GET"], "open"),
        ("/-/healthz", healthz, ["GET"], "open"),
        ("/-/drain", drain, ["POST"], "local"),
        ("/v2", server_metadata, ["GET"], "infer"),
        ("/v2/models/stats", statistics, ["GET"], "infer"),
        ("/v2/-/summary", summary, ["GET"], "infer"),
        ("/v2/repository/index", repository_index, ["POST"], "infer"),
        (repository + "/load", load, ["POST"], "admin"),
        (repository + "/unload", unload, ["POST"], "admin"),
        (model + "/traffic", traffic, ["GET"], "infer"),
        (model + "/traffic", traffic, ["POST"], "admin"),
        (model + "/rollout", rollout, ["GET"], "infer"),
        (model + "/rollout", rollout, ["POST"], "admin"),
        (model + "/rollout/{action}", rollout_action, ["POST"], "admin"),
    ]
    for prefix in (model, versioned):
        declared += [
            (prefix, model_metadata, ["GET"], "infer"),
            (prefix + "/ready", model_ready, ["GET"], "open"),
            (prefix + "/config", model_config, ["GET"], "infer"),
            (prefix + "/stats", statistics, ["GET"], "infer"),
            (prefix + "/drift", drift, ["GET"], "infer"),
        ]
    routes = [
        Route(path, guard(access, endpoint), methods=methods)
        for path, endpoint, methods, access in declared
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            ServingError: on_serving_error,
            HTTPException: on_http_error,
            ClientDisconnect: on_disconnect,
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


async def _read_body(request: Request, limit: int) -> bytearray:
    """The body, inflated as it arrives when it is gzip or deflate, and refused as soon as it
    (or what it inflates to) passes ``limit``: nothing beyond the limit is ever held."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(size=int(declared), limit=limit)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in _WBITS:
        inflater = zlib.decompressobj(_WBITS[encoding])
    else:
        raise InvalidInputError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate)")
    body = bytearray()  # grown in place: no list of chunks joined into a second copy
    received = size = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(size=received, limit=limit)
        if inflater is None:
            size += len(chunk)
            body += chunk
            continue
        while chunk:  # a step at a time: one small chunk may inflate a thousandfold
            try:
                out = inflater.decompress(chunk, min(INFLATE_STEP, limit - size + 1))
            except zlib.error as error:
                raise InvalidInputError(f"request body is not valid {encoding}: {error}") from None
            size += len(out)
            if size > limit:
                raise PayloadTooLargeError(size=size, limit=limit, inflated=True)
            body += out
            chunk = inflater.unconsumed_tail
    if inflater is not None and (not inflater.eof or inflater.unused_data):
        problem = "ends before its stream does" if not inflater.eof else "has data after it"
        raise InvalidInputError(f"request body is not valid {encoding}: it {problem}")
    return body


INFLATE_STEP = 1024 * 1024
"""Most bytes inflated at once from a compressed body."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib's window bits for each Content-Encoding: gzip's header and trailer, or zlib's."""
