"""The API's error envelope: `{"errors": [{"code", "field", "message"}]}`.

Its codes (`ApiErrorCode`), its models, the exception a route raises to answer with
it (`ApiError`), the response made of it, and pydantic's validation errors in its
terms. How other exceptions become one is in `error_handlers`.
"""

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from usage_ingest.errors import ErrorCode

# How soon to ask again after a 503: the database or the broker is away.
RETRY_AFTER = {"Retry-After": "5"}


class ApiErrorCode(StrEnum):
    """The stable codes of the API's error responses (README, "HTTP API")."""

    # The codes of SPEC.md §5 where they mean the same: a field breaks a rule, the
    # body is not a JSON object, the usage event is too large.
    SCHEMA_VIOLATION = ErrorCode.SCHEMA_VIOLATION.value
    MALFORMED_MESSAGE = ErrorCode.MALFORMED_MESSAGE.value
    MESSAGE_TOO_LARGE = ErrorCode.MESSAGE_TOO_LARGE.value
    INVALID_PARAMETER = "INVALID_PARAMETER"
    READ_ONLY_FIELD = "READ_ONLY_FIELD"
    PATCH_FAILED = "PATCH_FAILED"
    PATCH_TEST_FAILED = "PATCH_TEST_FAILED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    UNKNOWN_PRODUCT_ITEM = "UNKNOWN_PRODUCT_ITEM"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    DUPLICATE_REFERENCE = "DUPLICATE_REFERENCE"
    INVENTORY_EXISTS = "INVENTORY_EXISTS"
    PRODUCT_REFERENCE_OVERLAP = "PRODUCT_REFERENCE_OVERLAP"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    STATEMENT_TIMEOUT = "STATEMENT_TIMEOUT"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"


class ApiErrorItem(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    code: str
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(title="Errors")

    errors: list[ApiErrorItem]


class ApiError(StarletteHTTPException):
    """An error response. A Starlette HTTPException so that FastAPI lets it through
    when it is raised while the body is read (the size limit)."""

    def __init__(
        self, status: int, errors: Sequence[ApiErrorItem], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=errors[0].message, headers=headers)
        self.errors = list(errors)

    @classmethod
    def one(
        cls,
        status: int,
        code: ApiErrorCode,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> "ApiError":
        return cls(status, [ApiErrorItem(code=code, field=field, message=message)], headers)


def error_response(
    status: int, errors: Sequence[ApiErrorItem], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(errors=list(errors)).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


def read_only_error(field: str) -> ApiErrorItem:
    return ApiErrorItem(
        code=ApiErrorCode.READ_ONLY_FIELD,
        field=field,
        message="is read-only: the service assigns it",
    )


def not_found(what: str) -> ApiError:
    return ApiError.one(404, ApiErrorCode.NOT_FOUND, f"{what} does not exist")


# pydantic's words where they name Python (`instance of ProductReferenceInput`,
# `a valid dictionary`), in the API's own.
_PLAIN_MESSAGES = {
    "missing": "is required",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
}


def plain_message(error: Any) -> str:
    plain = _PLAIN_MESSAGES.get(error["type"])
    return plain or str(error["msg"]).removeprefix("Value error, ")


def dotted_field(loc: Sequence[Any]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def validation_errors(exc: ValidationError, code: ApiErrorCode) -> list[ApiErrorItem]:
    return [
        ApiErrorItem(code=code, field=dotted_field(error["loc"]), message=plain_message(error))
        for error in exc.errors(include_url=False, include_input=False)
    ]
