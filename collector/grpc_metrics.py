"""Time every gRPC call the collector serves, per method and status code.

:class:`LatencyInterceptor` wraps each method handler (all four call shapes)
and observes the call's wall time in seconds into a histogram labelled
``method`` (the full method name, e.g. ``/hostdiag.v1.AgentService/Upload``)
and ``code`` (``OK``, ``INVALID_ARGUMENT``, ...).  It sits before the
authentication interceptor, so refused calls are timed and counted too.  A
long-lived stream (an agent's ``Connect``) is observed when it ends.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hostdiag.collector.metrics import Histogram

__all__ = ["LatencyInterceptor"]


def _code(context: Any, exc: BaseException | None) -> str:
    code = None
    try:
        code = context.code()
    except Exception:
        code = None
    if code is None:
        if exc is None:
            return "OK"
        return "CANCELLED" if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError" else "UNKNOWN"
    return getattr(code, "name", str(code))


class LatencyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, histogram: Histogram, clock: Callable[[], float] = time.perf_counter) -> None:
        self.histogram = histogram
        self.clock = clock

    def _observe(self, method: str, started: float, context: Any, exc: BaseException | None) -> None:
        self.histogram.observe(max(0.0, self.clock() - started), method=method, code=_code(context, exc))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        observe = self._observe
        clock = self.clock
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        def unary_response(inner: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
            async def call(request: Any, context: Any) -> Any:
                started = clock()
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    observe(method, started, context, exc)
                    raise
                observe(method, started, context, None)
                return response

            return call

        def stream_response(inner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            if inspect.iscoroutinefunction(inner):
                # A handler that answers with context.write() (Connect) and returns None.
                return unary_response(inner)

            async def call(request: Any, context: Any) -> AsyncIterator[Any]:
                started = clock()
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    observe(method, started, context, exc)
                    raise
                observe(method, started, context, None)

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kwargs)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kwargs)
        return handler
