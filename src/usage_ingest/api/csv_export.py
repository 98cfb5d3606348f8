"""`GET /usages` as CSV (RFC 4180, header row, UTF-8): one line per unit quantity of each
usage, streamed a chunk of usages at a time, so that memory stays bounded however many
usages match.

Each chunk is one short statement (keyset pagination: the next chunk starts after the
last usage of this one), its connection back in the pool before the chunk is written:
a slow client holds no connection and no transaction, and every statement stays within
the API's statement budget. Usages are never changed once stored, so the chunks join up
without a usage twice or a gap; one stored while the export runs is in it when its place
in the order is still ahead.

A text field that a spreadsheet would take for a formula (it starts with `=`, `+`, `-`,
`@`, a tab or a carriage return) is written with a `'` before it (see `_cell`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Final

import structlog

from usage_ingest.store.store import Store
from usage_ingest.store.usage_list import EXPORT_CHUNK_USAGES, ExportChunk, UsageListQuery
from usage_ingest.times import format_utc_micros

log = structlog.get_logger("usage_ingest.api")

CSV_MEDIA_TYPE: Final = "text/csv"
CSV_CONTENT_TYPE: Final = "text/csv; charset=utf-8; header=present"
CSV_COLUMNS: Final = (
    "externalReference",
    "usageId",
    "contractId",
    "debtorId",
    "inventoryId",
    "productIdent",
    "startDate",
    "endDate",
    "unit",
    "quantity",
    "billable",
    "receivedAt",
)
# The characters a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def wants_csv(accept: str | None) -> bool:
    """Whether the Accept header prefers text/csv to application/json. Without one, or
    with neither named, the answer is JSON."""
    best: dict[str, float] = {}
    for part in (accept or "").split(","):
        media_type, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media_type = media_type.lower()
        best[media_type] = max(best.get(media_type, 0.0), quality)
    csv_q = best.get(CSV_MEDIA_TYPE, 0.0)
    json_q = max(best.get(t, 0.0) for t in ("application/json", "application/*", "*/*"))
    return csv_q > 0 and csv_q > json_q


def _cell(text: str | None) -> str:
    """A text field as written: a `'` before one a spreadsheet would run as a formula.

    Stored identifiers (externalReference, productIdent, unit) never contain `'` (SPEC.md
    §3's pattern), so a reader takes the value back exactly by dropping a leading `'`."""
    if text is None:
        return ""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _line(row: dict[str, Any]) -> list[str]:
    return [
        _cell(row["external_reference"]),
        str(row["id"]),
        str(row["contract_id"]),
        str(row["debtor_id"]),
        str(row["inventory_id"]),
        _cell(row["product_ident"]),
        format_utc_micros(row["start_date"]),
        format_utc_micros(row["end_date"]),
        _cell(row["unit"]),
        # A number as Postgres writes it (or as stored, were it a string): exact.
        row["quantity"] or "",
        "true" if row["billable"] else "false",
        format_utc_micros(row["received_at"]),
    ]


def csv_text(rows: Sequence[dict[str, Any]], *, header: bool = False) -> bytes:
    """Lines of CSV (CRLF, quoted where RFC 4180 needs it), UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows(_line(row) for row in rows)
    return out.getvalue().encode()


async def first_chunk(store: Store, query: UsageListQuery) -> ExportChunk:
    """The export's first chunk, read before the answer starts, so that a database that
    is away or a statement past its budget is still answered 503 or 504."""
    return await store.export_usages(_chunked(query), None)


def _chunked(query: UsageListQuery) -> UsageListQuery:
    """A page as asked for (its usages fit a chunk: pageSize is at most 1000), or every
    match in chunks of EXPORT_CHUNK_USAGES."""
    return query if query.limit is not None else replace(query, limit=EXPORT_CHUNK_USAGES)


async def stream_csv(
    store: Store, query: UsageListQuery, first: ExportChunk
) -> AsyncIterator[bytes]:
    """The header and every chunk's lines, from `first` on. A failure after the answer
    started ends the body early: the client sees the transfer broken, never a short
    file passed off as whole."""
    chunked = _chunked(query)
    chunk, usages = first, first.usages
    yield csv_text(chunk.lines, header=True)
    # A page is one chunk; the whole selection runs to the first chunk that is not full.
    while query.limit is None and not chunk.done:
        try:
            chunk = await store.export_usages(chunked, chunk.position)
        except Exception:
            log.exception("api_usage_export_failed", usages_written=usages)
            raise
        usages += chunk.usages
        yield csv_text(chunk.lines)
    log.info("api_usages_exported", usages=usages)
