"""The API's request and response models: inventory records, product items,
contracts, usages, usage totals and the operations endpoints' answers.

Requests take JSON types strictly and dates as yyyy-MM-dd; instants are written by
`usage_ingest.times`. The JSON Patch operations are in `patch`, the error envelope
in `errors`.
"""

import math
import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from usage_ingest.api.errors import ApiErrorItem
from usage_ingest.api.limits import MAX_JSON_DEPTH
from usage_ingest.domain.messages import (
    Id,
    Location,
    Source,
    UnitQuantity,
    UsageProperty,
    storable_text,
)
from usage_ingest.domain.reference import (
    InventoryIn,
    ProductItemStatus,
    ProductItemType,
    ProductReferenceIn,
    SingleLine,
)
from usage_ingest.times import format_utc_micros

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


# --- usage product inventories ---------------------------------------------------


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


# --- product items ------------------------------------------------------------------


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


# --- contracts --------------------------------------------------------------------


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


# --- usages -----------------------------------------------------------------------

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

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> "Usage":
        """A usage as the store reads it (its columns by name, JSON decoded)."""
        source = Source(
            topic=stored["source_topic"],
            partition=stored["source_partition"],
            offset=stored["source_offset"],
        )
        return cls(**{**stored, "source": source})

    def as_json(self) -> dict[str, Any]:
        """The JSON form of `GET /usages/{externalReference}` (and of each list item)."""
        return self.model_dump(mode="json", by_alias=True)


class UsageQueued(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    external_reference: str
    status: Literal["queued"]


class UsageBatchQueued(BaseModel):
    """The answer to an array of usage events: every one published and acknowledged."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    status: Literal["queued"]
    queued: int = Field(ge=1)
    external_references: list[str]


class UsageSummary(BaseModel):
    """One group of GET /usage-summaries: its `groupBy` fields (only those asked for),
    its unit, how many usages hold that unit, and the exact sum of their quantities."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    contract_id: int | None = None
    debtor_id: int | None = None
    inventory_id: int | None = None
    product_ident: str | None = None
    billable: bool | None = None
    day: str | None = Field(default=None, description="The UTC date of startDate, yyyy-MM-dd.")
    month: str | None = Field(default=None, description="yyyy-MM of startDate in UTC.")
    unit: str | None = Field(description="null for the usages without quantities.")
    usages: int = Field(ge=1)
    quantity: str = Field(
        pattern=r"^[0-9]+(\.[0-9]+)?$", description="The exact decimal sum, never rounded."
    )


# --- operations -------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """The worker's /readyz shape too: whether it is ready, and each check's answer."""

    ready: bool
    checks: dict[str, bool]


class NotReady(Readiness):
    """Readiness that failed: the checks, and an error per failing one."""

    errors: list[ApiErrorItem]
