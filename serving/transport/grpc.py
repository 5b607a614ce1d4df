"""KServe v2 over gRPC: a ``grpc.aio`` servicer that unwraps messages and calls the dataplane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serving.dataplane import DataPlane
from serving.errors import InvalidInputError, ModelNotFoundError, ServingError
from serving.observe.logs import REQUEST_ID, TRACEPARENT, begin_trace
from serving.protocol import grpc_codec
from serving.protocol.limits import DEFAULT_LIMITS, OFFLOAD_BYTES, OFFLOAD_CONCURRENCY, InputLimits
from serving.protocol.proto import grpc_service_pb2 as pb
from serving.protocol.proto import grpc_service_pb2_grpc as pb_grpc
from serving.protocol.proto import model_config_pb2 as config_pb
from serving.security.auth import Access, Authenticator
from serving.status import grpc_status
from serving.traffic.routing import ROUTING_KEY

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"


def client_message(error: Exception) -> str:
    """What the client is told: the error's own message, or a generic one for a fault."""
    if isinstance(error, ServingError):
        return error.message
    logger.error("unhandled error in a gRPC call", exc_info=error)
    return INTERNAL_MESSAGE


class _Wrapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that wraps each method's handler once and keeps the wrapped one."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return handler
        wrapped = self.wrap(method, handler)
        self._handlers[method] = wrapped
        return wrapped

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorInterceptor(_Wrapping):
    """Parses each request message itself (refusing before protobuf parses it an inference
    request over ``limits``, parsing large ones off the event loop) and turns exceptions from
    the handlers into status codes, through the one table."""

    def __init__(self, limits: InputLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self._limits = limits

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # Messages arrive as bytes and are parsed here, so that one that is not the method's
        # protobuf gets INVALID_ARGUMENT (as Triton answers) rather than grpc's UNKNOWN.
        deserialize = handler.request_deserializer or (lambda data: data)
        limits = self._limits
        checked = method in (SERVICE + "ModelInfer", SERVICE + "ModelStreamInfer")

        def parse(data: bytes) -> Any:
            if checked:
                grpc_codec.check_wire(data, limits)
            return deserialize(data)

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def guarded(data: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(await _parsed(parse, data), context)
                except ServingError as error:
                    await context.abort(grpc_status(error.code), error.message)
                except Exception as error:
                    await context.abort(grpc.StatusCode.INTERNAL, client_message(error))

            return grpc.unary_unary_rpc_method_handler(
                guarded, response_serializer=handler.response_serializer
            )
        if handler.stream_stream is not None:
            streaming = handler.stream_stream

            async def stream_guarded(
                messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async def requests() -> AsyncIterator[Any]:
                    async for data in messages:
                        yield await _parsed(parse, data)

                try:
                    async for response in streaming(requests(), context):
                        yield response
                except ServingError as error:
                    await context.abort(grpc_status(error.code), error.message)

            return grpc.stream_stream_rpc_method_handler(
                stream_guarded, response_serializer=handler.response_serializer
            )
        return handler  # the service has no other kind of method


async def _parsed(parse: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        if len(data) <= OFFLOAD_BYTES:
            return parse(data)
        return await asyncio.to_thread(parse, data)
    except DecodeError as error:
        raise InvalidInputError(f"the request is not a valid protobuf message: {error}") from None


def peer_host(peer: str) -> str:
    """The address in a gRPC peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    ``unix:/path``."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return "unix"
    return rest.rsplit(":", 1)[0].strip("[]")


SERVICE = "/inference.GRPCInferenceService/"
ACCESS: dict[str, Access] = {
    **dict.fromkeys(("ServerLive", "ServerReady", "ModelReady"), "open"),
    **dict.fromkeys(("RepositoryModelLoad", "RepositoryModelUnload"), "admin"),
}
"""What each method needs; every other method of the service is an ``infer`` call."""


class AuthInterceptor(_Wrapping):
    """Checks each call's ``authorization`` metadata (and, for admin calls, its peer) before
    the handler runs; refusals are UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, auth: Authenticator) -> None:
        super().__init__()
        self._auth = auth

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        short = method.removeprefix(SERVICE)
        access = ACCESS.get(short, "infer") if method.startswith(SERVICE) else "infer"
        if access == "open" or (access == "infer" and not self._auth.enabled):
            return handler
        auth = self._auth

        async def check(context: grpc.aio.ServicerContext) -> None:
            metadata = dict(context.invocation_metadata() or ())
            try:
                auth.check(
                    access, metadata.get("authorization"), peer_host(context.peer()),
                    protocol="grpc",
                )  # fmt: skip
            except ServingError as error:
                await context.abort(grpc_status(error.code), error.message)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_checked,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            stream = handler.stream_stream

            async def stream_checked(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await check(context)
                async for response in stream(requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_checked,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the service has no other kind of method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, limits: InputLimits = DEFAULT_LIMITS) -> None:
        self._dataplane = dataplane
        self._access_log = dataplane.access_log
        self._limits = limits
        self._decoding = asyncio.Semaphore(OFFLOAD_CONCURRENCY)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            ready = self._dataplane.model_ready(request.name, request.version or None)
        except ModelNotFoundError:
            ready = False  # as Triton: OK with ready false, so is_model_ready() returns False
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return grpc_codec.from_document(
            self._dataplane.server_metadata(), pb.ServerMetadataResponse()
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        document = self._dataplane.model_metadata(request.name, request.version or None)
        return grpc_codec.from_document(document, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        document = self._dataplane.model_config(request.name, request.version or None)
        config = grpc_codec.from_document(document, config_pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        document = await self._dataplane.statistics(request.name or None, request.version or None)
        return grpc_codec.from_document(document, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        models = await self._dataplane.repository_index(request.ready)
        return grpc_codec.from_document({"models": models}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._dataplane.load_model(
            request.model_name, grpc_codec.parameters_to_dict(request.parameters)
        )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._dataplane.unload_model(
            request.model_name, grpc_codec.parameters_to_dict(request.parameters)
        )
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        trace = key = None
        always = self._access_log.enabled
        sent = context.invocation_metadata()
        if sent or always:
            metadata = dict(sent or ())
            key = metadata.get(ROUTING_KEY)
            traceparent = metadata.get(TRACEPARENT)
            trace = begin_trace(traceparent, metadata.get(REQUEST_ID), always=always)
            if trace is not None and traceparent is not None:
                context.set_trailing_metadata(((TRACEPARENT, trace.traceparent),))
        name, version = request.model_name, request.model_version or None
        with self._dataplane.observe("grpc", name, version, trace) as call:
            target = call.target = self._dataplane.require(name, version, key)
            if not _large(request):
                infer_request = grpc_codec.decode_request(request, self._limits)
            else:  # seconds of conversion, perhaps: not on the loop that answers everyone else
                async with self._decoding:
                    infer_request = await asyncio.to_thread(
                        grpc_codec.decode_request, request, self._limits
                    )
            response = await self._dataplane.infer(infer_request, call, target, key)
            return grpc_codec.encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Every request gets one response, in order; errors travel in ``error_message``."""
        async for request in request_iterator:
            try:
                response = await self.ModelInfer(request, context)
            except Exception as error:
                yield pb.ModelStreamInferResponse(error_message=client_message(error))
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)


def _large(request: pb.ModelInferRequest) -> bool:
    """Whether decoding ``request`` is worth a worker thread (as HTTP decides for a body)."""
    raw_bytes = sum(map(len, request.raw_input_contents))
    return raw_bytes > OFFLOAD_BYTES or grpc_codec.typed_elements(request) > OFFLOAD_ELEMENTS


OFFLOAD_ELEMENTS = OFFLOAD_BYTES // 8
"""Typed ``contents`` elements worth a worker thread: as many as a 1 MiB body holds."""


def build_grpc_server(
    dataplane: DataPlane,
    *,
    max_message_bytes: int,
    auth: Authenticator | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> grpc.aio.Server:
    """A grpc.aio server with the v2 servicer; the caller adds its port (SO_REUSEPORT on).
    ``auth`` decides who may call each method (by default: anyone, model control from
    loopback)."""
    server = grpc.aio.server(
        # Interceptors run in order: the caller is checked before anything else runs.
        interceptors=[AuthInterceptor(auth or Authenticator()), ErrorInterceptor(limits)],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    servicer = InferenceServicer(dataplane, limits)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return server
