"""The console's read-only views: the overview, the refusals and one refusal, and the
lookup of a usage by its external reference. Each is a whole page, or for htmx only the
fragment it swaps (`render_view`)."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request, Response

from usage_ingest import alert_thresholds
from usage_ingest.api.console.inputs import has_control_character, whole_number
from usage_ingest.api.console.overview import BrokerViewCache, read_overview
from usage_ingest.api.console.pages import ConsoleProblem, ConsoleRoute, render, render_view
from usage_ingest.api.console.refusal_filters import (
    CODES,
    FilterProblems,
    RefusalFilters,
    paging,
)
from usage_ingest.api.console.session import UserDep
from usage_ingest.api.deps import SettingsDep, StoreDep
from usage_ingest.api.errors import ApiError
from usage_ingest.api.schemas import Usage
from usage_ingest.domain.messages import IDENT_PATTERN
from usage_ingest.store.rejection_list import (
    RejectionFilter,
    RejectionFilterOp,
    RejectionListQuery,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

LOOKUP_REFUSALS = 50


@router.get("/console")
async def overview(
    request: Request, user: UserDep, settings: SettingsDep, store: StoreDep
) -> Response:
    cache: BrokerViewCache = request.app.state.console_broker_view
    figures = await read_overview(store, cache)
    context = {
        "user": user,
        "view": figures,
        "thresholds": alert_thresholds,
        "group_id": settings.group_id,
        "topic": settings.topic_events,
    }
    return render_view(request, "overview.html", "overview_panel.html", context)


@router.get("/console/refusals")
async def refusals(request: Request, user: UserDep, store: StoreDep) -> Response:
    params = {name: request.query_params.getlist(name) for name in request.query_params}
    filters = RefusalFilters.of(params)
    context = {"user": user, "filters": filters, "codes": CODES, "problems": []}
    try:
        query = filters.query()
    except ApiError as exc:
        context["problems"] = FilterProblems.of(exc).messages
        return render_view(request, "refusals.html", "refusals_table.html", context, 400)
    total, rows = await store.list_rejections(query)
    context.update(rows=rows, paging=paging(filters, total, len(rows)))
    return render_view(request, "refusals.html", "refusals_table.html", context)


@router.get("/console/refusals/{rejection_id}")
async def refusal(rejection_id: str, user: UserDep, store: StoreDep, request: Request) -> Response:
    number = whole_number(rejection_id)
    found = None if number is None else await store.get_rejection(number)
    if found is None:
        raise ConsoleProblem(404, "Not found", f"there is no refusal {rejection_id}", user)
    return render(request, "refusal.html", {"user": user, "refusal": found})


@router.get("/console/lookup")
async def lookup(request: Request, user: UserDep, store: StoreDep) -> Response:
    reference = request.query_params.get("reference", "").strip()
    context: dict[str, object] = {
        "user": user,
        "reference": reference,
        "searched": False,
        "problem": None,
    }
    if has_control_character(reference):
        # No reference holds one, and Postgres refuses a NUL in a text parameter.
        context["problem"] = "the reference holds a control character: no reference has one"
        return render_view(request, "lookup.html", "lookup_result.html", context, 400)
    if reference:
        context.update(await _looked_up(store, reference), searched=True)
    return render_view(request, "lookup.html", "lookup_result.html", context)


async def _looked_up(store: StoreDep, reference: str) -> dict[str, object]:
    """The usage stored under `reference` (as GET /usages/{externalReference} shows it)
    and the refusals of that reference, newest first."""
    # A reference that breaks §3's pattern cannot have been stored.
    stored = await store.get_usage(reference) if re.match(IDENT_PATTERN, reference) else None
    usage = None if stored is None else Usage.from_stored(stored).as_json()
    query = RejectionListQuery(
        limit=LOOKUP_REFUSALS,
        offset=0,
        filters=(RejectionFilter("external_reference", RejectionFilterOp.EQ, reference),),
    )
    total, rows = await store.list_rejections(query)
    return {
        "usage": usage,
        "usage_json": None if usage is None else json.dumps(usage, indent=2),
        "rows": rows,
        "total": total,
    }
