"""The response models of `GET /usage-rejections`: a refusal the worker decided, whole,
and as `fields` limits it.

The errors and the source are those of the outcome (SPEC.md §5); instants are RFC 3339
text with milliseconds (`usage_ingest.times.format_utc_millis`).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from usage_ingest.domain.messages import OutcomeError, Source

_INSTANT_SCHEMA: JsonDict = {"type": "string", "format": "date-time"}


class UsageRejection(BaseModel):
    """A refused source record: why, where it came from, and whether a usage is now
    stored under its external reference (`resolvedBy`, for instance after a replay)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        title="UsageRejection",
        json_schema_serialization_defaults_required=True,
    )

    id: int
    external_reference: str | None = Field(description="Null when the record was unreadable.")
    errors: list[OutcomeError]
    retryable: bool
    source: Source
    failed_at: str = Field(json_schema_extra=_INSTANT_SCHEMA)
    replay_count: int = Field(ge=0)
    resolved_by: int | None = Field(
        description="The id of the usage now stored under this externalReference, or null."
    )


def _without_required(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


class UsageRejectionFields(UsageRejection):
    """A refusal, limited to `fields`."""

    model_config = ConfigDict(title="UsageRejectionFields", json_schema_extra=_without_required)


REJECTION_FIELDS: tuple[str, ...] = tuple(
    info.alias or name for name, info in UsageRejection.model_fields.items()
)
