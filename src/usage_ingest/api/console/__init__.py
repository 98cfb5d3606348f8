"""The operations console, served by `usage-ingest api` at /console: server-rendered
pages (Jinja2 templates, htmx for the parts that refresh), over the API's own store and
settings. `routers` lists its routes, none of them in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from usage_ingest.api.console import routes_access, routes_replay, routes_views, static_files


def routers() -> list[APIRouter]:
    return [routes_access.router, routes_views.router, routes_replay.router, static_files.router]
