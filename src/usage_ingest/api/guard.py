"""`GuardedRoute`, the route class of every router: the checks made before FastAPI
reads and validates a body, in the order their answers take precedence."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from usage_ingest.api.errors import ApiError, ApiErrorCode
from usage_ingest.api.keys import Permission
from usage_ingest.api.patch import PATCH_MEDIA_TYPE
from usage_ingest.api.security import PERMISSION_EXTENSION, authorize
from usage_ingest.domain.validation import repeated_key_problem

JSON_MEDIA_TYPE = "application/json"
_BODY_MEDIA_TYPES = {"POST": JSON_MEDIA_TYPE, "PUT": JSON_MEDIA_TYPE, "PATCH": PATCH_MEDIA_TYPE}


def _require_media_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if given != expected:
        raise ApiError.one(
            415,
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"the body must be sent as Content-Type: {expected}"
            + (f", not {given}" if given else ""),
        )


class GuardedRoute(APIRoute):
    """A route that checks the API key and permission (from the operation's
    `x-required-permission`), then the body's media type, before FastAPI reads and
    validates the body: 401/403 come before 415, and 415 before 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        permission = (self.openapi_extra or {}).get(PERMISSION_EXTENSION)
        media_types = {_BODY_MEDIA_TYPES[m] for m in self.methods or () if m in _BODY_MEDIA_TYPES}
        # POST /usages validates its body as a usage event, repeated keys included.
        check_keys = bool(media_types) and self.path != "/usages"

        async def guarded(request: Request) -> Response:
            if permission is not None:
                await authorize(request, Permission(permission))
            for media_type in media_types:
                _require_media_type(request, media_type)
            if check_keys:
                # FastAPI reads JSON last-key-wins: {"siteId": 1, "siteId": 2} would be
                # taken as 2. Refused here as on /usages, with the same message.
                problem = repeated_key_problem(await request.body())
                if problem is not None:
                    raise ApiError.one(400, ApiErrorCode.MALFORMED_MESSAGE, problem)
            return await handler(request)

        return guarded
