"""The management and ingestion HTTP API (../shared/SPEC-API.md).

One ASGI app (`create_app`) over the worker's own store: an inventory record
written here is what the worker resolves against as soon as the transaction
commits. `serve` runs it with uvicorn for `usage-ingest api`.

Every request passes, in this order:

1. `_Edge` (pure ASGI middleware): request size limit (413), the error boundary
   (an unexpected exception is logged and answered 500 without a trace),
   Prometheus metrics by route template and status, one log line per request
   (`api_request`, with the `x-platform-id` header when given; never a key);
2. `_GuardedRoute`: the API key and its permission (401/403), then the body's
   media type (415), before FastAPI reads the body;
3. FastAPI's own validation, whose errors become 400 `{"errors": [...]}`.

Every error, FastAPI's and Starlette's included, is `{"errors": [{"code",
"field", "message"}]}` with a code of `ApiErrorCode`.
"""

import asyncio
import contextlib
import copy
import math
import re
import socket
import time
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

import jsonpatch
import jsonpointer
import orjson
import structlog
import uvicorn
from fastapi import Body, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute, APIRouter
from fastapi.security import APIKeyHeader, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usage_ingest.api import keys as api_keys
from usage_ingest.api.keys import Permission
from usage_ingest.api.limits import (
    MAX_IN_VALUES,
    MAX_JSON_DEPTH,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    MAX_PATCH_OPERATIONS,
    MAX_PATCHED_DOCUMENT_BYTES,
    filter_count_problems,
)
from usage_ingest.domain.messages import (
    ID_MAX,
    ID_MIN,
    IDENT_PATTERN,
    INT64_MAX,
    INT64_MIN,
    Id,
    Location,
    Source,
    UnitQuantity,
    UsageEvent,
    UsageProperty,
    storable_text,
)
from usage_ingest.domain.records import OutputRecord
from usage_ingest.domain.reference import (
    ContractIn,
    InventoryIn,
    ProductItemIn,
    ProductItemStatus,
    ProductItemType,
    ProductReferenceIn,
    SingleLine,
)
from usage_ingest.domain.validation import InvalidEvent, repeated_key_problem, validate_record
from usage_ingest.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DependencyUnavailable,
    DuplicateRecord,
    ErrorCode,
    OverlappingProductReference,
    ReferenceDataConflict,
    StatementTimedOut,
    StoreUnavailable,
    UnknownReferencedRecord,
)
from usage_ingest.kafka import OutputProducer, broker_reachable
from usage_ingest.settings import Settings
from usage_ingest.store import (
    INVENTORY_FILTER_KINDS,
    INVENTORY_SORT_FIELDS,
    FilterKind,
    FilterOp,
    InventoryFilter,
    InventoryListQuery,
    Store,
    open_store,
)
from usage_ingest.times import format_utc_micros

log = structlog.get_logger("usage_ingest.api")

_KEY_ID_SCOPE = "usage_ingest.api_key_id"
_PERMISSION = "x-required-permission"
_PATCH_MEDIA_TYPE = "application/json-patch+json"
_JSON_MEDIA_TYPE = "application/json"
_BODY_MEDIA_TYPES = {"POST": _JSON_MEDIA_TYPE, "PUT": _JSON_MEDIA_TYPE, "PATCH": _PATCH_MEDIA_TYPE}
_MAX_LOGGED_HEADER = 200
# FastAPI's own routes (not APIRoutes: the router does not name them in the scope).
_FIXED_PATHS = frozenset({"/openapi.json"})
# How soon to ask again after a 503: the database or the broker is away.
_RETRY_AFTER = {"Retry-After": "5"}


# --- errors -------------------------------------------------------------------


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


def _error_response(
    status: int, errors: Sequence[ApiErrorItem], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(errors=list(errors)).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


# pydantic's words where they name Python (`instance of ProductReferenceInput`,
# `a valid dictionary`), in the API's own.
_PLAIN_MESSAGES = {
    "missing": "is required",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
}


def _message(error: Any) -> str:
    plain = _PLAIN_MESSAGES.get(error["type"])
    return plain or str(error["msg"]).removeprefix("Value error, ")


def _dotted(loc: Sequence[Any]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def _validation_errors(exc: ValidationError, code: ApiErrorCode) -> list[ApiErrorItem]:
    return [
        ApiErrorItem(code=code, field=_dotted(error["loc"]), message=_message(error))
        for error in exc.errors(include_url=False, include_input=False)
    ]


# Fields a client may copy from a response into a request, which the service assigns.
_READ_ONLY_NAMES = frozenset({"id", "object_type", "status"})
# FastAPI's body errors at the top level: the body is not the JSON value expected.
_NOT_THE_EXPECTED_JSON = frozenset(
    {"model_type", "model_attributes_type", "list_type", "dict_type"}
)


def _request_errors(exc: RequestValidationError) -> list[ApiErrorItem]:
    """FastAPI's validation errors (its 422) as the API's 400 errors."""
    items = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        where, path = (loc[0], loc[1:]) if loc else (None, ())
        if error["type"] == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "invalid JSON")
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.MALFORMED_MESSAGE,
                    message=f"the body is not JSON: {detail} (at {_dotted(path) or 'the start'})",
                )
            )
        elif where == "body" and not path and error["type"] == "missing":
            items.append(
                ApiErrorItem(code=ApiErrorCode.MALFORMED_MESSAGE, message="a JSON body is required")
            )
        elif where == "body" and not path and error["type"] in _NOT_THE_EXPECTED_JSON:
            items.append(ApiErrorItem(code=ApiErrorCode.MALFORMED_MESSAGE, message=_message(error)))
        elif where == "body" and len(path) == 1 and error["type"] == "extra_forbidden":
            name = str(path[0])
            items.append(
                _read_only(name)
                if name in _READ_ONLY_NAMES
                else ApiErrorItem(
                    code=ApiErrorCode.SCHEMA_VIOLATION, field=name, message="is not a known field"
                )
            )
        elif where == "body":
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.SCHEMA_VIOLATION,
                    field=_dotted(_without_union_tags(path, error["type"])),
                    message=_message(error),
                )
            )
        else:
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.INVALID_PARAMETER,
                    field=str(path[-1]) if path else None,
                    message=_message(error),
                )
            )
    return items


def _without_union_tags(path: Sequence[Any], error_type: str) -> list[Any]:
    """Drop the discriminator tags pydantic puts into the location of a patch operation
    (`0.add.value` is `0.value` to the client); a missing or unknown `op` is at `0.op`."""
    located = [part for part in path if part not in _PATCH_OPS]
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        located.append("op")
    return located


# --- request and response models ---------------------------------------------

_DATE_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _iso_date(value: object) -> object:
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DATE_TEXT.match(value):
        raise ValueError("must be a date written yyyy-MM-dd")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a valid date") from None
    if day in (date.min, date.max):
        # asyncpg stores these two as Postgres' -infinity and infinity.
        raise ValueError(
            f"{value} is outside the dates accepted (0001-01-02 to 9999-12-30); "
            "an open-ended period has no endDate (null)"
        )
    return day


IsoDate = Annotated[
    date, BeforeValidator(_iso_date), WithJsonSchema({"type": "string", "format": "date"})
]


def _not_before_start(value: date | None, info: ValidationInfo) -> date | None:
    start = info.data.get("start_date")
    if value is not None and start is not None and value < start:
        raise ValueError("must not be before startDate")
    return value


class ProductReferenceInput(ProductReferenceIn):
    """A product reference as the API takes it: JSON types strictly, dates as yyyy-MM-dd."""

    model_config = ConfigDict(strict=True, title="ProductReferenceInput")

    id: Id | None = Field(
        default=None,
        json_schema_extra={"readOnly": True},
        description="Assigned by the service; read-only.",
    )
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None

    _end_date_not_before_start = field_validator("end_date")(_not_before_start)


class UsageProductInventoryInput(InventoryIn):
    """A usage product inventory record (version 2.24 of the platform API) as the API
    takes it. The file loader's `InventoryIn`, with JSON types strictly, dates as
    yyyy-MM-dd and cross-field rules reported at the field that breaks them."""

    model_config = ConfigDict(strict=True, title="UsageProductInventoryInput")

    id: Id | None = Field(
        default=None,
        json_schema_extra={"readOnly": True},
        description="Assigned by the service; read-only.",
    )
    start_date: IsoDate
    end_date: IsoDate | None = None
    pending_end_date: IsoDate | None = None
    # A narrower item type than InventoryIn's, as pydantic intends; mypy sees a list.
    product_references: list[ProductReferenceInput] = Field(min_length=1)  # type: ignore[assignment]

    _end_date_not_before_start = field_validator("end_date")(_not_before_start)

    @model_validator(mode="after")
    def _ends_after_start(self) -> "UsageProductInventoryInput":
        """Replaces InventoryIn's check, which has no field to name: see end_date's."""
        return self

    @field_validator("product_references")
    @classmethod
    def _each_reference_once(
        cls, value: list[ProductReferenceInput]
    ) -> list[ProductReferenceInput]:
        first: dict[str, int] = {}
        for index, ref in enumerate(value):
            if ref.product_reference in first:
                raise ValueError(
                    f"productReference {ref.product_reference!r} is listed twice "
                    f"(items {first[ref.product_reference]} and {index})"
                )
            first[ref.product_reference] = index
        return value


class ProductReference(ProductReferenceInput):
    model_config = ConfigDict(title="ProductReference")

    id: Id


class UsageProductInventory(UsageProductInventoryInput):
    """A stored usage product inventory record."""

    model_config = ConfigDict(title="UsageProductInventory")

    id: Id
    product_references: list[ProductReference]  # type: ignore[assignment]


INVENTORY_FIELDS: tuple[str, ...] = tuple(
    info.alias or name for name, info in UsageProductInventory.model_fields.items()
)


def _storable_json(value: Any) -> Any:
    """A JSON value Postgres' jsonb can store, nested at most MAX_JSON_DEPTH deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, str):
            storable_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        elif isinstance(item, dict):
            for key, member in item.items():
                storable_text(key)
                stack.append((member, depth + 1))
        elif isinstance(item, list):
            stack.extend((member, depth + 1) for member in item)
    return value


StorableText = Annotated[str, Strict(), AfterValidator(storable_text)]
StorableLine = Annotated[SingleLine, Strict(), AfterValidator(storable_text)]
Int32 = Annotated[int, Strict(), Field(ge=-(2**31), le=2**31 - 1)]


class ProductItemInput(BaseModel):
    """A new product item (the product-item API's snake_case names)."""

    model_config = ConfigDict(extra="forbid", title="ProductItemInput")

    reference: Annotated[
        str,
        Strict(),
        Field(min_length=1, max_length=256, pattern=r"^\S+$"),
        AfterValidator(storable_text),
    ]
    name: StorableLine | None = None
    description: StorableLine | None = None
    type: ProductItemType | None = None
    tax_category: StorableText | None = None
    display_order: Int32 | None = None
    unit_name: Annotated[dict[str, Any], AfterValidator(_storable_json)] | None = None
    custom_fields: Annotated[list[dict[str, Any]], AfterValidator(_storable_json)] | None = None


class ProductItem(BaseModel):
    """A stored product item."""

    id: int
    object_type: Literal["product_item"]
    reference: str
    name: str | None
    description: str | None
    type: ProductItemType | None
    status: ProductItemStatus
    tax_category: str | None
    display_order: int | None
    unit_name: dict[str, Any] | None
    custom_fields: list[dict[str, Any]] | None


class _CamelStrict(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True
    )


class ContractInput(_CamelStrict):
    debtor_id: Id
    site_id: Id
    start_date: IsoDate
    end_date: IsoDate | None = None

    _end_date_not_before_start = field_validator("end_date")(_not_before_start)


class Contract(_CamelStrict):
    id: Id
    debtor_id: Id
    site_id: Id
    start_date: IsoDate
    end_date: IsoDate | None


_PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
_POINTER = "A JSON pointer (RFC 6901) into the record's JSON form, e.g. /productReferences/0/label"


class _PatchOperation(BaseModel):
    # RFC 6902 §4: members not defined for an operation are ignored.
    model_config = ConfigDict(extra="ignore", strict=True)

    path: str = Field(description=_POINTER)


class PatchAdd(_PatchOperation):
    op: Literal["add"]
    value: Any


class PatchRemove(_PatchOperation):
    op: Literal["remove"]


class PatchReplace(_PatchOperation):
    op: Literal["replace"]
    value: Any


class PatchMove(_PatchOperation):
    op: Literal["move"]
    from_: str = Field(alias="from", description=_POINTER)


class PatchCopy(_PatchOperation):
    op: Literal["copy"]
    from_: str = Field(alias="from", description=_POINTER)


class PatchTest(_PatchOperation):
    op: Literal["test"]
    value: Any


PatchOperation = Annotated[
    PatchAdd | PatchRemove | PatchReplace | PatchMove | PatchCopy | PatchTest,
    Field(discriminator="op"),
]

Instant = Annotated[
    datetime,
    PlainSerializer(format_utc_micros, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Usage(BaseModel):
    """A stored usage (SPEC.md §7), as the worker stored it."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
    )

    id: int
    external_reference: str
    contract_id: int
    debtor_id: int
    inventory_id: int
    product_item_id: int
    product_ident: str
    description: str | None
    start_date: Instant
    end_date: Instant
    operating_site: str | None
    tax_location: Location | None
    performance_location: Location | None
    service_country: str | None
    unit_quantities: list[UnitQuantity] | None
    properties: list[UsageProperty] | None
    billable: bool
    payload_hash: str
    source: Source
    received_at: Instant


class UsageQueued(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    external_reference: str
    status: Literal["queued"]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """The worker's /readyz shape too: whether it is ready, and each check's answer."""

    ready: bool
    checks: dict[str, bool]


class NotReady(Readiness):
    """Readiness that failed: the checks, and an error per failing one."""

    errors: list[ApiErrorItem]


# --- list query parameters -----------------------------------------------------

_DATE_FILTER = re.compile(r"^(?:(lt|gt|gtn):)?([0-9]{4}-[0-9]{2}-[0-9]{2})$")
_ID_FILTER = re.compile(r"^[0-9]{1,19}$")
_LIST_PARAMETERS = frozenset({"page", "pageSize", "sort", "fields"})
# The query string's names (the platform's camelCase) of the store's fields.
INVENTORY_LIST_FILTERS: dict[str, str] = {to_camel(name): name for name in INVENTORY_FILTER_KINDS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in INVENTORY_SORT_FIELDS}


def _parameter_error(name: str, message: str) -> ApiErrorItem:
    return ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=name, message=message)


def parse_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`startDate:desc,id` → (("start_date", True), ("id", False))."""
    if text is None:
        return ()
    keys: list[tuple[str, bool]] = []
    for part in text.split(","):
        name, colon, direction = part.strip().partition(":")
        if name not in _SORTABLE:
            errors.append(
                _parameter_error(
                    "sort", f"{name!r} is not a sortable field; sortable: " + ", ".join(_SORTABLE)
                )
            )
        elif colon and direction not in ("asc", "desc"):
            errors.append(_parameter_error("sort", f"{part!r}: a direction is ':desc' (or ':asc')"))
        elif _SORTABLE[name] in {key for key, _ in keys}:
            errors.append(_parameter_error("sort", f"{name!r} is named twice"))
        else:
            keys.append((_SORTABLE[name], direction == "desc"))
    return tuple(keys)


def parse_fields(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...] | None:
    """`id,siteId` → the fields to return; None means all of them."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in INVENTORY_FIELDS:
            errors.append(
                _parameter_error(
                    "fields", f"{name!r} is not a field; fields: " + ", ".join(INVENTORY_FIELDS)
                )
            )
    return names


def parse_filter(name: str, text: str) -> InventoryFilter:
    """One filter parameter (`startDate=gtn:2026-01-01`); ValueError says what is wrong."""
    name = INVENTORY_LIST_FILTERS[name]
    kind = INVENTORY_FILTER_KINDS[name]
    if kind is FilterKind.ID:
        if not _ID_FILTER.match(text) or not ID_MIN <= int(text) <= ID_MAX:
            raise ValueError(f"{text!r} is not an id (1 to {ID_MAX})")
        return InventoryFilter(name, FilterOp.EQ, int(text))
    if kind is FilterKind.DATE:
        match = _DATE_FILTER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not yyyy-MM-dd, lt:yyyy-MM-dd, gt:… or gtn:…")
        try:
            day = date.fromisoformat(match.group(2))
        except ValueError:
            raise ValueError(f"{match.group(2)!r} is not a valid date") from None
        return InventoryFilter(name, FilterOp(match.group(1) or "eq"), day)
    op, value = FilterOp.EQ, text
    for candidate in (FilterOp.IN, FilterOp.LIKE):
        if text.startswith(f"{candidate.value}:"):
            op, value = candidate, text.removeprefix(f"{candidate.value}:")
    if op is FilterOp.IN:
        values = tuple(value.split(","))
        if len(values) > MAX_IN_VALUES:
            raise ValueError(f"in: takes at most {MAX_IN_VALUES} values")
        for item in values:
            _filter_text(item)
        return InventoryFilter(name, op, values)
    return InventoryFilter(name, op, _filter_text(value))


def _filter_text(value: str) -> str:
    if not value:
        raise ValueError("an empty value matches nothing useful")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def parse_list_query(
    names: Sequence[str],
    *,
    page: int,
    page_size: int,
    sort: str | None,
    fields: str | None,
    filters: Mapping[str, Sequence[str] | None],
) -> tuple[InventoryListQuery, tuple[str, ...] | None]:
    """The list endpoint's query string (`names`: every parameter given, in order, for
    unknown and repeated ones), every problem reported at once (400)."""
    errors: list[ApiErrorItem] = []
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if name not in _LIST_PARAMETERS and name not in INVENTORY_LIST_FILTERS:
            errors.append(_parameter_error(name, "is not a parameter of this endpoint"))
        elif name in _LIST_PARAMETERS and count > 1:
            errors.append(_parameter_error(name, "is given more than once"))
    too_many = filter_count_problems(counts, INVENTORY_LIST_FILTERS)
    if too_many:  # refused before any filter is parsed
        errors += [
            ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=field, message=message)
            for field, message in too_many
        ]
        raise ApiError(400, errors)
    sort_keys = parse_sort(sort, errors)
    projection = parse_fields(fields, errors)
    parsed = []
    for name, texts in filters.items():
        for text in texts or ():
            try:
                parsed.append(parse_filter(name, text))
            except ValueError as exc:
                errors.append(_parameter_error(name, str(exc)))
    if errors:
        raise ApiError(400, errors)
    query = InventoryListQuery(
        limit=page_size,
        offset=(page - 1) * page_size,
        sort=sort_keys,
        filters=tuple(parsed),
    )
    return query, projection


# --- JSON Patch -----------------------------------------------------------------


def apply_patch(
    record: dict[str, Any], operations: Sequence[_PatchOperation]
) -> UsageProductInventoryInput:
    """Apply RFC 6902 operations to a copy of `record`'s JSON form and validate the
    result like a POST; `id` and `productReferences/*/id` stay as they were.

    Raises ApiError (400) for any failure; `record` itself is never changed, so a
    failure leaves nothing half-applied.
    """
    document: Any = copy.deepcopy(record)
    for index, operation in enumerate(operations):
        raw = operation.model_dump(by_alias=True)
        where = f"operation {index} ({raw['op']} {raw['path']!r})"
        try:
            document = jsonpatch.JsonPatch([raw]).apply(document, in_place=True)
            size = len(orjson.dumps(document))
        except jsonpatch.JsonPatchTestFailed as exc:
            raise ApiError.one(
                400,
                ApiErrorCode.PATCH_TEST_FAILED,
                f"{where}: {_test_failure(document, raw)}",
                field=str(index),
            ) from exc
        except (
            jsonpatch.JsonPatchException,
            jsonpointer.JsonPointerException,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            raise ApiError.one(
                400,
                ApiErrorCode.PATCH_FAILED,
                f"{where}: {_patch_failure(raw, exc)}",
                field=str(index),
            ) from exc
        if size > MAX_PATCHED_DOCUMENT_BYTES:  # before the next operation copies it again
            raise ApiError.one(
                400,
                ApiErrorCode.PATCH_FAILED,
                f"{where}: the record would grow to {size} bytes; "
                f"at most {MAX_PATCHED_DOCUMENT_BYTES} are kept",
                field=str(index),
            )
    try:
        patched = UsageProductInventoryInput.model_validate(document)
    except ValidationError as exc:
        raise ApiError(400, _validation_errors(exc, ApiErrorCode.SCHEMA_VIOLATION)) from exc
    errors = []
    if patched.id != record["id"]:
        errors.append(_read_only("id"))
    number_of = {ref["id"]: ref["productReference"] for ref in record["productReferences"]}
    id_of = {number: ref_id for ref_id, number in number_of.items()}
    seen: set[int] = set()
    for index, ref in enumerate(patched.product_references):
        if ref.id is None:
            continue
        # An id belongs to its number: it may not be invented, repeated, or moved to
        # another number of the record (swapping two ids). A new number on an old id
        # is a new reference (the id is dropped below).
        moved = id_of.get(ref.product_reference, ref.id) != ref.id
        if ref.id not in number_of or ref.id in seen or moved:
            errors.append(_read_only(f"productReferences.{index}.id"))
        seen.add(ref.id)
    if errors:
        raise ApiError(400, errors)
    # Product references are matched by their number: the store keeps the id of each
    # one the record already had and assigns one to each new one.
    return patched.model_copy(
        update={
            "product_references": [
                ref.model_copy(update={"id": None}) for ref in patched.product_references
            ]
        }
    )


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _test_failure(document: Any, raw: dict[str, Any]) -> str:
    """Why a `test` failed, in JSON terms (jsonpatch says `True (<class 'bool'>)`)."""
    try:
        actual = jsonpointer.resolve_pointer(document, raw["path"])
    except (jsonpointer.JsonPointerException, KeyError, IndexError, TypeError):
        return f"nothing is at {raw['path']!r}"
    if isinstance(actual, jsonpointer.EndOfList):  # "/list/-": the place after the last item
        return f"nothing is at {raw['path']!r}"
    return f"the value is {_json_text(actual)}, not {_json_text(raw['value'])}"


def _patch_failure(raw: dict[str, Any], exc: Exception) -> str:
    """Why an operation could not be applied, without Python's reprs of the record."""
    if isinstance(exc, jsonpatch.JsonPatchPathNotFound):
        pass  # its message is the bare missing member: "'nope'"
    elif isinstance(exc, jsonpatch.JsonPatchConflict | jsonpatch.InvalidJsonPatch):
        return str(exc)  # jsonpatch's own sentences: "can't remove the whole document"
    pointers = [raw[name] for name in ("from", "path") if raw.get(name) is not None]
    return "no such place in the record: " + " or ".join(repr(p) for p in pointers)


def _read_only(field: str) -> ApiErrorItem:
    return ApiErrorItem(
        code=ApiErrorCode.READ_ONLY_FIELD,
        field=field,
        message="is read-only: the service assigns it",
    )


def _conflict(exc: ReferenceDataConflict) -> ApiError:
    if isinstance(exc, UnknownReferencedRecord):
        status, code = 404, ApiErrorCode.UNKNOWN_PRODUCT_ITEM
    elif isinstance(exc, DuplicateRecord):
        status, code = 409, ApiErrorCode.INVENTORY_EXISTS
    elif isinstance(exc, OverlappingProductReference):
        status, code = 412, ApiErrorCode.PRODUCT_REFERENCE_OVERLAP
    else:  # pragma: no cover - every subclass is mapped above
        status, code = 409, ApiErrorCode.SCHEMA_VIOLATION
    return ApiError.one(status, code, str(exc), field=exc.field)


# --- publishing -----------------------------------------------------------------


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]: ...


class OnDemandProducer:
    """An `OutputProducer` started on first use: the API serves reference data while
    the broker is away, and a failed start is tried again on the next request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: OutputProducer | None = None
        self._lock = asyncio.Lock()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        return await (await self._started()).publish(records)

    async def _started(self) -> OutputProducer:
        async with self._lock:
            if self._producer is None:
                producer = OutputProducer(self._settings)
                await producer.start()  # BrokerUnavailable: it has stopped itself
                self._producer = producer
            return self._producer

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None


# --- the edge: size limit, error boundary, metrics, request log ---------------------


class ApiMetrics:
    """`usage_ingest_api_*` Prometheus metrics, in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "usage_ingest_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "usage_ingest_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.usages_queued = Counter(
            "usage_ingest_api_usages_queued",
            "Usage events accepted by POST /usages and acknowledged by the broker.",
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = {"route": route, "method": method, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)


def _path_routes(scope: Scope) -> list[APIRoute]:
    """The routes whose path matches the request's, whatever their methods."""
    app = scope.get("app")
    routes: list[APIRoute] = app.state.api_routes if app is not None else []
    return [route for route in routes if route.matches(scope)[0] is not Match.NONE]


def _route_template(scope: Scope) -> str:
    """The route template a request is counted and logged under: also for a request
    answered before routing (a 413) or by the router itself (a 405)."""
    matched = getattr(scope.get("route"), "path", None)
    if matched:
        return str(matched)
    if scope["path"] in _FIXED_PATHS:
        return str(scope["path"])
    routes = _path_routes(scope)
    return routes[0].path if routes else "unmatched"


def allowed_methods(scope: Scope) -> list[str]:
    """Every method the request's path takes (RFC 9110: the Allow header of a 405)."""
    return sorted({method for route in _path_routes(scope) for method in route.methods or ()})


class _Edge:
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
                    await _error_response(error.status_code, error.errors)(
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
                    await _error_response(500, [internal])(scope, receive, watched_send)
            finally:
                seconds = time.perf_counter() - began
                route = _route_template(scope)
                self.metrics.observe(route, scope["method"], status, seconds)
                log.info(
                    "api_request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    duration_ms=round(seconds * 1000, 2),
                    api_key_id=scope.get(_KEY_ID_SCOPE),
                    **context,
                )

    def _too_large(self) -> ApiError:
        return ApiError.one(
            413,
            ApiErrorCode.REQUEST_TOO_LARGE,
            f"the request body is larger than {self.max_body_bytes} bytes",
        )


# --- authentication and media types, before the body is read -------------------------

_API_KEY_HEADER = APIKeyHeader(
    name="X-API-KEY", auto_error=False, scheme_name="ApiKey", description="An API key."
)
_BEARER = HTTPBearer(
    auto_error=False, scheme_name="Bearer", description="An API key as a bearer token."
)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="usage-ingest"'}


def _presented_key(request: Request) -> str | None:
    """X-API-KEY or a bearer token; None when neither holds anything. Both holding
    different keys is refused: which one speaks for the client would be a guess."""
    header = request.headers.get("x-api-key", "").strip()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    if header and bearer and header != bearer:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "X-API-KEY and Authorization: Bearer carry different keys: send one",
            headers=_WWW_AUTHENTICATE,
        )
    return header or bearer or None


async def _authorize(request: Request, permission: Permission) -> None:
    store: Store = request.app.state.store
    key = _presented_key(request)
    if key is None:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "an API key is required: send it as X-API-KEY or Authorization: Bearer",
            headers=_WWW_AUTHENTICATE,
        )
    key_id = api_keys.key_id_of(key)
    record = await store.find_api_key(key_id) if key_id else None
    valid = api_keys.matches(key, record.key_hash if record else None)
    if record is None or not valid or record.revoked_at is not None:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "the API key is unknown or revoked",
            headers=_WWW_AUTHENTICATE,
        )
    request.scope[_KEY_ID_SCOPE] = record.key_id
    if permission.value not in record.permissions:
        raise ApiError.one(
            403, ApiErrorCode.FORBIDDEN, f"the API key lacks the permission {permission.value}"
        )


def _require_media_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if given != expected:
        raise ApiError.one(
            415,
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"the body must be sent as Content-Type: {expected}"
            + (f", not {given}" if given else ""),
        )


class _GuardedRoute(APIRoute):
    """A route that checks the API key and permission (from the operation's
    `x-required-permission`), then the body's media type, before FastAPI reads and
    validates the body: 401/403 come before 415, and 415 before 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        permission = (self.openapi_extra or {}).get(_PERMISSION)
        media_types = {_BODY_MEDIA_TYPES[m] for m in self.methods or () if m in _BODY_MEDIA_TYPES}
        # POST /usages validates its body as a usage event, repeated keys included.
        check_keys = bool(media_types) and self.path != "/usages"

        async def guarded(request: Request) -> Response:
            if permission is not None:
                await _authorize(request, Permission(permission))
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


# --- the app ----------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "Invalid request: one error per offending field or parameter.",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the permission this operation needs.",
    404: "Not found.",
    409: "Conflicts with a stored record.",
    412: "A product reference is already on another inventory record whose active period overlaps.",
    413: "The request body is too large.",
    415: "Wrong Content-Type.",
    500: "Unexpected failure (logged; no details are returned).",
    503: "The database or the broker is unavailable; try again later.",
    504: "The request's database work ran past its budget and was cancelled.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route; one that may reach the database (503) may also
    run past the statement budget (504)."""
    every = (*statuses, 500, *((504,) if 503 in statuses else ()))  # noqa: PLR2004
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in every}


def _needs(permission: Permission) -> dict[str, Any]:
    return {_PERMISSION: permission.value}


_SECURED = [Security(_API_KEY_HEADER), Security(_BEARER)]
_INVENTORY_PATH = "/usage-product-inventories"


def create_app(
    settings: Settings,
    store: Store,
    producer: Publisher,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The HTTP API over `store`, publishing usage with `producer` (started, or an
    `OnDemandProducer`). Metrics go to `registry` (a new one by default)."""
    metrics = ApiMetrics(registry if registry is not None else CollectorRegistry())
    app = FastAPI(
        title="usage-ingest",
        version="1",
        summary="Usage product inventories, product items, contracts and usage.",
        openapi_url="/openapi.json",
        # Swagger UI and ReDoc load their scripts from a CDN, which a billing network does
        # not reach: the document itself is served, for any OpenAPI viewer or generator.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    router = APIRouter(route_class=_GuardedRoute)
    _inventory_routes(router, store)
    _reference_routes(router, store)
    _usage_routes(router, settings, store, producer, metrics)
    _operation_routes(router, settings, store, metrics)
    app.include_router(router)
    app.state.api_routes = [r for r in router.routes if isinstance(r, APIRoute)]
    _install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(_Edge, metrics=metrics, max_body_bytes=settings.api_max_body_bytes)
    return app


_TEXT_FILTER = "xyz (exact), in:x,y (any of) or like:xyz (contains, case-insensitive)"


def _inventory_routes(router: APIRouter, store: Store) -> None:
    @router.post(
        _INVENTORY_PATH,
        status_code=201,
        response_model=UsageProductInventory,
        responses=_errors(400, 401, 403, 404, 409, 412, 413, 415, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.USAGE_PRODUCT_INVENTORY_CREATE),
        summary="Create a usage product inventory record",
    )
    async def create_inventory(body: UsageProductInventoryInput) -> JSONResponse:
        read_only = [_read_only("id")] if body.id is not None else []
        read_only += [
            _read_only(f"productReferences.{index}.id")
            for index, ref in enumerate(body.product_references)
            if ref.id is not None
        ]
        if read_only:
            raise ApiError(400, read_only)
        try:
            record = await store.create_inventory(body)
        except ReferenceDataConflict as exc:
            raise _conflict(exc) from exc
        log.info("inventory_created", inventory_id=record["id"])
        return JSONResponse(record, status_code=201)

    @router.get(
        _INVENTORY_PATH,
        response_model=None,
        responses={
            200: {
                "description": "One page of records, with only the `fields` asked for.",
                "headers": {
                    "X-Total-Count": {
                        "description": "The number of records matching the filters.",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                },
                "content": {
                    _JSON_MEDIA_TYPE: {
                        "schema": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/UsageProductInventoryFields"},
                        }
                    }
                },
            },
            **_errors(400, 401, 403, 503),
        },
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.USAGE_PRODUCT_INVENTORY_READ),
        summary="List usage product inventory records",
    )
    async def list_inventories(
        request: Request,
        *,
        page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1.")],
        page_size: Annotated[
            int,
            Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="Records per page."),
        ],
        sort: Annotated[
            str | None,
            Query(description="Comma list of fields, `:desc` for descending: startDate:desc,id"),
        ] = None,
        fields: Annotated[
            str | None, Query(description="Comma list of the fields to return.")
        ] = None,
        usage_product_id: Annotated[
            list[str] | None, Query(alias="usageProductId", description="Exact.")
        ] = None,
        site_id: Annotated[list[str] | None, Query(alias="siteId", description="Exact.")] = None,
        start_date: Annotated[
            list[str] | None,
            Query(
                alias="startDate",
                description="yyyy-MM-dd (equal), lt:…, gt:… or gtn:… (greater or null); "
                "repeat to combine, e.g. startDate=gt:2026-01-01&startDate=lt:2026-02-01",
            ),
        ] = None,
        end_date: Annotated[
            list[str] | None,
            Query(alias="endDate", description="As startDate; gtn: includes open-ended records."),
        ] = None,
        product_reference: Annotated[
            list[str] | None, Query(alias="productReference", description=_TEXT_FILTER)
        ] = None,
        service_id: Annotated[
            list[str] | None, Query(alias="serviceId", description=_TEXT_FILTER)
        ] = None,
        label: Annotated[
            list[str] | None,
            Query(description="A product reference's label: " + _TEXT_FILTER),
        ] = None,
    ) -> JSONResponse:
        query, projection = parse_list_query(
            [name for name, _ in request.query_params.multi_items()],
            page=page,
            page_size=page_size,
            sort=sort,
            fields=fields,
            filters={
                "usageProductId": usage_product_id,
                "siteId": site_id,
                "startDate": start_date,
                "endDate": end_date,
                "productReference": product_reference,
                "serviceId": service_id,
                "label": label,
            },
        )
        total, records = await store.list_inventories(query)
        if projection is not None:
            records = [{name: record[name] for name in projection} for record in records]
        return JSONResponse(records, headers={"X-Total-Count": str(total)})

    @router.get(
        _INVENTORY_PATH + "/{id}",
        response_model=UsageProductInventory,
        responses=_errors(400, 401, 403, 404, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.USAGE_PRODUCT_INVENTORY_READ),
        summary="Read a usage product inventory record",
    )
    async def get_inventory(inventory_id: Annotated[int, _id_path()]) -> JSONResponse:
        record = await store.get_inventory(inventory_id)
        if record is None:
            raise _not_found(f"inventory record {inventory_id}")
        return JSONResponse(record)

    @router.patch(
        _INVENTORY_PATH + "/{id}",
        response_model=UsageProductInventory,
        responses=_errors(400, 401, 403, 404, 409, 412, 413, 415, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.USAGE_PRODUCT_INVENTORY_UPDATE),
        summary="Change a usage product inventory record with a JSON Patch (RFC 6902)",
    )
    async def patch_inventory(
        inventory_id: Annotated[int, _id_path()],
        operations: Annotated[
            list[PatchOperation],
            Body(media_type=_PATCH_MEDIA_TYPE, max_length=MAX_PATCH_OPERATIONS),
        ],
    ) -> JSONResponse:
        try:
            # In a thread: even within its bounds, a patch may copy a megabyte several times.
            record = await store.patch_inventory(
                inventory_id, lambda current: asyncio.to_thread(apply_patch, current, operations)
            )
        except ReferenceDataConflict as exc:
            raise _conflict(exc) from exc
        if record is None:
            raise _not_found(f"inventory record {inventory_id}")
        log.info("inventory_patched", inventory_id=inventory_id, operations=len(operations))
        return JSONResponse(record)


def _reference_routes(router: APIRouter, store: Store) -> None:
    @router.post(
        "/v1/product-items",
        status_code=201,
        response_model=ProductItem,
        responses=_errors(400, 401, 403, 409, 413, 415, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.PRODUCT_ITEM_CREATE),
        summary="Create a product item",
    )
    async def create_product_item(body: ProductItemInput) -> JSONResponse:
        item = ProductItemIn.model_validate(body.model_dump())
        record = await store.create_product_item(item)
        if record is None:
            raise ApiError.one(
                409,
                ApiErrorCode.DUPLICATE_REFERENCE,
                f"a product item with reference {body.reference!r} exists",
                field="reference",
            )
        log.info("product_item_created", product_item_id=record["id"])
        return JSONResponse(record, status_code=201)

    @router.put(
        "/contracts/{id}",
        response_model=Contract,
        responses=_errors(400, 401, 403, 413, 415, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.CONTRACT_WRITE),
        summary="Create or replace a contract",
    )
    async def put_contract(
        contract_id: Annotated[int, _id_path()], body: ContractInput
    ) -> JSONResponse:
        contract = ContractIn(id=contract_id, **body.model_dump())
        record = await store.put_contract(contract)
        log.info("contract_written", contract_id=contract_id)
        return JSONResponse(record)


def _usage_routes(
    router: APIRouter, settings: Settings, store: Store, producer: Publisher, metrics: ApiMetrics
) -> None:
    @router.post(
        "/usages",
        status_code=202,
        response_model=UsageQueued,
        responses=_errors(400, 401, 403, 413, 415, 503),
        dependencies=_SECURED,
        openapi_extra={
            **_needs(Permission.USAGE_CREATE),
            "requestBody": {
                "required": True,
                "content": {
                    _JSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/UsageEvent"}}
                },
            },
        },
        summary="Queue a usage event for the worker",
    )
    async def post_usage(request: Request) -> JSONResponse:
        body = await request.body()
        verdict = validate_record(body, settings.max_message_bytes)
        if isinstance(verdict, InvalidEvent):
            too_large = any(e.code is ErrorCode.MESSAGE_TOO_LARGE for e in verdict.errors)
            raise ApiError(
                413 if too_large else 400,
                [
                    ApiErrorItem(code=e.code.value, field=e.field, message=e.message)
                    for e in verdict.errors
                ],
            )
        reference = verdict.event.external_reference
        record = OutputRecord(settings.topic_events, reference.encode(), body)
        try:
            unacknowledged = await asyncio.wait_for(
                producer.publish([record]), settings.api_publish_timeout_s
            )
        except TimeoutError:
            unacknowledged = [record]
        if unacknowledged:
            raise BrokerUnavailable(
                f"the broker did not acknowledge {reference!r} on {settings.topic_events}"
            )
        metrics.usages_queued.inc()
        log.info("usage_queued", external_reference=reference, topic=settings.topic_events)
        return JSONResponse({"externalReference": reference, "status": "queued"}, status_code=202)

    @router.get(
        "/usages/{externalReference}",
        response_model=Usage,
        responses=_errors(401, 403, 404, 503),
        dependencies=_SECURED,
        openapi_extra=_needs(Permission.USAGE_READ),
        summary="Read a stored usage",
    )
    async def get_usage(
        external_reference: Annotated[str, Path(alias="externalReference")],
    ) -> JSONResponse:
        # A reference that breaks §3's pattern cannot have been stored.
        found = (
            await store.get_usage(external_reference)
            if re.match(IDENT_PATTERN, external_reference)
            else None
        )
        if found is None:
            raise _not_found(f"usage {external_reference!r}")
        source = Source(
            topic=found["source_topic"],
            partition=found["source_partition"],
            offset=found["source_offset"],
        )
        usage = Usage(**{**found, "source": source})
        return JSONResponse(usage.model_dump(mode="json", by_alias=True))


def _operation_routes(
    router: APIRouter, settings: Settings, store: Store, metrics: ApiMetrics
) -> None:
    @router.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": NotReady, "description": _DESCRIPTIONS[503]}},
        summary="The database and the broker are reachable",
    )
    async def readyz() -> JSONResponse:
        database, broker = await asyncio.gather(
            _database_reachable(store), broker_reachable(settings.kafka_bootstrap_servers)
        )
        problems = []
        if not database:
            problems.append(
                ApiErrorItem(
                    code=ApiErrorCode.DATABASE_UNAVAILABLE, message="the database does not answer"
                )
            )
        if not broker:
            problems.append(
                ApiErrorItem(
                    code=ApiErrorCode.BROKER_UNAVAILABLE,
                    message="no bootstrap server accepts connections",
                )
            )
        checks = {"database": database, "broker": broker}
        if problems:
            body = NotReady(ready=False, checks=checks, errors=problems)
            return JSONResponse(body.model_dump(mode="json"), status_code=503, headers=_RETRY_AFTER)
        return JSONResponse(Readiness(ready=True, checks=checks).model_dump(mode="json"))

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _id_path() -> Any:
    return Path(alias="id", ge=ID_MIN, le=ID_MAX, description="The record's id.")


def _not_found(what: str) -> ApiError:
    return ApiError.one(404, ApiErrorCode.NOT_FOUND, f"{what} does not exist")


async def _database_reachable(store: Store, timeout_s: float = 2.0) -> bool:
    try:
        await asyncio.wait_for(store.ping(), timeout_s)
    except (DependencyUnavailable, TimeoutError):
        return False
    return True


def _install_error_handlers(app: FastAPI) -> None:
    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, ApiError):
            return _error_response(exc.status_code, exc.errors, exc.headers)
        if exc.status_code == 404:  # noqa: PLR2004 - the router's "no such route"
            code, message = ApiErrorCode.NOT_FOUND, f"no such resource: {request.url.path}"
        elif exc.status_code == 405:  # noqa: PLR2004
            # The router names the methods of one route; the path may have several.
            allowed = ", ".join(allowed_methods(request.scope))
            headers = {**(exc.headers or {}), "Allow": allowed}
            code = ApiErrorCode.METHOD_NOT_ALLOWED
            message = f"{request.method} is not allowed here; allowed: {allowed}"
            item = ApiErrorItem(code=code, message=message)
            return _error_response(405, [item], headers)
        else:  # FastAPI's own 400 "There was an error parsing the body", and the like
            code, message = ApiErrorCode.MALFORMED_MESSAGE, str(exc.detail)
        item = ApiErrorItem(code=code, message=message)
        return _error_response(exc.status_code, [item], exc.headers)

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error_response(400, _request_errors(exc))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DependencyUnavailable)
        log.warning("api_dependency_unavailable", error=str(exc), path=request.url.path)
        if isinstance(exc, StoreUnavailable):
            code, message = ApiErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable"
        else:
            code, message = ApiErrorCode.BROKER_UNAVAILABLE, "the broker is unavailable"
        item = ApiErrorItem(code=code, message=f"{message}; try again later")
        return _error_response(503, [item], _RETRY_AFTER)

    async def on_statement_timeout(request: Request, exc: Exception) -> Response:
        log.warning("api_statement_timed_out", error=str(exc), path=request.url.path)
        item = ApiErrorItem(
            code=ApiErrorCode.STATEMENT_TIMEOUT,
            message="the request's database work ran past its budget and was cancelled; "
            "narrow the query (fewer or more selective filters) rather than repeating it",
        )
        return _error_response(504, [item])

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StatementTimedOut, on_statement_timeout)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(DependencyUnavailable, on_unavailable)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus what it cannot infer: the usage event body (validated
    by the worker's own rules, not by FastAPI), the list's projected records, and no
    422 responses (validation errors are 400 here)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description="The management and ingestion HTTP API of usage-ingest. Every error is "
        '`{"errors": [{"code", "field", "message"}]}`. Operations need an API key with the '
        "permission named by `x-required-permission`.",
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    event = UsageEvent.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, definition in event.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["UsageEvent"] = event
    projected = copy.deepcopy(schemas["UsageProductInventory"])
    projected.pop("required", None)
    projected["title"] = "UsageProductInventoryFields"
    projected["description"] = "A usage product inventory record, limited to `fields`."
    schemas["UsageProductInventoryFields"] = projected
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    _exact_bounds(document)
    app.openapi_schema = document
    return document


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# FastAPI's OpenAPI model holds bounds as floats: the int64 limits come out as
# ±9.223372036854776e+18, which is 2^63, one past the largest id, so a client that
# trusts the document sends a value the API refuses.
_AS_FLOATS = {float(INT64_MAX): INT64_MAX, float(INT64_MIN): INT64_MIN}


def _exact_bounds(node: Any) -> None:
    """Write every integral bound of the document as an exact integer, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                node[key] = _AS_FLOATS.get(value, int(value))
            else:
                _exact_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _exact_bounds(item)


# --- serving ----------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Signals are the command's (`with_stop_signals`): it sets `should_exit`."""
        yield


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so that a taken port is one clear line, not a server log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port} (USAGE_INGEST_API_HOST/PORT, --host/--port): "
            f"{exc.strerror or exc}"
        ) from exc
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until `stop` is set; then finish the requests in flight and close."""
    sock = _listen(settings.api_host, settings.api_port)
    store = await open_store(settings, statement_budget_s=settings.api_statement_budget_s)
    producer = OnDemandProducer(settings)
    try:
        try:
            missing = await store.unapplied_migrations()
        except StoreUnavailable as exc:
            log.warning("database_unavailable_at_start", error=str(exc))
        else:
            if missing:
                raise ConfigurationError(
                    f"the database lacks migration(s) {', '.join(missing)}: "
                    "run `usage-ingest migrate` first"
                )
        app = create_app(settings, store, producer)
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=10,
            )
        )

        async def stop_when_told() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(stop_when_told())
        host, port = sock.getsockname()[:2]
        log.info("api_started", url=f"http://{host}:{port}", topic=settings.topic_events)
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
        log.info("api_stopped")
    finally:
        sock.close()
        try:
            # A record the broker never acknowledged was answered 503: nothing to wait for.
            await asyncio.wait_for(producer.stop(), settings.api_publish_timeout_s)
        except TimeoutError:
            log.warning("producer_stop_timed_out")
        await store.close()
