"""The console's assets (package data): htmx and the style sheet, served by the API
itself, so the console needs no CDN and works with no connection to the internet."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

from fastapi import APIRouter, Response

from usage_ingest.api.console.pages import ConsoleProblem, ConsoleRoute

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

_MEDIA_TYPES: Final = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "LICENSES.txt": "text/plain; charset=utf-8",
}
_STATIC = files("usage_ingest.api.console") / "static"
# Read once: three small files; no path from the request ever reaches the file system.
_CONTENT: Final = {name: (_STATIC / name).read_bytes() for name in _MEDIA_TYPES}


@router.get("/console/static/{name}")
async def static_file(name: str) -> Response:
    if name not in _CONTENT:
        raise ConsoleProblem(404, "Not found", f"there is no file {name}")
    return Response(
        _CONTENT[name],
        media_type=_MEDIA_TYPES[name],
        headers={"Cache-Control": "public, max-age=3600"},
    )
