"""The app's registry of its routes (`app.state.api_routes`): which routes a request's
path matches whatever their methods, for the `Allow` header of a 405 and the route
template a request is counted and logged under, also before routing."""

from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import Match
from starlette.types import Scope

# FastAPI's own routes (not APIRoutes: the router does not name them in the scope).
_FIXED_PATHS = frozenset({"/openapi.json"})


def include_routers(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Include `routers` in the app, in order, and record their routes (the app holds
    an included router as one route, not its routes)."""
    for router in routers:
        app.include_router(router)
    app.state.api_routes = [
        route for router in routers for route in router.routes if isinstance(route, APIRoute)
    ]


def _path_routes(scope: Scope) -> list[APIRoute]:
    """The routes whose path matches the request's, whatever their methods."""
    app = scope.get("app")
    routes: list[APIRoute] = app.state.api_routes if app is not None else []
    return [route for route in routes if route.matches(scope)[0] is not Match.NONE]


def route_template(scope: Scope) -> str:
    """The route template a request is counted and logged under: also for a request
    answered before routing (a 413) or by the router itself (a 405)."""
    matched = getattr(scope.get("route"), "path", None)
    if matched:
        return str(matched)
    if scope["path"] in _FIXED_PATHS:
        return str(scope["path"])
    routes = _path_routes(scope)
    return routes[0].path if routes else "unmatched"


def allowed_methods(scope: Scope) -> list[str]:
    """Every method the request's path takes (RFC 9110: the Allow header of a 405)."""
    return sorted({method for route in _path_routes(scope) for method in route.methods or ()})
