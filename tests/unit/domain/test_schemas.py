"""The checked-in JSON Schemas in `schemas/` are generated from the models and must
not drift from them; the usage-event schema accepts what SPEC.md §3 allows."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from usage_ingest.domain.messages import Outcome, UsageEvent
from usage_ingest.domain.reference import ReferenceFile

SCHEMAS_DIR = Path(__file__).parents[3] / "schemas"
DEMO_REFERENCE = Path(__file__).parents[3] / "src" / "usage_ingest" / "dev" / "demo_reference.json"
EXPECTED = {
    "usage-event.schema.json": UsageEvent,
    "outcome.schema.json": Outcome,
    "reference-data.schema.json": ReferenceFile,
}


@pytest.fixture(scope="module")
def schemas_module() -> ModuleType:
    # Imported here, not at the top: a missing module fails these tests only.
    import usage_ingest.domain.schemas

    return usage_ingest.domain.schemas


def checked_in(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = checked_in(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# --- drift ------------------------------------------------------------------------------


def test_every_message_model_has_a_schema_file(schemas_module: ModuleType) -> None:
    assert schemas_module.SCHEMAS == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checked_in_schema_is_current(schemas_module: ModuleType, name: str) -> None:
    path = SCHEMAS_DIR / name
    assert path.is_file(), f"schemas/{name} is missing: run `usage-ingest schemas`"
    current = schemas_module.render(schemas_module.SCHEMAS[name])
    assert path.read_text(encoding="utf-8") == current, (
        f"schemas/{name} is stale: run `usage-ingest schemas`"
    )


def test_no_stray_schema_files() -> None:
    assert {p.name for p in SCHEMAS_DIR.glob("*.json")} == set(EXPECTED)


def test_render_is_pretty_sorted_json_with_a_trailing_newline(schemas_module: ModuleType) -> None:
    text = schemas_module.render(UsageEvent)
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_write_all_writes_exactly_the_checked_in_files(
    schemas_module: ModuleType, tmp_path: Path
) -> None:
    written = schemas_module.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(EXPECTED)
    for path in written:
        assert path.parent == tmp_path
        assert path.read_bytes() == (SCHEMAS_DIR / path.name).read_bytes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_checked_in_schema_is_a_valid_json_schema(name: str) -> None:
    schema = checked_in(name)
    jsonschema.validators.validator_for(schema).check_schema(schema)


# --- the usage-event schema against SPEC examples -----------------------------------------

VALID_EVENTS = [
    pytest.param(
        {
            "externalReference": "abc-123",
            "contractId": 7,
            "productIdent": "voice.uk",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:05:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": 5}],
        },
        id="by-contract",
    ),
    pytest.param(
        {
            "externalReference": "abc-124",
            "debtorId": 3,
            "productIdent": "voice.uk",
            "startDate": "2026-11-22T12:00:00+02:00",
            "endDate": "2026-11-22T12:00:00+02:00",
            "unitQuantities": [{"unit": "minute", "quantity": "1.50"}],
        },
        id="by-debtor-string-quantity",
    ),
    pytest.param(
        {
            "externalReference": "abc-125",
            "contractId": 7,
            "debtorId": None,
            "productIdent": "voice.uk",
            "description": "Calls to the UK",
            "startDate": "2026-11-22T10:00:00.123Z",
            "endDate": "2026-11-22T11:00:00Z",
            "operatingSite": "GB-LON",
            "taxLocation": {
                "country": "GB",
                "region": "England",
                "city": "London",
                "postalCode": "SW1A 1AA",
            },
            "performanceLocation": None,
            "serviceCountry": "GBR",
            "unitQuantities": [
                {"unit": "minute", "quantity": 12.5},
                {"unit": "call", "quantity": "3"},
            ],
            "properties": [{"name": "line", "value": "441234567890"}],
            "someFutureField": {"anything": True},
        },
        id="every-field",
    ),
]

INVALID_EVENTS = [
    pytest.param(
        {
            "contractId": 7,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
        },
        id="externalReference-missing",
    ),
    pytest.param(
        {
            "externalReference": "has space",
            "contractId": 7,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
        },
        id="externalReference-pattern",
    ),
    pytest.param(
        {
            "externalReference": "a",
            "contractId": "7",
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
        },
        id="contractId-string",
    ),
    pytest.param(
        {
            "externalReference": "a",
            "contractId": 2**63,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
        },
        id="contractId-beyond-int64",
    ),
    pytest.param(
        {
            "externalReference": "a",
            "contractId": 7,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": -1}],
        },
        id="negative-quantity",
    ),
    pytest.param(
        {
            "externalReference": "a",
            "contractId": 7,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:00:00Z",
            "description": "x" * 1001,
        },
        id="description-1001",
    ),
    pytest.param(
        {
            "externalReference": "a",
            "contractId": 7,
            "productIdent": "p",
            "startDate": "2026-11-22T10:00:00Z",
        },
        id="endDate-missing",
    ),
]


@pytest.mark.parametrize("event", VALID_EVENTS)
def test_spec_example_events_match_the_usage_event_schema(event: dict[str, Any]) -> None:
    errors = list(validator("usage-event.schema.json").iter_errors(event))
    assert errors == []


@pytest.mark.parametrize("event", INVALID_EVENTS)
def test_invalid_events_do_not_match_the_usage_event_schema(event: dict[str, Any]) -> None:
    assert not validator("usage-event.schema.json").is_valid(event)


def test_spec_example_outcome_matches_the_outcome_schema() -> None:
    outcome = {
        "status": "rejected",
        "externalReference": "abc-123",
        "usageId": None,
        "contractId": 7,
        "debtorId": 3,
        "inventoryId": None,
        "productIdent": "voice.uk",
        "billable": None,
        "errors": [{"code": "NO_INVENTORY", "field": "productIdent", "message": "..."}],
        "retryable": True,
        "warnings": [{"code": "DEPRECATED_FIELD", "field": "serviceCountry", "message": "..."}],
        "source": {"topic": "usage.events", "partition": 0, "offset": 1234, "timestamp": None},
        "processedAt": "2026-11-22T10:00:00.123Z",
    }
    assert list(validator("outcome.schema.json").iter_errors(outcome)) == []
    assert not validator("outcome.schema.json").is_valid({**outcome, "status": "lost"})


def test_outcome_written_by_the_model_matches_the_outcome_schema() -> None:
    outcome = Outcome.model_validate(
        {
            "status": "created",
            "externalReference": "abc-123",
            "usageId": 42,
            "billable": True,
            "source": {"topic": "usage.events", "partition": 0, "offset": 1},
            "processedAt": "2026-11-22T10:00:00.123Z",
        }
    )
    assert list(validator("outcome.schema.json").iter_errors(json.loads(outcome.to_json()))) == []


@pytest.mark.parametrize("path", [DEMO_REFERENCE], ids=["demo_reference.json"])
def test_demo_reference_file_matches_the_reference_data_schema(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(validator("reference-data.schema.json").iter_errors(data)) == []


def test_spec_reference_example_matches_and_a_bad_one_does_not() -> None:
    example = {
        "operatingSites": ["GB-LON", "DE-BER"],
        "productItems": [
            {
                "id": 1,
                "reference": "voice.uk",
                "name": "UK voice minutes",
                "type": "USAGE_BASED",
                "status": "ACTIVE",
                "unit_name": {"singular": "minute", "plural": "minutes"},
            }
        ],
        "contracts": [
            {"id": 7, "debtorId": 3, "siteId": 100, "startDate": "2026-01-01", "endDate": None}
        ],
        "usageProductInventories": [
            {
                "id": 11,
                "siteId": 100,
                "usageProductId": 1,
                "startDate": "2026-01-01",
                "endDate": None,
                "billable": True,
                "productReferences": [{"productReference": "441234567890", "primary": True}],
            }
        ],
    }
    check = validator("reference-data.schema.json")
    assert list(check.iter_errors(example)) == []
    bad = json.loads(json.dumps(example))
    bad["productItems"][0]["type"] = "SUBSCRIPTION"
    assert not check.is_valid(bad)
