"""The messages usage-ingest reads and writes: the usage event (SPEC.md §3) and
the outcome (§5). `schemas/` holds the JSON Schemas generated from these models.

The event model checks each field on its own (types, patterns, lengths, the
decimal rules of quantities); rules that span fields live in `validation`.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from usage_ingest.domain.countries import is_country_code
from usage_ingest.errors import ErrorCode, WarningCode
from usage_ingest.times import format_utc_micros, parse_date_time

IDENT_PATTERN = r"^[a-zA-Z0-9_.~-]{1,100}$"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Ids (contracts, debtors, sites, records, product items) are positive: the platform
# assigns them from sequences, and 0 or a negative number is never one (README, "Ids").
ID_MIN, ID_MAX = 1, INT64_MAX
QUANTITY_MAX_INTEGER_DIGITS = 18
QUANTITY_MAX_FRACTION_DIGITS = 12


def storable_text(value: str) -> str:
    """Refuse text that Postgres cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value.isascii():  # the common case, and no surrogate is ASCII
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


def country_code(value: str) -> str:
    """An ISO 3166-1 alpha-2 or alpha-3 code, in its canonical upper case."""
    if not is_country_code(value):
        raise ValueError("must be an ISO 3166-1 alpha-2 or alpha-3 country code")
    return value.upper()


# Strict JSON strings of bounded length that Postgres can store.
Text100NonEmpty = Annotated[
    str, Strict(), Field(min_length=1, max_length=100), AfterValidator(storable_text)
]
Text255 = Annotated[str, Strict(), Field(max_length=255), AfterValidator(storable_text)]
Text255NonEmpty = Annotated[
    str, Strict(), Field(min_length=1, max_length=255), AfterValidator(storable_text)
]
Text1000 = Annotated[str, Strict(), Field(max_length=1000), AfterValidator(storable_text)]


Ident = Annotated[str, Strict(), Field(pattern=IDENT_PATTERN)]
Id = Annotated[int, Strict(), Field(ge=ID_MIN, le=ID_MAX)]
CountryCode = Annotated[str, Strict(), AfterValidator(country_code)]

UtcDateTime = Annotated[
    datetime,
    BeforeValidator(parse_date_time),
    PlainSerializer(format_utc_micros, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class OutOfRangeNumber:
    """A JSON number whose exponent no Decimal can hold; no field takes it as a value."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_NUMERIC_TEXT = re.compile(r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$")


def normalise_decimal(value: Decimal) -> Decimal:
    """Exact normal form: no trailing fractional zeros, no negative zero.

    Done on the digit tuple rather than with `Decimal.normalize()`, which rounds
    to the context precision (28 digits) and would alter 30-digit quantities.
    """
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent >= 0 or digits[-1] != 0:  # already normal, the common case
        return value if value else Decimal(0)
    digit_list = list(digits)
    while exponent < 0 and len(digit_list) > 1 and digit_list[-1] == 0:
        digit_list.pop()
        exponent += 1
    if all(d == 0 for d in digit_list):
        return Decimal(0)
    return Decimal((sign, tuple(digit_list), exponent))


def parse_quantity(value: object) -> Decimal:
    """A JSON number or numeric string to an exact, normalised Decimal (never a float)."""
    # pydantic reports ValueError, not TypeError, as a validation error.
    if isinstance(value, OutOfRangeNumber):
        raise ValueError(  # noqa: TRY004
            f"is out of range: at most {QUANTITY_MAX_INTEGER_DIGITS} digits before and "
            f"{QUANTITY_MAX_FRACTION_DIGITS} after the point"
        )
    # pydantic reports ValueError, not TypeError, as a validation error.
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ValueError("must be a number or a numeric string")  # noqa: TRY004
    if isinstance(value, str) and not _NUMERIC_TEXT.match(value):
        raise ValueError("must be a number or a numeric string")
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValueError("must be a number or a numeric string") from None
    if not number.is_finite():
        raise ValueError("must be finite")
    if number < 0:
        raise ValueError("must be >= 0")
    number = normalise_decimal(number)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if number.adjusted() + 1 > QUANTITY_MAX_INTEGER_DIGITS:
        raise ValueError(f"must have at most {QUANTITY_MAX_INTEGER_DIGITS} digits before the point")
    if -exponent > QUANTITY_MAX_FRACTION_DIGITS:
        raise ValueError(f"must have at most {QUANTITY_MAX_FRACTION_DIGITS} digits after the point")
    return number


def format_decimal(value: Decimal) -> str:
    """Plain positional notation, never an exponent: '1.5', '100', '0.0000001'."""
    text = str(value)  # the same text, at half the cost, unless it has an exponent
    return format(value, "f") if "E" in text else text


Quantity = Annotated[
    Decimal,
    BeforeValidator(parse_quantity),
    PlainSerializer(format_decimal, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _NUMERIC_TEXT.pattern},
            ],
            "description": "decimal >= 0, at most 18 digits before and 12 after the point",
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


class Location(_Model):
    """Where a usage is taxed or performed."""

    country: CountryCode | None = None
    region: Text255 | None = None
    city: Text255 | None = None
    postal_code: Text255 | None = None


class UnitQuantity(_Model):
    unit: Ident
    quantity: Quantity


class UsageProperty(_Model):
    name: Text100NonEmpty
    value: Text1000


class UsageEvent(_Model):
    """A usage event as published on the input topic (SPEC.md §3).

    Unknown top-level fields are ignored here and kept in the stored raw payload.
    """

    model_config = ConfigDict(title="UsageEvent")

    external_reference: Ident
    contract_id: Id | None = None
    debtor_id: Id | None = None
    product_ident: Ident
    description: Text1000 | None = None
    start_date: UtcDateTime
    end_date: UtcDateTime
    operating_site: Text255 | None = None
    tax_location: Location | None = None
    performance_location: Location | None = None
    service_country: CountryCode | None = Field(
        default=None, json_schema_extra={"deprecated": True}
    )
    unit_quantities: list[UnitQuantity] | None = None
    properties: list[UsageProperty] | None = None


class OutcomeError(_Model):
    code: ErrorCode
    field: str | None = None
    message: str


class OutcomeWarning(_Model):
    code: WarningCode
    field: str | None = None
    message: str


class Source(_Model):
    """Where the record came from: the same record always has the same source."""

    topic: str
    partition: int
    offset: int
    timestamp: str | None = None


OutcomeStatus = Literal["created", "duplicate", "rejected"]


class Outcome(_Model):
    """What became of one input record; published on the accepted or rejected topic (§5)."""

    model_config = ConfigDict(title="Outcome", json_schema_serialization_defaults_required=True)

    status: OutcomeStatus
    external_reference: str | None
    usage_id: int | None = None
    contract_id: int | None = None
    debtor_id: int | None = None
    inventory_id: int | None = None
    product_ident: str | None = None
    billable: bool | None = None
    errors: list[OutcomeError] = Field(default_factory=list)
    retryable: bool | None = None
    warnings: list[OutcomeWarning] = Field(default_factory=list)
    source: Source
    processed_at: str

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
