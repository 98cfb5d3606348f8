"""Each record's verdict, and what it yields: the row to store and the outcome message
(SPEC.md §5) that reports it.

`Verdict` is what the batch loop knows about one record while its batch is decided;
`usage_row` is what a resolved record stores, `rejection_row` what a refused one
stores (§7), and `outcome_record` the message published on the accepted or the
rejected topic once the batch is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from usage_ingest.domain.dead_letters import replay_count
from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.outcomes import CREATED, DUPLICATE, REJECTED, Status, outcome_json, source
from usage_ingest.domain.records import (
    InputRecord,
    OutputRecord,
    RejectionRow,
    StoredUsage,
    UsageRow,
)
from usage_ingest.domain.resolution import Resolution
from usage_ingest.domain.validation import InvalidEvent, ValidEvent, json_text, unit_quantities_json
from usage_ingest.settings import Settings


@dataclass(slots=True)
class Verdict:
    """What the pipeline knows about one record while the batch is decided."""

    record: InputRecord
    checked: ValidEvent | InvalidEvent
    resolution: Resolution | None = None
    refusal: tuple[OutcomeError, ...] = ()
    row: UsageRow | None = None
    stored: StoredUsage | None = None

    @property
    def reference(self) -> str | None:
        if isinstance(self.checked, ValidEvent):
            return self.checked.event.external_reference
        return self.checked.external_reference

    @property
    def errors(self) -> tuple[OutcomeError, ...]:
        """Why the record is refused; empty once it is stored."""
        if isinstance(self.checked, InvalidEvent):
            return self.checked.errors
        return self.refusal

    @property
    def status(self) -> Status:
        if self.errors:
            return REJECTED
        stored, record = self.stored, self.record
        assert stored is not None
        same_source = (stored.source_topic, stored.source_partition, stored.source_offset) == (
            record.topic,
            record.partition,
            record.offset,
        )
        return CREATED if same_source else DUPLICATE


def outcome_record(verdict: Verdict, processed_at: str, settings: Settings) -> OutputRecord:
    """The outcome message (§5), keyed by the externalReference (or, when none
    could be read, by the input key) on the accepted or rejected topic."""
    record, checked, resolution = verdict.record, verdict.checked, verdict.resolution
    status, errors, reference = verdict.status, verdict.errors, verdict.reference
    where = source(record.topic, record.partition, record.offset, record.timestamp_ms)
    if not isinstance(checked, ValidEvent):
        value = outcome_json(status, reference, where, processed_at, errors=errors)
    elif resolution is None:
        event = checked.event
        value = outcome_json(
            status,
            reference,
            where,
            processed_at,
            contract_id=event.contract_id,
            debtor_id=event.debtor_id if event.contract_id is None else None,
            product_ident=event.product_ident,
            errors=errors,
            warnings=checked.warnings,
        )
    else:
        contract, inventory = resolution.contract, resolution.inventory
        stored = verdict.stored
        value = outcome_json(
            status,
            reference,
            where,
            processed_at,
            usage_id=None if stored is None or errors else stored.usage_id,
            contract_id=contract.id,
            debtor_id=contract.debtor_id,
            inventory_id=inventory.id,
            product_ident=checked.event.product_ident,
            billable=None if errors else inventory.billable,
            errors=errors,
            warnings=checked.warnings,
        )
    if status == REJECTED:
        key = reference.encode() if reference else record.key
        return OutputRecord(settings.topic_rejected, key, value)
    assert reference is not None
    return OutputRecord(settings.topic_accepted, reference.encode(), value)


def usage_row(record: InputRecord, checked: ValidEvent, resolution: Resolution) -> UsageRow:
    event, canonical = checked.event, checked.canonical
    return UsageRow(
        external_reference=event.external_reference,
        contract_id=resolution.contract.id,
        debtor_id=resolution.contract.debtor_id,
        inventory_id=resolution.inventory.id,
        product_item_id=resolution.product.id,
        product_ident=event.product_ident,
        description=event.description,
        start_date=canonical.start_date,
        end_date=canonical.end_date,
        operating_site=event.operating_site,
        tax_location=json_text(event.tax_location),
        performance_location=json_text(event.performance_location),
        service_country=event.service_country,
        unit_quantities=unit_quantities_json(event),
        properties=json_text(event.properties),
        billable=resolution.inventory.billable,
        payload_hash=checked.payload_hash,
        raw_payload=checked.raw,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def rejection_row(verdict: Verdict) -> RejectionRow:
    """What a refused record keeps in `usage_rejections` (§7): its errors as on the
    outcome, where it came from, and its replay count as on its dead letter."""
    record, errors = verdict.record, verdict.errors
    return RejectionRow(
        external_reference=verdict.reference,
        errors=_errors_json(errors),
        retryable=all(e.code.retryable for e in errors),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_timestamp_ms=record.timestamp_ms if record.timestamp_ms >= 0 else None,
        replay_count=replay_count(record.headers),
    )


class _StoredError(msgspec.Struct, frozen=True, gc=False):
    code: str
    field: str | None
    message: str


_ERRORS_ENCODER = msgspec.json.Encoder()


def _errors_json(errors: tuple[OutcomeError, ...]) -> str:
    """The errors as the outcome writes them, as JSON text Postgres accepts."""
    items = [
        _StoredError(
            e.code.value, None if e.field is None else _storable(e.field), _storable(e.message)
        )
        for e in errors
    ]
    return _ERRORS_ENCODER.encode(items).decode()


def _storable(text: str) -> str:
    """`text`, or, where Postgres could not store it (a NUL character, an unpaired
    surrogate), with those characters replaced: a refusal must always be keepable."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
