"""The app factory: `create_app` builds the FastAPI app over a store and a publisher,
keeps them in the app's state for the routes' dependencies (`deps`), includes one
router per resource and wires the error handlers, the OpenAPI document and the edge
middleware.

There is no lifespan: `server.serve` opens the store and the producer before the app
and closes them after it (uvicorn runs with `lifespan="off"`), and closes the console's
replays (`app.state.console_replays`); tests pass their own.

The operations console (`api.console`) is served by the same app under /console, out of
the OpenAPI document; its edge (`console.edge`) answers the router's errors there as
console pages, with the console's headers on every answer.
"""

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from usage_ingest.api import console
from usage_ingest.api.console.edge import ConsoleHeaders, install_console_error_pages
from usage_ingest.api.console.overview import BrokerViewCache
from usage_ingest.api.console.replays import ConsoleReplays
from usage_ingest.api.error_handlers import install_error_handlers
from usage_ingest.api.metrics import ApiMetrics
from usage_ingest.api.middleware import EdgeMiddleware
from usage_ingest.api.openapi import openapi_document
from usage_ingest.api.publisher import Publisher
from usage_ingest.api.route_registry import include_routers
from usage_ingest.api.routes import (
    contracts,
    inventories,
    operations,
    product_items,
    usage_rejections,
    usage_summaries,
    usages,
)
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

# In this order: it is the order of the OpenAPI document's paths.
_ROUTERS = (
    inventories,
    product_items,
    contracts,
    usages,
    usage_rejections,
    usage_summaries,
    operations,
)


def create_app(
    settings: Settings,
    store: Store,
    producer: Publisher,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The HTTP API over `store`, publishing usage with `producer` (started, or an
    `OnDemandProducer`). Metrics go to `registry` (a new one by default)."""
    metrics = ApiMetrics(registry if registry is not None else CollectorRegistry())
    app = FastAPI(
        title="usage-ingest",
        version="1",
        summary="Usage product inventories, product items, contracts and usage.",
        openapi_url="/openapi.json",
        # Swagger UI and ReDoc load their scripts from a CDN, which a billing network does
        # not reach: the document itself is served, for any OpenAPI viewer or generator.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.publisher = producer
    app.state.metrics = metrics
    app.state.console_broker_view = BrokerViewCache(settings)
    app.state.console_replays = ConsoleReplays(settings, store)
    include_routers(app, [module.router for module in _ROUTERS] + console.routers())
    install_error_handlers(app)
    install_console_error_pages(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_middleware(EdgeMiddleware, metrics=metrics, max_body_bytes=settings.api_max_body_bytes)
    # Outside the edge, so that its 413 and 500 under /console carry the console's headers.
    app.add_middleware(ConsoleHeaders)
    return app
