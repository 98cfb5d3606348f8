"""Reference data as it arrives from outside: the file of `usage-ingest reference load`
(SPEC.md §9), in the platform API's own shapes (product items in snake_case,
usage product inventories in camelCase)."""

from __future__ import annotations

import unicodedata
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from usage_ingest.domain.messages import Id, Text255, Text255NonEmpty, Text1000
from usage_ingest.errors import ReferenceDataError

NonNegativeInt64 = Annotated[int, Field(ge=0, le=2**63 - 1)]


# Unicode categories a billing number never holds: control characters (Cc: NUL, BEL,
# CR, LF...), format characters (Cf: the bidi overrides that make "\u202e0987" display
# as "7890", zero-width spaces) and line or paragraph separators (Zl, Zp).
_NOT_IN_A_NUMBER = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _billing_number(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    for character in value:
        if unicodedata.category(character) in _NOT_IN_A_NUMBER:
            raise ValueError(
                f"must be printable: U+{ord(character):04X} is a control or format character"
            )
    if value != value.strip():
        raise ValueError("must not begin or end with white space")
    return value


# A product reference (a phone number, a circuit id...): printable text, trimmed.
BillingNumber = Annotated[Text255NonEmpty, AfterValidator(_billing_number)]
SingleLine = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\r\n]*$")]


class ProductItemType(StrEnum):
    USAGE_BASED = "USAGE_BASED"
    CREDITS = "CREDITS"
    FLAT_FEE = "FLAT_FEE"


class ProductItemStatus(StrEnum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


class ProductItemIn(BaseModel):
    """A product item (the product-item API's snake_case names)."""

    model_config = ConfigDict(extra="forbid")

    id: Id | None = None
    reference: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]
    name: SingleLine | None = None
    description: SingleLine | None = None
    type: ProductItemType | None = None
    status: ProductItemStatus = ProductItemStatus.ACTIVE
    tax_category: str | None = None
    display_order: int | None = None
    unit_name: dict[str, Any] | None = None
    custom_fields: list[dict[str, Any]] | None = None


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ContractIn(_Camel):
    id: Id
    debtor_id: Id
    site_id: Id
    start_date: date
    end_date: date | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> ContractIn:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError("endDate must not be before startDate")
        return self


class ProductReferenceIn(_Camel):
    id: Id | None = None
    product_reference: BillingNumber
    primary: bool | None = None
    label: Text255 | None = None
    start_date: date | None = None
    end_date: date | None = None
    user_id: Text255 | None = None
    user_email: Text255 | None = None
    cost_centre_code: Text255 | None = None
    department_code: Text255 | None = None
    notes: Text1000 | None = None


class InventoryIn(_Camel):
    """A usage product inventory (version 2.24 of the platform API, every field)."""

    id: Id | None = None
    site_id: Id
    usage_product_id: Id
    start_date: date
    end_date: date | None = None
    supplier_account_id: Id | None = None
    bill_by_service_id: bool | None = None
    service_id: Text255 | None = None
    billable: bool = True
    in_flight_order: bool | None = None
    external_order_reference: Text255 | None = None
    external_network_order_reference: Text255 | None = None
    pending_end_date: date | None = None
    usage_cap_enabled: bool | None = None
    default_usage_cap: NonNegativeInt64 | None = None
    override_usage_cap: NonNegativeInt64 | None = None
    apply_surcharges: bool | None = None
    product_references: list[ProductReferenceIn] = Field(min_length=1)

    @model_validator(mode="after")
    def _ends_after_start(self) -> InventoryIn:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError("endDate must not be before startDate")
        return self


class ReferenceFile(_Camel):
    """The whole file: every list optional, so a file may carry just one kind."""

    operating_sites: list[Text255NonEmpty] = Field(default_factory=list)
    product_items: list[ProductItemIn] = Field(default_factory=list)
    contracts: list[ContractIn] = Field(default_factory=list)
    usage_product_inventories: list[InventoryIn] = Field(default_factory=list)


def read_reference_file(path: Path) -> ReferenceFile:
    """Parse and check a reference file; every problem names its place in the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceDataError(f"{path}: cannot read: {exc}") from exc
    try:
        return ReferenceFile.model_validate_json(text)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "(file)"
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise ReferenceDataError(f"{path}: " + "; ".join(problems)) from exc
