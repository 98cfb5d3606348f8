"""The embedded broker and Postgres really start, serve, stop, and survive a kill."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.embedded import free_port
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.errors import EmbeddedUnavailable, PsqlError

pytestmark = pytest.mark.integration


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_broker_starts_accepts_connections_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    broker = EmbeddedBroker(log_path=log)
    with broker:
        assert broker.is_running
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        assert _connects(broker.port)
    assert not broker.is_running
    assert not _connects(broker.port)
    assert log.exists()


def test_broker_kill_then_start_again_on_the_same_port() -> None:
    broker = EmbeddedBroker()
    try:
        broker.start()
        broker.kill()
        assert not broker.is_running
        assert not _connects(broker.port)
        broker.start()
        assert _connects(broker.port)
    finally:
        broker.stop()


def test_broker_refuses_a_port_already_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        broker = EmbeddedBroker(port=sock.getsockname()[1])
        with pytest.raises(EmbeddedUnavailable, match="already in use"):
            broker.start()
    assert not broker.is_running


def test_postgres_answers_queries_over_tcp(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pgdata") as pg:
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert _connects(pg.port)
        assert pg.psql("select 1").strip() == "1"
        assert pg.psql("show fsync").strip() == "off"
        # A killed server must keep every commit, so this shortcut stays off by default.
        assert pg.psql("show synchronous_commit").strip() == "on"
    assert not pg.is_running
    assert not _connects(pg.port)


def test_postgres_create_database_returns_its_url(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pgdata") as pg:
        url = pg.create_database("usage ingest")
        assert url.endswith("/usage%20ingest")
        assert pg.psql("select current_database()", "usage ingest").strip() == "usage ingest"


def test_postgres_data_survives_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    try:
        pg.start()
        pg.psql("create table outage (id int primary key); insert into outage values (1), (2)")
        pg.kill()
        assert not pg.is_running
        assert not _connects(pg.port)
        with pytest.raises(PsqlError):
            pg.psql("select 1")

        pg.start()
        assert pg.psql("select count(*) from outage").strip() == "2"
    finally:
        pg.stop()


def test_postgres_keeps_data_across_a_clean_restart(tmp_path: Path) -> None:
    datadir = tmp_path / "pgdata"
    with EmbeddedPostgres(datadir) as first:
        first.psql("create table kept (v text); insert into kept values ('x')")
        port = first.port
    with EmbeddedPostgres(datadir, port=port) as second:
        assert second.psql("select v from kept").strip() == "x"


def test_postgres_start_failure_names_the_cause(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata", settings={"no_such_setting": "1"})
    with pytest.raises(EmbeddedUnavailable, match="no_such_setting"):
        pg.start()
    assert not pg.is_running
