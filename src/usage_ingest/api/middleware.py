"""The edge of the app, outside everything else: the request size limit (413), the
error boundary (an unexpected exception is logged and answered 500 without a
trace), Prometheus metrics by route template and status, and one log line per
request (`api_request`)."""

import time

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usage_ingest.api.errors import ApiError, ApiErrorCode, ApiErrorItem, error_response
from usage_ingest.api.metrics import ApiMetrics
from usage_ingest.api.route_registry import route_template
from usage_ingest.api.security import KEY_ID_SCOPE

log = structlog.get_logger("usage_ingest.api")

_MAX_LOGGED_HEADER = 200


class EdgeMiddleware:
    """The outermost layer of the app (pure ASGI, so it sees every request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        responded = False

        async def watched_send(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = int(message["status"]), True
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        headers = Headers(scope=scope)
        platform_id = headers.get("x-platform-id")
        context = {"platform_id": platform_id[:_MAX_LOGGED_HEADER]} if platform_id else {}
        with structlog.contextvars.bound_contextvars(**context):
            try:
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_body_bytes:
                    error = self._too_large()
                    await error_response(error.status_code, error.errors)(
                        scope, receive, watched_send
                    )
                else:
                    await self.app(scope, limited_receive, watched_send)
            except Exception:
                log.exception("api_request_failed", method=scope["method"], path=scope["path"])
                if not responded:
                    internal = ApiErrorItem(
                        code=ApiErrorCode.INTERNAL_ERROR,
                        message="the request failed unexpectedly; it is logged, try again",
                    )
                    await error_response(500, [internal])(scope, receive, watched_send)
            finally:
                seconds = time.perf_counter() - began
                route = route_template(scope)
                self.metrics.observe(route, scope["method"], status, seconds)
                log.info(
                    "api_request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    duration_ms=round(seconds * 1000, 2),
                    api_key_id=scope.get(KEY_ID_SCOPE),
                    **context,
                )

    def _too_large(self) -> ApiError:
        return ApiError.one(
            413,
            ApiErrorCode.REQUEST_TOO_LARGE,
            f"the request body is larger than {self.max_body_bytes} bytes",
        )
