"""Step 2 of the commit protocol: one batch's usages and every refusal, in one
database transaction (SPEC.md §6, §7).

Some refusals are known only once the usages are written: an external reference held
with a different payload (`EXTERNAL_REFERENCE_CONFLICT`), or a value the database
refuses. So the transaction spans two calls on one connection, through the store's
`batch()`: `store_usages`, then `store_rejections` with every refusal of the batch,
those of validation and resolution and those storage just decided. The alternative,
one store call that takes the known refusals and decides the conflicts itself, would
move a record-level decision (and its message) into the adapter; here the store only
writes, and every verdict is still decided in the worker, in plain Python.

`store_batch` is one attempt. A transient failure anywhere in it rolls back
everything, and the caller retries the whole attempt: it decides the storage
verdicts afresh from what the new transaction sees, so a retried attempt is never
half applied. A batch with no usage to store (every record refused) goes through the
database just the same: its outcomes wait for the refusals to be committed, and an
outage stalls it like any other batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.records import StoredUsage, UsageRow
from usage_ingest.errors import ErrorCode, StoreRefusedData
from usage_ingest.ports import BatchWritePort, StorePort
from usage_ingest.worker.outcomes import Verdict, rejection_row

log = structlog.get_logger("usage_ingest.worker.storing")


async def store_batch(store: StorePort, verdicts: Sequence[Verdict], failed_at: str) -> None:
    """One attempt at step 2: store the resolved usages, decide what only storage can
    decide, keep every refusal with `failed_at`, commit. On return the verdicts say
    each record's outcome; if it raises, nothing of the batch was committed."""
    rows = _first_rows(verdicts)
    async with store.batch() as batch:
        stored = await _store_isolating(batch, rows) if rows else {}
        for verdict in verdicts:
            if verdict.row is not None:
                _settle(verdict, stored[verdict.row.external_reference])
        refused = [rejection_row(v) for v in verdicts if v.errors]
        if refused:
            await batch.store_rejections(refused, failed_at)


def _first_rows(verdicts: Sequence[Verdict]) -> list[UsageRow]:
    """The rows to write: the first record of a reference in the batch is the one
    written, later ones are compared with it like any re-delivery."""
    first_rows: dict[str, UsageRow] = {}
    for verdict in verdicts:
        if verdict.row is not None:
            first_rows.setdefault(verdict.row.external_reference, verdict.row)
    return list(first_rows.values())


def _settle(verdict: Verdict, held: StoredUsage | OutcomeError) -> None:
    """The record's verdict from what holds its reference now. Sets both `stored` and
    `refusal`, whatever an earlier attempt set: a retried attempt decides afresh."""
    assert verdict.row is not None
    if isinstance(held, OutcomeError):
        verdict.stored, verdict.refusal = None, (held,)
    elif held.payload_hash != verdict.row.payload_hash:
        verdict.stored = None
        verdict.refusal = (
            OutcomeError(
                code=ErrorCode.EXTERNAL_REFERENCE_CONFLICT,
                field="externalReference",
                message=f"usage {held.usage_id} already holds this externalReference "
                "with a different payload; it is left unchanged",
            ),
        )
    else:
        verdict.stored, verdict.refusal = held, ()


async def _store_isolating(
    batch: BatchWritePort, rows: list[UsageRow]
) -> dict[str, StoredUsage | OutcomeError]:
    """Store the rows in one statement; if the database refuses a value, store them row
    by row (in the same transaction) to find the refused record, so it cannot block
    its partition."""
    try:
        return dict(await batch.store_usages(rows))
    except StoreRefusedData as exc:
        log.warning("batch_refused_by_database", rows=len(rows), error=str(exc))
    result: dict[str, StoredUsage | OutcomeError] = {}
    for row in rows:
        try:
            result.update(await batch.store_usages([row]))
        except StoreRefusedData as exc:
            result[row.external_reference] = OutcomeError(
                code=ErrorCode.SCHEMA_VIOLATION,
                message=f"the database refused the record: {exc}",
            )
    return result
