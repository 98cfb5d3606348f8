"""POST /usages with a JSON array of usage events: all or nothing.

The array is split into its events' own bytes (`split_array`), so each is validated by
the worker's rules (`validate_record`, repeated keys included) and published exactly as
it was sent. Any event that breaks a rule, and any two that hold the same
externalReference with different canonical payloads, refuse the whole array (400, every
error, `field` prefixed by the event's index); otherwise every event is published and
the broker's acknowledgements are awaited once for them all.
"""

import json

import structlog
from fastapi.responses import JSONResponse

from usage_ingest.api.errors import ApiError, ApiErrorCode, ApiErrorItem
from usage_ingest.api.metrics import ApiMetrics
from usage_ingest.api.publisher import Publisher, publish_acknowledged
from usage_ingest.domain.records import OutputRecord
from usage_ingest.domain.validation import InvalidEvent, ValidEvent, validate_record
from usage_ingest.errors import ErrorCode
from usage_ingest.settings import Settings

log = structlog.get_logger("usage_ingest.api")

_BLANKS = " \t\r\n"  # JSON's whitespace
# Only to find where each element ends: the events themselves are read by validate_record.
_ELEMENT_DECODER = json.JSONDecoder()


def is_array(body: bytes) -> bool:
    """Whether the body is (meant as) a JSON array: its first non-blank byte is `[`."""
    return body.lstrip(_BLANKS.encode()).startswith(b"[")


def _malformed(message: str) -> ApiError:
    return ApiError.one(
        400, ApiErrorCode.MALFORMED_MESSAGE, f"the body is not a JSON array: {message}"
    )


def split_array(body: bytes) -> list[bytes]:
    """The bytes of each element of the JSON array `body`, exactly as sent; `ApiError`
    (400 MALFORMED_MESSAGE) when the body is not one JSON array."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(f"it is not UTF-8 (byte {exc.start})") from None
    elements: list[bytes] = []
    position = _skip_blanks(text, text.index("[") + 1)
    if text.startswith("]", position):
        return _nothing_after(text, position, elements)
    while True:
        try:
            _, end = _ELEMENT_DECODER.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise _malformed(f"{exc.msg} (at character {exc.pos})") from None
        except RecursionError:
            raise _malformed(f"element {len(elements)} is nested too deeply") from None
        elements.append(text[position:end].encode("utf-8"))
        position = _skip_blanks(text, end)
        if text.startswith("]", position):
            return _nothing_after(text, position, elements)
        if not text.startswith(",", position):
            raise _malformed(f"expected , or ] at character {position}")
        position = _skip_blanks(text, position + 1)


def _skip_blanks(text: str, position: int) -> int:
    while position < len(text) and text[position] in _BLANKS:
        position += 1
    return position


def _nothing_after(text: str, closing: int, elements: list[bytes]) -> list[bytes]:
    if _skip_blanks(text, closing + 1) < len(text):
        raise _malformed(f"something follows its closing ] (at character {closing + 1})")
    return elements


def _indexed(index: int, field: str | None) -> str:
    return f"{index}.{field}" if field else str(index)


def validate_batch(elements: list[bytes], settings: Settings) -> list[ValidEvent]:
    """Every event valid, or `ApiError` (400) with every error of every event, and one
    for each event whose externalReference an earlier one holds with another payload."""
    if not elements:
        raise ApiError.one(400, ApiErrorCode.SCHEMA_VIOLATION, "the array holds no events")
    if len(elements) > settings.api_max_batch:
        raise ApiError.one(
            400,
            ApiErrorCode.SCHEMA_VIOLATION,
            f"the array holds {len(elements)} events; at most {settings.api_max_batch} are "
            "taken at once (USAGE_INGEST_API_MAX_BATCH)",
        )
    errors: list[ApiErrorItem] = []
    valid: list[ValidEvent] = []
    first: dict[str, tuple[int, str]] = {}  # externalReference → (index, payload hash)
    for index, element in enumerate(elements):
        verdict = validate_record(element, settings.max_message_bytes)
        if isinstance(verdict, InvalidEvent):
            errors += [
                ApiErrorItem(code=e.code.value, field=_indexed(index, e.field), message=e.message)
                for e in verdict.errors
            ]
            continue
        valid.append(verdict)
        reference = verdict.event.external_reference
        earlier = first.setdefault(reference, (index, verdict.payload_hash))
        if earlier[1] != verdict.payload_hash:
            errors.append(
                ApiErrorItem(
                    code=ErrorCode.EXTERNAL_REFERENCE_CONFLICT.value,
                    field=_indexed(index, "externalReference"),
                    message=f"event {earlier[0]} holds {reference!r} with another payload: "
                    "one externalReference is one usage",
                )
            )
    if errors:
        raise ApiError(400, errors)
    return valid


async def queue_batch(
    body: bytes, settings: Settings, publisher: Publisher, metrics: ApiMetrics
) -> JSONResponse:
    """Validate the array, publish every event to the input topic keyed by its
    externalReference, wait once for all the acknowledgements, answer 202."""
    elements = split_array(body)
    events = validate_batch(elements, settings)
    references = [event.event.external_reference for event in events]
    records = [
        OutputRecord(settings.topic_events, reference.encode(), element)
        for reference, element in zip(references, elements, strict=True)
    ]
    await publish_acknowledged(publisher, records, settings.api_publish_timeout_s)
    metrics.usages_queued.inc(len(records))
    log.info("usages_queued", queued=len(records), topic=settings.topic_events)
    return JSONResponse(
        {"status": "queued", "queued": len(records), "externalReferences": references},
        status_code=202,
    )
