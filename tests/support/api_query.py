"""The unit tests' helpers for the HTTP API's pure functions: a list query parsed as the
list endpoint parses it, and a record to apply JSON Patch operations to."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from usage_ingest.api.patch import PatchOperation
from usage_ingest.api.query import parse_list_query
from usage_ingest.store.inventories import InventoryListQuery


def query(names: list[str], **values: Any) -> tuple[InventoryListQuery, Any]:
    defaults: dict[str, Any] = {"page": 1, "page_size": 10, "sort": None, "fields": None}
    filters = values.pop("filters", {})
    return parse_list_query(names, **{**defaults, **values}, filters=filters)


RECORD: dict[str, Any] = {
    "id": 7,
    "siteId": 1,
    "usageProductId": 2,
    "startDate": "2026-01-01",
    "endDate": None,
    "supplierAccountId": None,
    "billByServiceId": None,
    "serviceId": "SVC",
    "billable": True,
    "inFlightOrder": None,
    "externalOrderReference": None,
    "externalNetworkOrderReference": None,
    "pendingEndDate": None,
    "usageCapEnabled": None,
    "defaultUsageCap": None,
    "overrideUsageCap": None,
    "applySurcharges": None,
    "productReferences": [
        {
            "id": 70,
            "productReference": "441",
            "primary": True,
            "label": None,
            "startDate": None,
            "endDate": None,
            "userId": None,
            "userEmail": None,
            "costCentreCode": None,
            "departmentCode": None,
            "notes": None,
        }
    ],
}
OPERATIONS = TypeAdapter(list[PatchOperation])
