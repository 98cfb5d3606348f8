"""JSON Schemas of every message usage-ingest reads or writes, generated from the models.

The files in `schemas/` are these, checked in; `usage-ingest schemas` rewrites them and a
test fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from usage_ingest.domain.messages import Outcome, UsageEvent
from usage_ingest.domain.reference import ReferenceFile

SCHEMAS: dict[str, type[BaseModel]] = {
    "usage-event.schema.json": UsageEvent,
    "outcome.schema.json": Outcome,
    "reference-data.schema.json": ReferenceFile,
}
# Messages this service writes are described as written (every field present);
# those it reads, as accepted (optional fields may be absent).
WRITTEN: frozenset[type[BaseModel]] = frozenset({Outcome})


def render(model: type[BaseModel]) -> str:
    mode: JsonSchemaMode = "serialization" if model in WRITTEN else "validation"
    schema: dict[str, object] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(model.model_json_schema(by_alias=True, mode=mode))
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written
