"""How every Kafka client connects: `connection_options` (bootstrap servers, TLS, SASL),
the probe that stops on a broker refusing this client for good (`refuse_bad_security`),
and the one check of whether a broker answers, for readiness (`broker_answers`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from usage_ingest.errors import ConfigurationError
from usage_ingest.settings import ENV_PREFIX, SecurityProtocol, Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security (TLS, SASL) shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


# How long the access check below waits for one broker before leaving it to the retries.
_ACCESS_CHECK_TIMEOUT_S = 10.0
_SASL_REFUSALS = (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError)


async def refuse_bad_security(settings: Settings) -> None:
    """Raise ConfigurationError when a broker refuses this client for good: its TLS
    certificate is not trusted, or it refuses the SASL credentials or mechanism.

    aiokafka reports either while bootstrapping only as "Unable to bootstrap" (it logs
    the cause and tries the next server), and SCRAM answered with an error even as a
    bare KeyError; the worker would retry that forever, or stop with a traceback. So
    one connection is opened the way aiokafka opens it, before the clients start. A
    broker that cannot be reached (or answers nothing in time) is left to the normal
    retries. Never names the password.
    """
    if settings.kafka_security_protocol is SecurityProtocol.PLAINTEXT:
        return
    options = connection_options(settings)
    security = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    uses_sasl = settings.kafka_sasl_mechanism is not None
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), client_id="usage-ingest", **security),
                _ACCESS_CHECK_TIMEOUT_S,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(
                f"the broker at {server.strip()} presented a TLS certificate that is not "
                f"trusted ({exc.verify_message}): set {ENV_PREFIX}KAFKA_SSL_CAFILE to the CA "
                "that signed it"
            ) from None
        except _SASL_REFUSALS as exc:
            raise _sasl_refused(settings, server, type(exc).__name__) from None
        except (KeyError, ValueError) as exc:
            # aiokafka's SCRAM client fails like this on an error answer ("e=...") or
            # a wrong server signature; without SASL these are not ours to explain.
            if not uses_sasl:
                raise
            raise _sasl_refused(settings, server, f"{type(exc).__name__} {exc}") from None
        except (OSError, TimeoutError, KafkaError):
            continue
        conn.close()
        return


def _sasl_refused(settings: Settings, server: str, detail: str) -> ConfigurationError:
    mechanism = settings.kafka_sasl_mechanism
    return ConfigurationError(
        f"the broker at {server.strip()} refused SASL {mechanism} authentication as "
        f"{settings.kafka_sasl_username!r} ({detail}): check {ENV_PREFIX}KAFKA_SASL_MECHANISM, "
        f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
    )


# Readiness opens its connection over the configured transport but does not sign in.
_WITHOUT_SASL = {
    SecurityProtocol.SASL_PLAINTEXT: SecurityProtocol.PLAINTEXT,
    SecurityProtocol.SASL_SSL: SecurityProtocol.SSL,
}


async def broker_answers(settings: Settings, timeout_s: float = 2.0) -> bool:
    """Whether a bootstrap server answers a Kafka request within `timeout_s`: the broker
    check of both readiness endpoints, the worker's and the API's.

    Answers, rather than accepts TCP: an open port with no broker behind it is not
    ready. The request is the ApiVersions every aiokafka connection opens with, on a
    connection of its own (TLS when configured), so it needs no client that has already
    found a broker (asking one that has not logs "Unable to update metadata from []").
    Brokers answer it before SASL, so checking every few seconds never signs in (nor
    logs aiokafka's warning about PLAIN in the clear).
    """
    protocol = settings.kafka_security_protocol
    transport: dict[str, Any] = {
        "security_protocol": _WITHOUT_SASL.get(protocol, protocol).value,
        "ssl_context": connection_options(settings).get("ssl_context"),
    }
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), client_id="usage-ingest", **transport),
                timeout_s,
            )
        except (OSError, TimeoutError, ValueError, KafkaError):
            continue
        conn.close()
        return True
    return False
