"""JSON Patch (RFC 6902) of an inventory record: the operations a PATCH body holds,
and applying them to a copy of the record within the bounds of `limits`."""

import copy
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import jsonpatch
import jsonpointer
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from usage_ingest.api.errors import ApiError, ApiErrorCode, read_only_error, validation_errors
from usage_ingest.api.limits import MAX_PATCHED_DOCUMENT_BYTES
from usage_ingest.api.schemas import UsageProductInventoryInput

PATCH_MEDIA_TYPE = "application/json-patch+json"
PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
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
        raise ApiError(400, validation_errors(exc, ApiErrorCode.SCHEMA_VIOLATION)) from exc
    errors = []
    if patched.id != record["id"]:
        errors.append(read_only_error("id"))
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
            errors.append(read_only_error(f"productReferences.{index}.id"))
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
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits, which JSON allows and orjson does not write
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
