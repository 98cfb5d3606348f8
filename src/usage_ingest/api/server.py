"""`usage-ingest api`: `serve` opens the store and the producer, checks the database's
migrations, and serves the app with uvicorn until told to stop."""

import asyncio
import contextlib
import socket
from collections.abc import Generator

import structlog
import uvicorn

from usage_ingest.api.app import create_app
from usage_ingest.api.publisher import OnDemandProducer
from usage_ingest.errors import ConfigurationError, StoreUnavailable
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

log = structlog.get_logger("usage_ingest.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Signals are the command's (`with_stop_signals`): it sets `should_exit`."""
        yield


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so that a taken port is one clear line, not a server log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port} (USAGE_INGEST_API_HOST/PORT, --host/--port): "
            f"{exc.strerror or exc}"
        ) from exc
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until `stop` is set; then finish the requests in flight and close."""
    sock = _listen(settings.api_host, settings.api_port)
    store = await open_store(settings, statement_budget_s=settings.api_statement_budget_s)
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
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=10,
            )
        )

        async def stop_when_told() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(stop_when_told())
        host, port = sock.getsockname()[:2]
        log.info("api_started", url=f"http://{host}:{port}", topic=settings.topic_events)
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
        log.info("api_stopped")
    finally:
        sock.close()
        try:
            # A record the broker never acknowledged was answered 503: nothing to wait for.
            await asyncio.wait_for(producer.stop(), settings.api_publish_timeout_s)
        except TimeoutError:
            log.warning("producer_stop_timed_out")
        await store.close()
