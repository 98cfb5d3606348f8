"""`usage-ingest api`: `serve` opens the store and the producer, checks the database's
migrations, and serves the app with uvicorn until told to stop."""

import asyncio
import socket

import structlog
import uvicorn
from starlette.types import ASGIApp

from usage_ingest.api.app import create_app
from usage_ingest.api.console.replays import ConsoleReplays
from usage_ingest.api.publisher import OnDemandProducer
from usage_ingest.errors import ConfigurationError, StoreUnavailable
from usage_ingest.serving import QuietServer, listen
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

log = structlog.get_logger("usage_ingest.api")


def listen_api(settings: Settings) -> list[socket.socket]:
    """Bind first, so that a taken port is one clear line, not a server log."""
    host, port = settings.api_host, settings.api_port
    try:
        return listen(host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port} (USAGE_INGEST_API_HOST/PORT, --host/--port): "
            f"{exc.strerror or exc}"
        ) from exc


def uvicorn_config(settings: Settings, app: ASGIApp) -> uvicorn.Config:
    """How uvicorn serves the app. The scheme and client address are taken from
    `X-Forwarded-Proto` and `X-Forwarded-For` only when the connection comes from a proxy
    of `api_forwarded_allow_ips`: behind a proxy that terminates TLS, that is what makes
    the console's cookies `Secure` and its origin check expect https."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
        forwarded_allow_ips=settings.api_forwarded_allow_ips,
    )


async def _close_console_replays(replays: ConsoleReplays) -> None:
    """A replay started from the console finishes its batch in flight and commits. Should
    that fail, the store and the producer are closed all the same."""
    try:
        await replays.close()
    except Exception:
        log.exception("console_replays_close_failed")


async def serve(
    settings: Settings, stop: asyncio.Event, sockets: list[socket.socket] | None = None
) -> None:
    """Serve the API until `stop` is set; then finish the requests in flight and close.
    On `sockets` when given (bound by `listen_api`), else on the settings' host and port."""
    if sockets is None:
        sockets = listen_api(settings)
    store = await open_store(
        settings, statement_budget_s=settings.api_statement_budget_s, custom_plans=True
    )
    producer = OnDemandProducer(settings)
    try:
        try:
            missing = await store.unapplied_migrations()
        except StoreUnavailable as exc:
            log.warning("database_unavailable_at_start", error=str(exc))
        else:
            if missing:
                raise ConfigurationError(
                    f"the database lacks migration(s) {', '.join(missing)}: "
                    "run `usage-ingest migrate` first"
                )
        app = create_app(settings, store, producer)
        server = QuietServer(uvicorn_config(settings, app))

        async def stop_when_told() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(stop_when_told())
        host, port = sockets[0].getsockname()[:2]
        log.info("api_started", url=f"http://{host}:{port}", topic=settings.topic_events)
        try:
            await server.serve(sockets=sockets)
        finally:
            watcher.cancel()
            await _close_console_replays(app.state.console_replays)
        log.info("api_stopped")
    finally:
        for sock in sockets:
            sock.close()
        try:
            # A record the broker never acknowledged was answered 503: nothing to wait for.
            await asyncio.wait_for(producer.stop(), settings.api_publish_timeout_s)
        except TimeoutError:
            log.warning("producer_stop_timed_out")
        await store.close()
