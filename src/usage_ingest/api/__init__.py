"""The management and ingestion HTTP API (../shared/SPEC-API.md).

One ASGI app (`app.create_app`) over the worker's own store: an inventory record
written here is what the worker resolves against as soon as the transaction
commits. `server.serve` runs it with uvicorn for `usage-ingest api`.

Every request passes, in this order:

1. `middleware.EdgeMiddleware` (pure ASGI middleware): request size limit (413), the
   error boundary (an unexpected exception is logged and answered 500 without a
   trace), Prometheus metrics by route template and status, one log line per request
   (`api_request`, with the `x-platform-id` header when given; never a key);
2. `guard.GuardedRoute`: the API key and its permission (401/403, `security`), then
   the body's media type (415), before FastAPI reads the body;
3. FastAPI's own validation, whose errors become 400 `{"errors": [...]}`;
4. the route, in `routes/` (one router per resource), which takes the store, the
   settings, the publisher and the metrics from the app's state (`deps`).

Every error, FastAPI's and Starlette's included, is `{"errors": [{"code",
"field", "message"}]}` with a code of `errors.ApiErrorCode` (`error_handlers`).
"""
